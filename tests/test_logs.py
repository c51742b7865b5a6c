"""Logs: one line per request and per kernel lifecycle event with its kernel id; JSON on request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

from .conftest import eventually, free_port, kernel_pids
from .kernel_client import KernelSocket
from .test_survival import json_of, start_kernel


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


async def test_kernel_output_is_logged_as_lines_of_its_kernel(start_gateway, http):
    gw = await start_gateway("--log-format", "json", "--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    await sock.execute("import os, sys; os.write(1, b'on the real stdout\\n'); "
                       "sys.__stderr__.write('on the real stderr\\n'); sys.__stderr__.flush()")
    await eventually(lambda: _logged(gw, "on the real stderr"))
    await sock.close()
    assert await gw.stop() == 0

    entries = [json.loads(line) for line in gw.log().splitlines()]  # every line, the kernels' included
    printed = {entry["stream"]: entry for entry in entries if entry["logger"] == "kernels_gateway.kernel"}
    assert printed["stdout"]["message"] == f"Kernel {kernel_id} stdout: on the real stdout"
    assert printed["stderr"]["message"] == f"Kernel {kernel_id} stderr: on the real stderr"
    assert (printed["stdout"]["level"], printed["stderr"]["level"]) == ("INFO", "WARNING")
    assert printed["stdout"]["kernel_id"] == printed["stderr"]["kernel_id"] == kernel_id
    assert not [entry for entry in entries if "--existing" in entry["message"] or "Ctrl-C" in entry["message"]]


async def test_a_kernel_flooding_its_own_stdout_neither_starves_the_supervisor_nor_floods_the_log(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    lines = 20_000
    flood = sock.message("execute_request", {"code": f"import os\nfor i in range({lines}): os.write(1, b'y' * 200 + b'\\n')",
                                             "silent": False})
    await sock.send(flood)
    await eventually(lambda: _busy(http, gw, kernel_id))
    for _ in range(20):  # the supervisor answers while the kernel writes
        status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
        assert status == 200
    async with asyncio.timeout(60):
        while (msg := await sock.receive())["header"]["msg_type"] != "execute_reply":
            pass
    assert msg["content"]["status"] == "ok"
    await eventually(lambda: _logged(gw, "lines of output not logged"))
    logged = gw.log().count(f"Kernel {kernel_id} stdout: yyyy")
    assert 0 < logged < lines // 10
    await sock.close()


async def test_a_closed_log_stream_stops_neither_the_gateway_nor_its_kernels(http, tmp_path):
    port, runtime_dir = free_port(), tmp_path / "rt"
    read, write = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "kernels_gateway", "--port", str(port), "--runtime-dir", str(runtime_dir),
         "--pool", "none", "--initial-kernels", "0"], stdout=write, stderr=write)
    os.close(write)
    try:
        seen = b""
        async with asyncio.timeout(60):
            while b"Serving at" not in seen:
                seen += await asyncio.to_thread(os.read, read, 65536)
        os.close(read)  # as when `| jq` dies
        gw = type("Target", (), {"url": f"http://127.0.0.1:{port}", "ws_url": f"ws://127.0.0.1:{port}"})
        kernel_id = await start_kernel(http, gw)
        sock = await KernelSocket.open(http, gw, kernel_id)
        _, stdout = await sock.execute("import sys; print('fine'); sys.__stderr__.write('to nobody\\n')")
        assert stdout == "fine\n"
        await sock.close()
        status, kernels = await json_of(http, "GET", f"{gw.url}/api/kernels")
        assert status == 200 and [k["id"] for k in kernels] == [kernel_id]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 40) == 0
        assert kernel_pids(runtime_dir) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in kernel_pids(runtime_dir):
            os.kill(pid, signal.SIGKILL)


async def _logged(gw, text: str) -> bool:
    return text in gw.log()


async def _busy(http, gw, kernel_id: str) -> bool:
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    return model["execution_state"] == "busy"
