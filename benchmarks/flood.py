"""Output floods: kernels printing as fast as they can, each with a client that reads as fast as it can,
and what the rest of the server still does meanwhile.

Measured per gateway, one at a time (a flood takes every core there is): GET /api/kernels/{id} latency
while `flood_kernels` kernels flood; how long a POST interrupt takes to be answered and how long until
the client sees the cell's KeyboardInterrupt; CPU seconds per MB delivered, of the process that owns the
kernels and of the whole server; the share of a bounded output that reaches its client meanwhile; and,
with `stop_kernels` flooding kernels, how long a SIGTERM takes to stop the server and how many kernel
processes are left after it.

The clients run in a process and a session of their own (`python -m benchmarks.flood`), so that reading
the flood cannot delay the measuring requests of this one, nor take the server's turns on the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time

import aiohttp

from .clients import WebsocketKernel
from .messages import output_cell
from .results import Results
from .settings import Settings
from .targets import RAW, STOP_GRACE, Fleet, ThisGateway, cpu_ticks, make, processes_mentioning, settled_kernels

FLOOD = "flood"
CODE = "while True: print('x' * 100, flush=True)"  # a message per line: the most messages a kernel can send
PROBE_EVERY = 0.05
PROBE_TIMEOUT = 10.0  # a REST answer or an interrupt slower than this counts as failed
YIELD_EVERY = 50  # messages a client takes before its process runs its other clients


# -- the clients' process --------------------------------------------------------------------------


async def _client(http, ws_url: str, kernel_id: str, expected: int, report) -> int:
    """One websocket: run the cell (the flood, or `expected` bytes of output), read until stopped."""
    kernel = await WebsocketKernel.connect(http, ws_url, kernel_id, v1=False)
    code = output_cell(expected // (1 << 20)) if expected else CODE
    cell = await kernel._send("execute_request", {"code": code, "silent": False, "store_history": False,
                                                  "user_expressions": {}, "allow_stdin": False})
    report({"kernel": kernel_id, "started": True})
    stdout = count = 0
    replied = False
    try:
        while True:
            channel, header, parent, content = await kernel._receive()
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if parent.get("msg_id") != cell:
                continue
            if header["msg_type"] == "stream":
                stdout += len(content["text"].encode())
            elif channel == "shell" and not replied:
                replied = True
                report({"kernel": kernel_id, "reply": content.get("ename") or content.get("status"), "at": time.time()})
            elif header["msg_type"] == "status" and content["execution_state"] == "idle" and expected:
                report({"kernel": kernel_id, "done": stdout})
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await kernel.close()
    return stdout


async def clients_main(ws_url: str, specs: list[str]) -> None:
    """specs: KERNEL_ID (flood) or KERNEL_ID=BYTES (a bounded output). Each event is a JSON line on
    stdout; SIGTERM ends the clients, and the last line holds the stdout bytes each received."""
    def report(event: dict) -> None:
        print(json.dumps(event), flush=True)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        tasks = {}
        for spec in specs:
            kernel_id, _, expected = spec.partition("=")
            tasks[kernel_id] = asyncio.create_task(_client(http, ws_url, kernel_id, int(expected or 0), report))
        await stop.wait()
        for task in tasks.values():
            task.cancel()
        received = await asyncio.gather(*tasks.values(), return_exceptions=True)
    report({"totals": {k: r if isinstance(r, int) else 0 for k, r in zip(tasks, received)}})


class Clients:
    """The clients' process seen from the workload: its events as they come."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.events: list[dict] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, ws_url: str, specs: list[str]) -> "Clients":
        # A session of its own: the clients stand for other machines, and where Linux weighs sessions apart
        # (autogroup), one shared with the server would take its turns on the cores.
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "benchmarks.flood", ws_url, *specs,
                                                       stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                                                       start_new_session=True)
        return cls(process)

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self._changed.set()

    async def wait_for(self, check, timeout: float):
        """The first event for which check(event) holds, or None after `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    found = next((e for e in self.events if check(e)), None)
                    if found:
                        return found
                    self._changed.clear()
                    await self._changed.wait()
        return None

    async def stop(self) -> dict[str, int]:
        """End the clients; the stdout bytes each received."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._reader
        return next((e["totals"] for e in reversed(self.events) if "totals" in e), {})


# -- the workload ----------------------------------------------------------------------------------


def _seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            ticks += cpu_ticks(pid)
    return ticks / os.sysconf("SC_CLK_TCK")


def _server_pids(target) -> list[int]:
    if isinstance(target, ThisGateway):
        return [target.process.pid, *(pid for _, pid in target.processes())]
    return [target.process.pid]


async def flood(fleet: Fleet, settings: Settings, results: Results) -> None:
    for name in fleet.names:
        if name == RAW:
            continue
        with results.guard(FLOOD, name):
            async with fleet.running([name]) as [target]:
                await _under_flood(target, settings, results)
        with results.guard(FLOOD, name):
            async with make(name) as target:  # a server of its own, whatever the fleet keeps: it is stopped
                await _stop_during_flood(target, settings, results)


async def _start_flooding(target, count: int, bounded: int = 0) -> tuple[list[str], str | None, Clients]:
    """`count` flooding kernels with their clients, plus one printing `bounded` bytes if asked; the
    clients' process once every cell has been sent."""
    kernel_ids = [await target.start_kernel() for _ in range(count + (1 if bounded else 0))]
    await settled_kernels(target.folder, len(kernel_ids), timeout=60.0)
    fast = kernel_ids.pop() if bounded else None
    specs = kernel_ids + ([f"{fast}={bounded}"] if fast else [])
    clients = await Clients.start(target.ws_url, specs)
    started = await clients.wait_for(lambda e: sum("started" in x for x in clients.events) >= len(specs), 60)
    if not started:
        raise RuntimeError("the clients did not start their cells within 60 s")
    return kernel_ids, fast, clients


async def _under_flood(target, settings: Settings, results: Results) -> None:
    bounded = settings.flood_output_mib << 20
    kernel_ids, fast, clients = await _start_flooding(target, settings.flood_kernels, bounded)
    owner, server = [target.kernels_pid()], _server_pids(target)
    try:
        await asyncio.sleep(1.0)  # the floods under way
        cpu_owner, cpu_server, began = _seconds(owner), _seconds(server), time.monotonic()
        latencies, failed = await _probe(target, kernel_ids[0], settings.flood_seconds)
        done = await clients.wait_for(lambda e: e.get("kernel") == fast and "done" in e, settings.request_timeout)
        answered, seen, unanswered = [], [], 0
        for kernel_id in kernel_ids:
            asked = time.time()
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    async with target.http.post(f"{target.url}/api/kernels/{kernel_id}/interrupt") as r:
                        ok = r.status == 204
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if not ok:
                unanswered += 1
                continue
            answered.append(time.time() - asked)
            reply = await clients.wait_for(lambda e, k=kernel_id: e.get("kernel") == k and "reply" in e, PROBE_TIMEOUT)
            if reply and reply["reply"] == "KeyboardInterrupt":
                seen.append(reply["at"] - asked)
        cpu_owner, cpu_server = _seconds(owner) - cpu_owner, _seconds(server) - cpu_server
        elapsed = time.monotonic() - began
    finally:
        totals = await clients.stop()
    delivered_mb = sum(totals.values()) / 1e6
    prefix = f"{settings.flood_kernels} flooding kernels"
    results.latency(FLOOD, f"{prefix}: GET /api/kernels/{{{{id}}}} {{p}}", target.name, latencies)
    results.record(FLOOD, f"{prefix}: GET /api/kernels/{{id}} failed", target.name, failed, "requests")
    results.latency(FLOOD, f"{prefix}: interrupt answered {{p}}", target.name, answered)
    results.latency(FLOOD, f"{prefix}: KeyboardInterrupt seen {{p}}", target.name, seen)
    results.record(FLOOD, f"{prefix}: interrupts unanswered", target.name, unanswered, "requests")
    if delivered_mb:
        results.record(FLOOD, f"{prefix}: kernel owner's CPU per MB delivered", target.name,
                       round(cpu_owner / delivered_mb, 4), "s/MB")
        results.record(FLOOD, f"{prefix}: server's CPU per MB delivered", target.name,
                       round(cpu_server / delivered_mb, 4), "s/MB")
    results.record(FLOOD, f"{prefix}: delivered to all clients", target.name, round(delivered_mb / elapsed, 1), "MB/s")
    share = 100 * done["done"] / bounded if done else 0.0
    results.record(FLOOD, f"{prefix}: {settings.flood_output_mib} MiB printed beside them, delivered", target.name,
                   round(share, 1), "%")
    if not done:
        results.note(FLOOD, f"{target.name}: the bounded output's idle did not arrive within "
                            f"{settings.request_timeout:g} s")


async def _probe(target, kernel_id: str, seconds: float) -> tuple[list[float], int]:
    """GET /api/kernels/{id} back to back (a pause between) for `seconds`: latencies, failures."""
    latencies, failed = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                async with target.http.get(f"{target.url}/api/kernels/{kernel_id}") as r:
                    await r.read()
                    ok = r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - began)
        else:
            failed += 1
        await asyncio.sleep(PROBE_EVERY)
    return latencies, failed


async def _stop_during_flood(target, settings: Settings, results: Results) -> None:
    _, _, clients = await _start_flooding(target, settings.stop_kernels)
    try:
        await asyncio.sleep(settings.flood_seconds / 2)
        began = time.perf_counter()
        target.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(target.process.wait), STOP_GRACE)
            took = round(time.perf_counter() - began, 2)
        except TimeoutError:
            took = None
            results.note(FLOOD, f"{target.name}: still running {STOP_GRACE:g} s after SIGTERM; killed")
        await asyncio.sleep(1.0)  # for kernels that were told to exit to do so
        left = len(processes_mentioning(f"{target.folder}/"))
    finally:
        await clients.stop()
    prefix = f"SIGTERM with {settings.stop_kernels} flooding kernels"
    results.record(FLOOD, f"{prefix}: stopped after", target.name, took, "s")
    results.record(FLOOD, f"{prefix}: kernel processes left", target.name, left, "kernels")


if __name__ == "__main__":
    asyncio.run(clients_main(sys.argv[1], sys.argv[2:]))
