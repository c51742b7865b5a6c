"""Scale and load: many idle websockets on one worker, and many clients executing cells on many kernels."""

from __future__ import annotations

import asyncio
import contextlib
import time

from .results import Results
from .settings import Settings
from .targets import RAW, Fleet, rss_bytes, settled_kernels

IDLE = "idle-websockets"
LOAD = "load"
OPEN_AT_ONCE = 50  # websockets being opened at any one time


async def idle_websockets(fleet: Fleet, settings: Settings, results: Results) -> None:
    """`idle_websockets` websockets to one kernel, held open: how many open, and the growth in resident
    memory of the process serving them (this gateway's one web worker, Kernel Gateway itself)."""
    n = settings.idle_websockets
    for name in fleet.names:
        if name == RAW:
            continue
        async with fleet.running([name]) as [target]:
            kernel_id = await target.start_kernel()
            first = await target.connect(kernel_id, v1=False)  # code paths loaded before the baseline
            await first.execute("1", settings.request_timeout)
            await first.close()
            await asyncio.sleep(settings.settle_seconds)
            pid = target.memory_pid()
            before = rss_bytes(pid)
            gate = asyncio.Semaphore(OPEN_AT_ONCE)

            async def open_one():
                async with gate:
                    return await target.connect(kernel_id, v1=False)

            began = time.perf_counter()
            opened = await asyncio.gather(*(open_one() for _ in range(n)), return_exceptions=True)
            took = time.perf_counter() - began
            sockets = [ws for ws in opened if not isinstance(ws, BaseException)]
            failures = [e for e in opened if isinstance(e, BaseException)]
            await asyncio.sleep(settings.settle_seconds)
            grown = rss_bytes(pid) - before
            answers = sockets and (await sockets[-1].execute("1", settings.request_timeout)).complete
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        results.record(IDLE, f"{n} websockets: opened", name, len(sockets), "websockets")
        results.record(IDLE, f"{n} websockets: opening took", name, round(took, 2), "s")
        results.record(IDLE, f"{n} websockets: server RSS growth", name, round(grown / 2**20, 1), "MiB")
        if sockets:
            results.record(IDLE, "RSS per websocket", name, round(grown / len(sockets) / 1024, 1), "KiB")
        if failures:
            results.note(IDLE, f"{name}: {len(failures)} websockets failed to open, first: {failures[0]!r:.300}")
        if sockets and not answers:
            results.note(IDLE, f"{name}: the kernel did not answer over the last websocket once all were open")


async def load(fleet: Fleet, settings: Settings, results: Results) -> None:
    """`load_clients` clients, each on its own connection to one of `load_kernels` kernels, executing `1`
    back to back for `load_seconds`: executions, lost replies, latency."""
    for name in fleet.names:
        async with fleet.running([name]) as [target]:
            kernel_ids = [await target.start_kernel() for _ in range(settings.load_kernels)]
            await settled_kernels(target.folder, len(kernel_ids), timeout=60.0)
            clients = [await target.connect(kernel_ids[i % len(kernel_ids)], v1=True)
                       for i in range(settings.load_clients)]
            protocol = clients[0].protocol
            seconds: list[float] = []
            lost = late_idle = errors = 0
            deadline = asyncio.get_running_loop().time() + settings.load_seconds

            async def run(client) -> None:
                nonlocal lost, late_idle, errors
                while asyncio.get_running_loop().time() < deadline:
                    try:
                        outcome = await client.execute("1", settings.request_timeout)
                    except (ConnectionError, OSError, asyncio.IncompleteReadError):
                        errors += 1
                        return
                    if outcome.complete:
                        seconds.append(outcome.seconds)
                    elif outcome.replied:
                        late_idle += 1
                    else:
                        lost += 1

            began = time.perf_counter()
            await asyncio.gather(*(run(c) for c in clients))
            elapsed = time.perf_counter() - began
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.close()
        prefix = f"{settings.load_clients} clients, {settings.load_kernels} kernels"
        results.record(LOAD, f"{prefix}: executions", name, len(seconds), "cells")
        results.record(LOAD, f"{prefix}: executions/s", name, round(len(seconds) / elapsed, 1), "cells/s")
        results.record(LOAD, f"{prefix}: lost replies", name, lost, "replies")
        results.latency(LOAD, f"{prefix}: round trip {{p}}", name, seconds)
        if errors:
            results.note(LOAD, f"{name}: {errors} clients lost their connection")
        if late_idle:
            results.note(LOAD, f"{name}: {late_idle} replies came without their idle status within "
                               f"{settings.request_timeout:g} s")
        results.note(LOAD, f"{name} clients spoke {protocol}")
