"""Scale and load: many idle websockets on one worker, and many clients executing cells on many kernels."""

from __future__ import annotations

import asyncio
import contextlib
import time

from .results import Results, describe
from .settings import Settings
from .targets import Fleet, rss_bytes, settled_kernels

IDLE = "idle-websockets"
LOAD = "load"
OPEN_AT_ONCE = 50  # websockets being opened at any one time


async def idle_websockets(fleet: Fleet, settings: Settings, results: Results) -> None:
    """`idle_websockets` websockets to one kernel, held open: how many open, and the growth in resident
    memory of the process serving them (this gateway's one web worker, Kernel Gateway itself)."""
    await fleet.each_gateway(IDLE, results, lambda target: _idle_websockets(target, settings, results))


async def _idle_websockets(target, settings: Settings, results: Results) -> None:
    n = settings.idle_websockets
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
    handshakes = [ws for ws in opened if not isinstance(ws, BaseException)]
    failures = [e for e in opened if isinstance(e, BaseException)]
    await asyncio.sleep(settings.settle_seconds)
    grown = rss_bytes(pid) - before
    alive = await asyncio.gather(*(ws.alive() for ws in handshakes))
    sockets = [ws for ws, up in zip(handshakes, alive) if up]
    answered = False
    if sockets:
        with contextlib.suppress(ConnectionError, OSError):
            answered = (await sockets[-1].execute("1", settings.request_timeout)).complete
    await asyncio.gather(*(ws.close() for ws in handshakes), return_exceptions=True)
    results.record(IDLE, f"{n} websockets: open", target.name, len(sockets), "websockets")
    results.record(IDLE, f"{n} websockets: opening took", target.name, round(took, 2), "s")
    results.record(IDLE, f"{n} websockets: server RSS growth", target.name, round(grown / 2**20, 1), "MiB")
    if sockets:
        results.record(IDLE, "RSS per open websocket", target.name, round(grown / len(sockets) / 1024, 1), "KiB")
    if failures:
        results.note(IDLE, f"{target.name}: {len(failures)} websocket handshakes failed; first: {describe(failures[0])}")
    if len(handshakes) > len(sockets):
        results.note(IDLE, f"{target.name}: {len(handshakes) - len(sockets)} websockets were accepted, then closed "
                           "by the server")
    if sockets and not answered:
        results.note(IDLE, f"{target.name}: the kernel did not answer over the last websocket still open")


async def load(fleet: Fleet, settings: Settings, results: Results) -> None:
    """`load_clients` clients, each on its own connection to one of `load_kernels` kernels, executing `1`
    back to back for `load_seconds`: executions, lost replies, latency."""
    for name in fleet.names:
        with results.guard(LOAD, name):
            async with fleet.running([name]) as [target]:
                await _load(target, settings, results)


async def _load(target, settings: Settings, results: Results) -> None:
    kernel_ids = [await target.start_kernel() for _ in range(settings.load_kernels)]
    await settled_kernels(target.folder, len(kernel_ids), timeout=60.0)
    clients = [await target.connect(kernel_ids[i % len(kernel_ids)], v1=True) for i in range(settings.load_clients)]
    seconds: list[float] = []
    lost = late_idle = disconnected = 0
    deadline = asyncio.get_running_loop().time() + settings.load_seconds

    async def run(client) -> None:
        nonlocal lost, late_idle, disconnected
        while asyncio.get_running_loop().time() < deadline:
            try:
                outcome = await client.execute("1", settings.request_timeout)
            except (ConnectionError, OSError):
                disconnected += 1
                return
            if outcome.complete:
                seconds.append(outcome.seconds)
            elif outcome.replied:
                late_idle += 1
            else:
                lost += 1

    began = time.perf_counter()
    try:
        await asyncio.gather(*(run(c) for c in clients))
    finally:
        elapsed = time.perf_counter() - began
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    prefix = f"{settings.load_clients} clients, {settings.load_kernels} kernels"
    results.record(LOAD, f"{prefix}: executions", target.name, len(seconds), "cells")
    results.record(LOAD, f"{prefix}: executions/s", target.name, round(len(seconds) / elapsed, 1), "cells/s")
    results.record(LOAD, f"{prefix}: lost replies", target.name, lost, "replies")
    results.latency(LOAD, f"{prefix}: round trip {{p}}", target.name, seconds)
    results.note(LOAD, f"{target.name} clients spoke {clients[0].protocol}")
    if disconnected:
        results.note(LOAD, f"{target.name}: {disconnected} clients lost their connection")
    if late_idle:
        results.note(LOAD, f"{target.name}: {late_idle} replies came without their idle status within "
                           f"{settings.request_timeout:g} s")
