"""Prometheus metrics at {base}/metrics: the supervisor's counts, the kernels by state, and what every web
worker relayed, whichever worker answers the scrape."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import kernel_pids
from .kernel_client import KernelSocket


async def scrape(http: aiohttp.ClientSession, url: str) -> dict:
    """{(sample name, frozenset of labels): value}, read with prometheus_client's own parser."""
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_kernels_requests_and_relayed_messages(gateway, http, connect):
    before = await scrape(http, gateway.url)
    async with http.post(f"{gateway.url}/api/kernels", json={}) as r:
        kernel_id = (await r.json())["id"]
    try:
        sock = await connect(kernel_id)
        reply, stdout = await sock.execute("print('x' * 5000)")
        assert stdout == "x" * 5000 + "\n"
        during = await scrape(http, gateway.url)
        assert value(during, "kernels_gateway_websocket_connections") >= 1
        assert value(during, "kernels_gateway_kernels", state="idle", kernelspec="python3") >= 1
        async with http.post(f"{gateway.url}/api/kernels/{kernel_id}/restart") as r:
            assert r.status == 200
    finally:
        async with http.delete(f"{gateway.url}/api/kernels/{kernel_id}") as r:
            assert r.status == 204
    after = await scrape(http, gateway.url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("kernels_gateway_kernel_starts_total", kernelspec="python3") == 1
    assert grew("kernels_gateway_kernel_start_seconds_count", kernelspec="python3") == 1
    assert grew("kernels_gateway_kernel_start_seconds_sum", kernelspec="python3") > 0
    assert grew("kernels_gateway_kernel_restarts_total", kernelspec="python3", cause="request") == 1
    assert grew("kernels_gateway_supervisor_request_seconds_count", op="start", outcome="ok") == 1
    assert grew("kernels_gateway_supervisor_request_seconds_count", op="shutdown", outcome="ok") == 1
    assert grew("kernels_gateway_websockets_opened_total") == 1
    assert grew("kernels_gateway_websocket_messages_total", direction="to_kernel", channel="shell") == 1
    assert grew("kernels_gateway_websocket_messages_total", direction="to_client", channel="shell") == 1
    # busy, execute_input, stream, idle at least; the stream alone carries the 5000 characters.
    assert grew("kernels_gateway_websocket_messages_total", direction="to_client", channel="iopub") >= 4
    assert grew("kernels_gateway_websocket_bytes_total", direction="to_client", channel="iopub") > 5000
    assert grew("kernels_gateway_websocket_bytes_total", direction="to_kernel", channel="shell") > 100


async def test_every_worker_shows_what_all_workers_relayed(start_gateway, http):
    """Two workers share the port; whichever answers a scrape reports the websockets that both handled."""
    gw = await start_gateway("--workers", "2", "--log-format", "json")
    async with http.get(f"{gw.url}/api/kernels") as r:
        [kernel] = await r.json()

    def pids_serving(path: str) -> list[int]:
        """The workers that answered each request for `path`, in order, from the access log."""
        entries = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
        return [entry["pid"] for entry in entries if path in entry.get("first_request_line", "")]

    async def relayed_count() -> tuple[float, float]:
        async with aiohttp.ClientSession() as fresh:  # a new connection: either worker may take it
            samples = await scrape(fresh, gw.url)
        return (value(samples, "kernels_gateway_websockets_opened_total"),
                value(samples, "kernels_gateway_websocket_messages_total", direction="to_kernel", channel="shell"))

    opened = 0
    while len(set(pids_serving("/channels"))) < 2:  # until both workers have had some
        assert opened < 100, "one worker took every connection"
        async with aiohttp.ClientSession() as fresh:
            sock = await KernelSocket.open(fresh, gw, kernel["id"])
            await sock.execute("1")
            await sock.close()
        opened += 1
        await asyncio.sleep(0.05)  # the access log line is written once the websocket has closed

    for _ in range(60):  # each worker reports every few seconds
        if await relayed_count() == (opened, opened):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the counts of both workers never came together")
    # From now on, every scrape shows every websocket, whichever worker answers it.
    await asyncio.sleep(0.1)
    seen = len(pids_serving("/metrics"))
    for _ in range(100):
        assert await relayed_count() == (opened, opened)
        await asyncio.sleep(0.05)
        if len(set(pids_serving("/metrics")[seen:])) == 2:
            break
    else:
        raise AssertionError("one worker answered every scrape")


async def test_automatic_restarts_and_culls_are_counted(start_gateway, http):
    gw = await start_gateway("--cull-idle-timeout", "6", "--cull-interval", "0.5")
    [pid] = kernel_pids(gw.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):
        samples = await scrape(http, gw.url)
        if value(samples, "kernels_gateway_kernel_restarts_total", kernelspec="python3", cause="automatic") == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the automatic restart was never counted")
    for _ in range(300):  # idle and unconnected, it is culled some seconds later
        samples = await scrape(http, gw.url)
        if value(samples, "kernels_gateway_kernel_culls_total", kernelspec="python3") == 1:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the cull was never counted")
    assert not [key for key in samples if key[0] == "kernels_gateway_kernels"]
    assert value(samples, "kernels_gateway_kernel_restarts_total", kernelspec="python3", cause="request") == 0
