"""Forked kernels beside launched ones (`--fork none`) and Kernel Gateway's, in one run, without a warm
pool: POST to the first kernel_info_reply, 20 concurrent starts, an idle kernel's proportional memory
among 3 kernels and among as many as the concurrent starts (PSS, of forked kernels without preloads,
since a launched kernel has imported none), and what `import numpy` costs in a new kernel (this gateway
forking with `--preload numpy`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from .results import Results, describe, median
from .settings import Settings
from .starts import first_reply
from .targets import KG, THIS, Fleet, ThisGateway, kernels_of, proc_bytes, settled_kernels

FORK = "fork"
FORKED = ("--pool", "none", "--fork", "python", "--preload", "numpy")
# A launched kernel has not imported numpy: the memory of forked kernels is compared without preloads.
FORKED_PLAIN = ("--pool", "none", "--fork", "python")
LAUNCHED = ("--pool", "none", "--fork", "none")
# An idle kernel's PSS falls as more kernels share a template's pages: measured with a few kernels, and with
# as many as a burst of concurrent starts leaves.
PSS_KERNELS = 3


async def fork(fleet: Fleet, settings: Settings, results: Results) -> None:
    if THIS not in fleet.names or not ThisGateway.has_option("--fork"):
        results.note(FORK, "not measured: this gateway has no --fork option")
        return
    others = [KG] if KG in fleet.names else []
    async with _side_by_side(fleet, others, FORKED) as targets:
        await _first_replies(targets, settings, results)
        for target, kind in targets:
            with results.guard(FORK, target.name):
                await _concurrent(target, kind, settings, results)
                await _numpy(target, kind, settings, results)
    # Memory is measured on gateways all running at once, so that each kernel shares the pages of the
    # interpreter's files with as many others as the rest do.
    async with _side_by_side(fleet, others, FORKED_PLAIN) as targets:
        for count in (PSS_KERNELS, settings.concurrent_starts):
            for target, kind in targets:
                with results.guard(FORK, target.name):
                    await _memory(target, kind, count, settings, results)


@contextlib.asynccontextmanager
async def _side_by_side(fleet: Fleet, others: list[str], forking: tuple[str, ...]):
    """This gateway forking (with `forking`), this gateway launching and the others, running at once, as
    (target, kind). Kernel Gateway's figures sit in the rows of this gateway's forked kernels, for the ratio."""
    async with fleet.running([THIS, *others], *forking) as forked, fleet.running([THIS], *LAUNCHED) as [launched]:
        yield [(forked[0], "forked"), (launched, "launched, --fork none"), *((t, "forked") for t in forked[1:])]


def _measure(text: str, kind: str) -> str:
    return f"{text} ({kind})"


async def _first_replies(targets, settings: Settings, results: Results) -> None:
    """Samples in rounds, the targets in turn, each once the previous start has settled."""
    samples: dict[int, list[float]] = {i: [] for i in range(len(targets))}
    for _ in range(settings.start_samples):
        for i, (target, kind) in enumerate(targets):
            await settled_kernels(target.folder)
            kernel_id, seconds = await first_reply(target, {}, settings.request_timeout)
            await target.delete_kernel(kernel_id)
            if seconds is not None:
                samples[i].append(seconds)
    for i, (target, kind) in enumerate(targets):
        results.latency(FORK, _measure("POST to first kernel_info_reply {p}, no pool", kind), target.name, samples[i])


async def _concurrent(target, kind: str, settings: Settings, results: Results) -> None:
    n = settings.concurrent_starts
    await settled_kernels(target.folder)
    began = time.perf_counter()
    outcomes = await asyncio.gather(*(first_reply(target, {}, settings.request_timeout) for _ in range(n)),
                                    return_exceptions=True)
    wall = time.perf_counter() - began
    answered = [o for o in outcomes if not isinstance(o, BaseException) and o[1] is not None]
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        results.note(FORK, f"{target.name} ({kind}): {len(failures)} did not start; first: {describe(failures[0])}")
    results.record(FORK, _measure(f"{n} concurrent starts: answered", kind), target.name, len(answered), "kernels")
    results.record(FORK, _measure(f"{n} concurrent starts: all answered after", kind), target.name, round(wall, 3), "s")
    await asyncio.gather(*(target.delete_kernel(o[0]) for o in outcomes if not isinstance(o, BaseException)),
                         return_exceptions=True)


async def _memory(target, kind: str, count: int, settings: Settings, results: Results) -> None:
    """The PSS of `count` idle kernels that have each answered one cell: pages shared with a template (or
    with each other) count once among those that share them."""
    await settled_kernels(target.folder)
    kernels = [await target.start_kernel({}) for _ in range(count)]
    try:
        for kernel_id in kernels:
            client = await target.connect(kernel_id, v1=False)
            await client.execute("1", settings.request_timeout)
            await client.close()
        await settled_kernels(target.folder, count)
        sizes = []
        for pid in kernels_of(target.folder):
            with contextlib.suppress(OSError):
                sizes.append(proc_bytes(f"/proc/{pid}/smaps_rollup", "Pss") / 2**20)
        results.record(FORK, _measure(f"idle kernel's PSS, {count} kernels", kind), target.name, round(median(sizes) or 0, 1), "MiB", sizes)
    finally:
        await asyncio.gather(*(target.delete_kernel(k) for k in kernels), return_exceptions=True)


async def _numpy(target, kind: str, settings: Settings, results: Results) -> None:
    """The round trip of a first `import numpy` cell less that of the `1` that follows it, in new kernels."""
    costs = []
    for _ in range(max(1, settings.start_samples // 4)):
        await settled_kernels(target.folder)
        kernel_id = await target.start_kernel({})
        try:
            client = await target.connect(kernel_id, v1=False)
            await client.kernel_info(settings.request_timeout)
            imported = await client.execute("import numpy", settings.request_timeout)
            reference = await client.execute("1", settings.request_timeout)
            await client.close()
            if imported.complete and reference.complete:
                costs.append(max(0.0, imported.seconds - reference.seconds))
        finally:
            await target.delete_kernel(kernel_id)
    results.latency(FORK, _measure("import numpy in a new kernel {p}", kind), target.name, costs)
