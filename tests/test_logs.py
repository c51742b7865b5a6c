"""Logs: one line per request and per kernel lifecycle event with its kernel id; JSON on request."""

from __future__ import annotations

import asyncio
import json


async def test_json_logs_one_object_per_line(start_gateway, http):
    gw = await start_gateway("--log-format", "json", "--log-level", "info", "--base-path", "/krn")
    async with http.post(f"{gw.url}/api/kernels", json={}) as r:
        kernel_id = (await r.json())["id"]
    async with http.post(f"{gw.url}/api/kernels/{kernel_id}/interrupt") as r:
        assert r.status == 204
    async with http.delete(f"{gw.url}/api/kernels/{kernel_id}") as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/api/kernels/nope") as r:
        assert r.status == 404
    assert await gw.stop() == 0

    lines = gw.log().splitlines()
    # Every line of ours is a JSON object; what else there is, kernels wrote to their own stderr.
    assert not [line for line in lines if line.startswith("[") and line[1:3] in ("I ", "W ", "E ", "D ")]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert {"time", "level", "logger", "pid", "message"} <= set(entries[0])
    assert len({entry["pid"] for entry in entries}) == 3  # the arbiter, the supervisor and the web worker
    messages = [entry["message"] for entry in entries]
    for event in ("started", "interrupted", "shutdown"):
        assert messages.count(f"Kernel {event}: {kernel_id}") == 1
    requests = [entry for entry in entries if entry["logger"] == "aiohttp.access"]
    lines_and_status = [(entry["first_request_line"], entry["response_status"]) for entry in requests]
    assert lines_and_status == [
        ("POST /krn/api/kernels HTTP/1.1", 201),
        (f"POST /krn/api/kernels/{kernel_id}/interrupt HTTP/1.1", 204),
        (f"DELETE /krn/api/kernels/{kernel_id} HTTP/1.1", 204),
        ("GET /krn/api/kernels/nope HTTP/1.1", 404),
    ]
    assert all(float(entry["request_time_frac"]) >= 0 for entry in requests)


async def test_log_level_warning_leaves_out_requests_and_events(start_gateway, http):
    gw = await start_gateway("--log-level", "warning", wait_for="")  # nothing to wait for in the log
    for _ in range(600):
        try:
            async with http.get(f"{gw.url}/api/kernels") as r:
                if r.status == 200 and await r.json():
                    break
        except OSError:
            pass
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the gateway never served its launch kernel:\n{gw.log()}")
    assert await gw.stop() == 0
    assert "GET /api/kernels" not in gw.log() and "Kernel started" not in gw.log()
    assert "Kernel shutdown" not in gw.log()
