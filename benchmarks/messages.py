"""The message path: an execute round trip, and a kernel writing a large output to a client that keeps up.

All chosen targets run at once and take their samples in rounds, in turn, so that what else the machine
is doing weighs on each of them alike.
"""

from __future__ import annotations

import contextlib

from .clients import StreamingExecute
from .results import Results, median
from .settings import Settings
from .targets import THIS, Fleet

EXECUTE = "execute"
HTTP_EXECUTE = "http-execute"
OUTPUT = "output"
ROUND_TRIP = "round trip {p} ({protocol})"
CHUNK = 64 * 1024  # bytes per write, newline included


def output_cell(mib: int) -> str:
    """`mib` MiB of stdout as fast as the kernel can send it: 64 KiB written and flushed at a time, so it
    leaves as a stream of messages of that size (unflushed, ipykernel would batch it into a few huge
    ones, which a rate limit drops whole)."""
    chunks = mib * 1024 * 1024 // CHUNK
    return (f"import sys\n_chunk = 'x' * {CHUNK - 1} + '\\n'\nfor _ in range({chunks}):\n"
            f"    sys.stdout.write(_chunk)\n    sys.stdout.flush()\n")


@contextlib.asynccontextmanager
async def _clients(targets, results: Results, workload: str):
    """One client per (target, protocol) on one kernel per target, [(target, protocol, client)], all
    closed when the block ends."""
    clients = []
    try:
        for target in targets:
            kernel_id = await target.start_kernel()
            for protocol in target.protocols:
                client = await target.connect(kernel_id, v1=protocol == "v1")
                if client.protocol != protocol:
                    results.note(workload, f"{target.name} did not accept the {protocol} protocol; not measured")
                    await client.close()
                    continue
                clients.append((target, protocol, client))
        yield clients
    finally:
        for _, _, client in clients:
            with contextlib.suppress(Exception):
                await client.close()


def _shown_as(protocol: str, clients) -> list[str]:
    """The protocols a result is reported under: raw ZMQ's stands beside each websocket protocol measured."""
    if protocol != "zmq":
        return [protocol]
    return sorted({p for _, p, _ in clients if p != "zmq"}) or ["legacy"]


async def execute(fleet: Fleet, settings: Settings, results: Results) -> None:
    """Execute round trip of `1`: p50 and p99 per target and protocol."""
    async with fleet.running(fleet.names) as targets:
        await _execute(targets, settings, results)


async def http_execute(fleet: Fleet, settings: Settings, results: Results) -> None:
    """The round trip of `1` through this gateway's POST .../execute, streamed as ndjson (to the result
    line), beside the websocket round trips and raw jupyter_client's in the same rounds."""
    async with fleet.running(fleet.names) as targets:
        await _execute(targets, settings, results, HTTP_EXECUTE)
    http = ROUND_TRIP.replace("{protocol}", StreamingExecute.protocol).format(p="p50")
    for protocol in ("legacy", "v1"):
        websocket = results.value(HTTP_EXECUTE, ROUND_TRIP.replace("{protocol}", protocol).format(p="p50"), THIS)
        ours = results.value(HTTP_EXECUTE, http, THIS)
        if websocket and ours:
            results.note(HTTP_EXECUTE, f"POST execute (ndjson) p50 / websocket ({protocol}) p50: {ours / websocket:.2f}")


async def _execute(targets, settings: Settings, results: Results, workload: str = EXECUTE) -> None:
    incomplete = 0
    async with _clients(targets, results, workload) as clients:
        if workload == HTTP_EXECUTE:
            for target in targets:
                if target.name == THIS:
                    kernel_id = await target.start_kernel()
                    clients.append((target, StreamingExecute.protocol, StreamingExecute(target.http, target.url, kernel_id)))
        samples = {(target.name, protocol): [] for target, protocol, _ in clients}
        for _, _, client in clients:
            for _ in range(settings.warmup):
                await client.execute("1", settings.request_timeout)
        per_round = max(1, settings.execute_samples // settings.rounds)
        for _ in range(settings.rounds):
            for target, protocol, client in clients:
                for _ in range(per_round):
                    outcome = await client.execute("1", settings.request_timeout)
                    if outcome.complete:
                        samples[target.name, protocol].append(outcome.seconds)
                    else:
                        incomplete += 1
    for (name, protocol), seconds in samples.items():
        for shown in _shown_as(protocol, clients):
            results.latency(workload, ROUND_TRIP.replace("{protocol}", shown), name, seconds)
    if incomplete:
        results.note(workload, f"{incomplete} requests got no reply within {settings.request_timeout:g} s")


async def output(fleet: Fleet, settings: Settings, results: Results) -> None:
    """A kernel writing `output_mib` MiB to stdout: the share of bytes delivered and the rate."""
    async with fleet.running(fleet.names) as targets:
        await _output(targets, settings, results)


async def _output(targets, settings: Settings, results: Results) -> None:
    expected = settings.output_mib * 1024 * 1024
    cell = output_cell(settings.output_mib)
    async with _clients(targets, results, OUTPUT) as clients:
        delivered = {(target.name, protocol): [] for target, protocol, _ in clients}
        rate = {(target.name, protocol): [] for target, protocol, _ in clients}
        for _, _, client in clients:
            await client.execute("1", settings.request_timeout)
        for _ in range(settings.output_samples):
            for target, protocol, client in clients:
                outcome = await client.execute(cell, settings.request_timeout)
                if not outcome.complete:
                    results.note(OUTPUT, f"{target.name} ({protocol}): the cell's reply or idle did not arrive "
                                         f"within {settings.request_timeout:g} s")
                delivered[target.name, protocol].append(100 * outcome.stdout_bytes / expected)
                rate[target.name, protocol].append(outcome.stdout_bytes / outcome.seconds / 1e6)
    for (name, protocol), percents in delivered.items():
        for shown in _shown_as(protocol, clients):
            results.record(OUTPUT, f"delivered ({shown})", name, median(percents), "%", percents)
            results.record(OUTPUT, f"throughput ({shown})", name, median(rate[name, protocol]), "MB/s",
                           rate[name, protocol])
