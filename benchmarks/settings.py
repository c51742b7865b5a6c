"""How big each workload is. The defaults are the sizes the performance targets name; QUICK is the
smallest configuration that still runs every code path (the smoke test uses it)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Settings:
    rounds: int = 5  # latency samples are taken in rounds, the targets in turn, so noise hits all alike
    warmup: int = 10  # requests per client before timing
    execute_samples: int = 200
    start_samples: int = 20  # starts are the noisiest measure: a median of 10 moved by 100 ms between runs
    output_mib: int = 20
    output_samples: int = 3
    rest_seconds: float = 10.0
    rest_warmup: bool = True  # one second of load before the measured seconds
    rest_connections: int = 32
    rest_workers: int = 2
    idle_websockets: int = 1000
    concurrent_starts: int = 20
    load_clients: int = 50
    load_kernels: int = 10
    load_seconds: float = 60.0
    flood_kernels: int = 10  # kernels printing as fast as they can while REST and interrupts are timed
    flood_seconds: float = 10.0
    flood_output_mib: int = 5  # printed by one more kernel meanwhile, to a client that keeps up
    stop_kernels: int = 20  # flooding when the server gets SIGTERM
    request_timeout: float = 60.0  # a reply that takes longer than this counts as lost
    settle_seconds: float = 2.0  # for a server to finish what opening many websockets set off

    def with_duration(self, seconds: float) -> "Settings":
        """The timed workloads (REST load, execute load) run for `seconds` instead."""
        return replace(self, rest_seconds=seconds, load_seconds=seconds)


DEFAULT = Settings()
QUICK = Settings(
    rounds=1, warmup=1, execute_samples=5, start_samples=1, output_mib=1, output_samples=1,
    rest_seconds=1.0, rest_warmup=False, rest_connections=4, idle_websockets=10, concurrent_starts=2,
    load_clients=2, load_kernels=1, load_seconds=1.0, flood_kernels=1, flood_seconds=1.0, flood_output_mib=1,
    stop_kernels=1, request_timeout=20.0, settle_seconds=0.2,
)
