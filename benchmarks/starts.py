"""Kernel starts: POST /api/kernels to the first kernel_info_reply (cold, and from a warm pool), and a
burst of concurrent starts with the memory the kernels' owner gains per kernel."""

from __future__ import annotations

import asyncio
import time

from .results import Results, describe
from .settings import Settings
from .targets import THIS, Fleet, ThisGateway, rss_bytes, settled_kernels

START = "start"
CONCURRENT = "concurrent-starts"
FIRST_REPLY = "POST to first kernel_info_reply {p} ({kind})"
# A start request with `env` needs a kernel of its own: the way to ask a gateway with a pool for a cold one.
COLD = {"env": {"KERNEL_BENCHMARK": "cold"}}
POOL = ("--pool", "python3=1")


async def first_reply(target, body: dict, timeout: float) -> tuple[str, float | None]:
    """Start a kernel and ask it for kernel_info over a fresh connection: (kernel id, seconds or None)."""
    started = time.perf_counter()
    kernel_id = await target.start_kernel(body)
    client = await target.connect(kernel_id, v1=False)
    try:
        outcome = await client.kernel_info(timeout)
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return kernel_id, seconds if outcome.complete else None


async def start(fleet: Fleet, settings: Settings, results: Results) -> None:
    async with fleet.running(fleet.names) as targets:
        await _starts(targets, COLD, "cold", settings, results)
    if THIS not in fleet.names:
        return
    if not ThisGateway.has_option("--pool"):
        results.note(START, "warm pool not measured: this gateway has no --pool option yet")
        return
    async with fleet.running([THIS], *POOL) as targets:
        await _starts(targets, {}, "warm pool", settings, results)


async def _starts(targets, body: dict, kind: str, settings: Settings, results: Results) -> None:
    """Samples in rounds, each taken once the target's kernels have settled (a pool refilled, the last
    kernel gone), so that one start does not pay for the previous one."""
    baseline = {target.name: await settled_kernels(target.folder) for target in targets}
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    for _ in range(settings.start_samples):
        for target in targets:
            if await settled_kernels(target.folder, baseline[target.name]) < 0:
                results.note(START, f"{target.name}: kernels did not settle within 30 s before a sample")
            kernel_id, seconds = await first_reply(target, body, settings.request_timeout)
            await target.delete_kernel(kernel_id)
            if seconds is None:
                results.note(START, f"{target.name} ({kind}): no kernel_info_reply within {settings.request_timeout:g} s")
            else:
                samples[target.name].append(seconds)
    for name, seconds in samples.items():
        results.latency(START, FIRST_REPLY.replace("{kind}", kind), name, seconds)


async def concurrent_starts(fleet: Fleet, settings: Settings, results: Results) -> None:
    """`concurrent_starts` kernels asked for at once: how many answer, how long it takes, and what the
    process that owns the kernels (this gateway's supervisor, Kernel Gateway itself) gains per kernel."""
    await fleet.each_gateway(CONCURRENT, results, lambda target: _concurrent_starts(target, settings, results))


async def _concurrent_starts(target, settings: Settings, results: Results) -> None:
    n = settings.concurrent_starts
    await settled_kernels(target.folder)
    before = rss_bytes(target.kernels_pid())
    began = time.perf_counter()
    outcomes = await asyncio.gather(
        *(first_reply(target, {}, settings.request_timeout) for _ in range(n)), return_exceptions=True
    )
    wall = time.perf_counter() - began
    answered = [o for o in outcomes if not isinstance(o, BaseException) and o[1] is not None]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        results.note(CONCURRENT, f"{target.name}: {len(failures)} did not start; first: {describe(failures[0])}")
    await settled_kernels(target.folder, len(answered))
    grown = rss_bytes(target.kernels_pid()) - before
    results.record(CONCURRENT, f"{n} at once: answered", target.name, len(answered), "kernels")
    results.record(CONCURRENT, f"{n} at once: all answered after", target.name, round(wall, 3), "s")
    results.latency(CONCURRENT, f"{n} at once: each {{p}}", target.name, [o[1] for o in answered])
    if answered:
        results.record(CONCURRENT, "kernel owner's RSS per kernel", target.name,
                       round(grown / len(answered) / 2**20, 2), "MiB")
    started = [o[0] for o in outcomes if not isinstance(o, BaseException)]
    await asyncio.gather(*(target.delete_kernel(k) for k in started), return_exceptions=True)
