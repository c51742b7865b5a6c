"""REST throughput: GET /api/kernels/{id} with many concurrent connections, by wrk when it is installed
(Debian's `wrk` package) and otherwise by an aiohttp load generator in this process."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import aiohttp

from .results import Results
from .settings import Settings
from .targets import RAW, THIS, Fleet

REST = "rest"
WRK_THREADS = 1  # on a 2-core machine, one wrk thread leaves the other core to the server


def load_generator(connections: int) -> str:
    if shutil.which("wrk"):
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
        return f"{version or 'wrk'} ({WRK_THREADS} thread, {connections} connections)"
    return f"aiohttp in the benchmark process ({connections} connections; wrk not installed)"


async def _wrk(url: str, connections: int, seconds: float) -> tuple[float, int]:
    """Requests per second and failed requests (non-2xx answers and socket errors)."""
    process = await asyncio.create_subprocess_exec(
        "wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(process.communicate(), seconds + 60))[0].decode()
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    return float(found.group(1)), failed


async def _aiohttp(url: str, connections: int, seconds: float) -> tuple[float, int]:
    counts = {"ok": 0, "failed": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def one_connection(http: aiohttp.ClientSession) -> None:
        while loop.time() < deadline:
            try:
                async with http.get(url) as r:
                    await r.read()
                    counts["ok" if r.status == 200 else "failed"] += 1
            except aiohttp.ClientError:
                counts["failed"] += 1

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        began = time.perf_counter()
        await asyncio.gather(*(one_connection(http) for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return counts["ok"] / elapsed, counts["failed"]


async def rest(fleet: Fleet, settings: Settings, results: Results) -> None:
    generate = _wrk if shutil.which("wrk") else _aiohttp
    results.meta["load generator"] = load_generator(settings.rest_connections)
    measure = f"GET /api/kernels/{{id}}, {settings.rest_connections} connections"
    for name in fleet.names:
        if name == RAW:
            continue
        args = ("--workers", str(settings.rest_workers)) if name == THIS else ()
        with results.guard(REST, name):
            async with fleet.running([name], *args) as [target]:
                kernel_id = await target.start_kernel()
                url = f"{target.url}/api/kernels/{kernel_id}"
                if settings.rest_warmup:  # connections opened, caches filled
                    await generate(url, settings.rest_connections, 1.0)
                rate, failed = await generate(url, settings.rest_connections, settings.rest_seconds)
                results.record(REST, measure, target.name, round(rate, 1), "req/s")
                results.record(REST, "failed requests", target.name, failed, "requests")
    if THIS in fleet.names:
        results.note(REST, f"kernels-gateway ran with --workers {settings.rest_workers}; "
                           f"load from {results.meta['load generator']}")
