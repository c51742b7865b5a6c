"""Logs: one line per request and per kernel lifecycle event with its kernel id; JSON on request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp

from .conftest import eventually, free_port, kernel_pids
from .kernel_client import KernelSocket
from .helpers import children, json_of, start_kernel


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


async def test_a_closed_log_pipe_stops_nothing(http, tmp_path):
    """`kernels-gateway | jq` where jq is gone: the gateway keeps serving, a kernel started afterwards
    works (it would inherit the broken pipe), a worker killed meanwhile is replaced, and the stop is clean."""
    port, runtime_dir = free_port(), tmp_path / "rt"
    process = subprocess.Popen(
        [sys.executable, "-m", "kernels_gateway", "--port", str(port), "--runtime-dir", str(runtime_dir),
         "--pool", "none", "--initial-kernels", "0", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        seen = b""
        async with asyncio.timeout(60):
            while b"Serving at" not in seen:
                chunk = await asyncio.to_thread(process.stdout.read1, 4096)
                assert chunk, seen.decode()
                seen += chunk
        assert all(json.loads(line) for line in seen.splitlines())  # every line JSON, even at start-up
        process.stdout.close()  # the reader is gone
        for _ in range(20):  # each of these writes an access line into the closed pipe
            async with http.get(f"{url}/api/kernels") as r:
                assert r.status == 200
        async with http.post(f"{url}/api/kernels", json={}) as r:
            assert r.status == 201, await r.text()
            kernel_id = (await r.json())["id"]
        [worker] = [pid for pid, cmdline in children(process.pid).items() if " web " in cmdline]
        os.kill(worker, signal.SIGKILL)  # the arbiter logs that, and starts another
        gw = type("Address", (), {"ws_url": f"ws://127.0.0.1:{port}"})
        sock = await eventually(lambda: _open(http, gw, kernel_id), timeout=60)
        _, stdout = await sock.execute("print('despite the pipe')")
        assert stdout == "despite the pipe\n"
        await sock.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 40) == 0
        assert kernel_pids(runtime_dir) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in kernel_pids(runtime_dir):
            os.kill(pid, signal.SIGKILL)


async def _open(http, gw, kernel_id: str):
    try:
        return await KernelSocket.open(http, gw, kernel_id)
    except (aiohttp.ClientError, OSError):
        return None


async def test_json_logs_stay_json_through_bad_input_and_a_crash(start_gateway, http):
    """No kernel (their own output is theirs): every line the gateway's processes write is JSON, the
    refusals of bad input and the replacement of a killed worker included."""
    gw = await start_gateway("--log-format", "json", "--initial-kernels", "0")
    for raw in (b"EVIL\x01 / HTTP/1.1\r\n\r\n", b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"x" * 10_000 + b"\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(raw)
        await asyncio.wait_for(reader.read(), 30)
        writer.close()
    async with http.post(f"{gw.url}/api/kernels", data="[" * 5000 + "]" * 5000) as r:
        assert r.status == 400
    async with http.get(f"{gw.url}/api", headers={"Host": "rebound.example"}) as r:
        assert r.status == 403
    [worker] = [pid for pid, cmdline in children(gw.process.pid).items() if " web " in cmdline]
    os.kill(worker, signal.SIGKILL)
    await eventually(lambda: _health(http, gw), timeout=60)
    assert await gw.stop() == 0
    lines = gw.log().splitlines()
    assert len(lines) >= 5  # start-up, refusals, the restart, the stop
    for line in lines:
        assert isinstance(json.loads(line), dict), line


async def _health(http, gw) -> bool:
    try:
        async with http.get(f"{gw.url}/api/health") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


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


async def _logged(gw, text: str) -> bool:
    return text in gw.log()


async def _busy(http, gw, kernel_id: str) -> bool:
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    return model["execution_state"] == "busy"
