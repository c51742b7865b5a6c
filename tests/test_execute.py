"""The execute API against real kernels: nbmodel's shapes and status codes, every output type, input(),
timeouts, streaming, executions that outlive their caller and its worker, restarts and deaths, limits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal

import aiohttp
import pytest

from .conftest import eventually
from .helpers import children

NDJSON = {"Accept": "application/x-ndjson"}
# A 1x1 PNG: display_data must carry an image's MIME bundle.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cf000000030101009d1b0b6a0000000049454e44ae426082"
)).decode()
ANSI = re.compile("\x1b\\[(.*?)([@-~])")


async def post_execute(http, gw, kernel_id: str, body: dict) -> tuple[int, dict, str]:
    async with http.post(f"{gw.url}/api/kernels/{kernel_id}/execute", json=body) as r:
        return r.status, await r.json(), r.headers.get("Location", "")


async def poll(http, gw, location: str, until=lambda status: status != 202, timeout: float = 60):
    """GET the request until `until(status)`; (status, body, headers)."""
    async with asyncio.timeout(timeout):
        while True:
            async with http.get(f"http://127.0.0.1:{gw.port}{location}") as r:
                found = r.status, await r.json(), r.headers
            if until(found[0]):
                return found
            await asyncio.sleep(0.05)


async def run(http, gw, kernel_id: str, code: str, **body) -> dict:
    status, accepted, location = await post_execute(http, gw, kernel_id, {"code": code, **body})
    assert status == 202, accepted
    status, result, _ = await poll(http, gw, location)
    assert status == 200, result
    return {**result, "outputs": json.loads(result["outputs"])}


async def stream(http, gw, kernel_id: str, code: str, **body) -> list[dict]:
    async with http.post(f"{gw.url}/api/kernels/{kernel_id}/execute", json={"code": code, **body},
                         headers=NDJSON) as r:
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        return [json.loads(line) async for line in r.content]


async def test_outputs_of_every_type_in_nbformats_shape(gateway, http, kernel):
    code = (
        "import sys\nfrom IPython.display import Image, clear_output, display\n"
        "print('gone')\nclear_output()\n"
        "print('out')\nprint('err', file=sys.stderr)\n"
        f"display(Image(data=__import__('base64').b64decode('{PNG}')))\n"
        "print('replaced')\nclear_output(wait=True)\nprint('kept', flush=True)\n"
        "6 * 7"
    )
    result = await run(http, gateway, kernel["id"], code)
    assert result["status"] == "ok" and result["request_status"] == "complete" and result["pending"] is False
    outputs = result["outputs"]
    # clear_output(wait=True) clears when the next output comes: everything before 'kept' is gone.
    assert outputs == [
        {"output_type": "stream", "name": "stdout", "text": "kept\n"},
        {"output_type": "execute_result", "data": {"text/plain": "42"}, "metadata": {},
         "execution_count": result["execution_count"]},
    ]
    # The streamed form shows each output as it came, the clears among them, images as MIME bundles.
    lines = await stream(http, gateway, kernel["id"], code)
    kinds = [line.get("output_type") for line in lines[:-1]]
    assert kinds == ["stream", "clear_output", "stream", "stream", "display_data", "stream", "clear_output",
                     "stream", "execute_result"]
    image = lines[4]
    assert image["data"]["image/png"] == PNG and "text/plain" in image["data"]
    assert lines[3] == {"output_type": "stream", "name": "stderr", "text": "err\n"}
    assert lines[-1]["status"] == "ok" and lines[-1]["outputs"] == [lines[-3], lines[-2]]  # plain JSON here


async def test_an_error_answers_200_with_its_traceback(gateway, http, kernel):
    result = await run(http, gateway, kernel["id"], "print('before')\n1 / 0")
    assert result["status"] == "error"
    before, error = result["outputs"]
    assert before["text"] == "before\n"
    assert error["output_type"] == "error" and error["ename"] == "ZeroDivisionError"
    assert error["evalue"] == "division by zero"
    assert ANSI.sub("", error["traceback"][-1]) == "ZeroDivisionError: division by zero"


async def test_input_is_answered_through_the_input_route(gateway, http, kernel):
    status, _, location = await post_execute(http, gateway, kernel["id"], {"code": "input('Age:')"})
    assert status == 202
    status, body, headers = await poll(http, gateway, location)
    assert status == 300
    assert headers["Location"] == f"/krn/api/kernels/{kernel['id']}/input"
    assert body["input_request"] == {"prompt": "Age:", "password": False}
    assert body["parent_header"]["msg_type"] == "input_request"
    assert body["pending"] is True and body["request_status"] == "input"
    async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/input", json={"input": "42"}) as r:
        assert r.status == 201
    status, body, _ = await poll(http, gateway, location)
    assert status == 200 and body["status"] == "ok"
    assert json.loads(body["outputs"])[0]["data"] == {"text/plain": "'42'"}
    # Nothing waits for input now.
    async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/input", json={"input": "43"}) as r:
        assert r.status == 409 and "No execution waits for input" in (await r.json())["message"]


async def test_a_timeout_interrupts_the_kernel(gateway, http, kernel):
    lines = await stream(http, gateway, kernel["id"], "import time\nprint('started', flush=True)\ntime.sleep(600)",
                         timeout=1)
    result = lines[-1]
    assert result["status"] == "timeout" and "interrupted after 1 s" in result["reason"]
    assert result["outputs"][0]["text"] == "started\n"
    assert result["outputs"][-1]["ename"] == "KeyboardInterrupt"
    assert (await run(http, gateway, kernel["id"], "'still here'"))["status"] == "ok"


async def test_two_callers_and_a_websocket_on_one_kernel(gateway, http, kernel, connect, tmp_path):
    release = tmp_path / "release"
    first_code = (f"import os, time\nprint('first', flush=True)\n"
                  f"while not os.path.exists({str(release)!r}): time.sleep(0.02)")
    _, _, first = await post_execute(http, gateway, kernel["id"], {"code": first_code})
    _, _, second = await post_execute(http, gateway, kernel["id"], {"code": "print('second')"})
    await eventually(lambda: _started(http, gateway, first, "first"))
    # The second waits its turn while the first runs.
    status, body, _ = await poll(http, gateway, second, until=lambda s: True)
    assert status == 202 and body["request_status"] == "queued"
    sock = await connect(kernel["id"])
    ws_reply = asyncio.create_task(sock.execute("print('websocket')"))
    release.touch()
    reply, stdout = await ws_reply
    assert reply["content"]["status"] == "ok" and stdout == "websocket\n"  # its own reply and output only
    _, one, _ = await poll(http, gateway, first)
    _, two, _ = await poll(http, gateway, second)
    assert [o["text"] for o in json.loads(one["outputs"])] == ["first\n"]
    assert [o["text"] for o in json.loads(two["outputs"])] == ["second\n"]
    assert one["execution_count"] < two["execution_count"]  # in the order they were posted


async def test_unknown_ids_are_404_and_malformed_bodies_400(gateway, http, kernel):
    base, missing = f"{gateway.url}/api/kernels", "00000000-0000-4000-8000-000000000000"
    for method, url, body in [
        ("POST", f"{base}/{missing}/execute", {"code": "1"}),
        ("POST", f"{base}/not-a-kernel/execute", {"code": "1"}),
        ("GET", f"{base}/{missing}/requests/{missing}", None),
        ("GET", f"{base}/{kernel['id']}/requests/{missing}", None),
        ("GET", f"{base}/{missing}/execute", None),
        ("POST", f"{base}/{missing}/input", {"input": "x"}),
    ]:
        async with http.request(method, url, json=body) as r:
            assert r.status == 404, (method, url)
            assert set(await r.json()) == {"message", "reason"}
    for body in [b"{", b"[]", b"{}", b'{"code": 1}', b'{"code": "1", "metadata": []}',
                 b'{"code": "1", "timeout": -1}', b'{"code": "1", "timeout": true}']:
        async with http.post(f"{base}/{kernel['id']}/execute", data=body) as r:
            assert r.status == 400, body
    for body in [b"{}", b'{"input": 42}']:
        async with http.post(f"{base}/{kernel['id']}/input", data=body) as r:
            assert r.status == 400, body


async def test_restart_and_death_end_an_execution_with_a_clear_status(gateway, http, kernel):
    pid = int((await run(http, gateway, kernel["id"], "import os\nos.getpid()"))["outputs"][0]["data"]["text/plain"])
    sleeper = "import time\nprint('started', flush=True)\ntime.sleep(600)"
    for end, status, why in [("restart", "restarted", "restarted during"), ("kill", "died", "died")]:
        _, _, location = await post_execute(http, gateway, kernel["id"], {"code": sleeper})
        _, _, waiting = await post_execute(http, gateway, kernel["id"], {"code": "'never run'"})
        await poll(http, gateway, location, until=lambda s: True)
        await eventually(lambda: _started(http, gateway, location))
        if end == "restart":
            async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/restart") as r:
                assert r.status == 200
        else:
            os.kill(pid, signal.SIGKILL)
        code, result, _ = await poll(http, gateway, location)
        assert code == 200 and result["status"] == status and why in result["reason"], result
        assert json.loads(result["outputs"]) == [{"output_type": "stream", "name": "stdout", "text": "started\n"}]
        _, queued, _ = await poll(http, gateway, waiting)
        assert queued["status"] == status and "before the execution" in queued["reason"]
        after = await run(http, gateway, kernel["id"], "import os\nos.getpid()")
        assert after["status"] == "ok"
        pid = int(after["outputs"][0]["data"]["text/plain"])


async def _started(http, gw, location: str, text: str = "started") -> bool:
    async with http.get(f"http://127.0.0.1:{gw.port}{location}") as r:
        return text in (await r.json()).get("outputs", "")


async def test_metrics_count_executions_by_status(gateway, http, kernel):
    await run(http, gateway, kernel["id"], "1 / 0")
    async with http.get(f"{gateway.url}/metrics") as r:
        text = await r.text()
    assert re.search(r'^kernels_gateway_executions_total\{status="error"\} [1-9]', text, re.MULTILINE)
    assert 'kernels_gateway_execution_seconds_bucket{le="+Inf",status="error"}' in text


# -- what nbmodel's own test suite expects (jupyter_server_nbmodel/tests/test_handlers.py) -------------


REQUEST = re.compile(r"^/krn/api/kernels/\w+-\w+-\w+-\w+-\w+/requests/\w+-\w+-\w+-\w+-\w+$")


async def test_nbmodels_expectations(gateway, http, kernel):
    # test_post_execute_no_ycell, on a fresh kernel: its first execution.
    status, accepted, location = await post_execute(http, gateway, kernel["id"], {"code": "print('hello buddy')"})
    assert status == 202 and REQUEST.match(location)
    request_id = location.rsplit("/", 1)[-1]
    assert accepted == {"request_id": request_id, "kernel_id": kernel["id"], "cell_id": None,
                        "document_path": None, "pending": True, "request_status": "queued",
                        "request_url": location, "outputs": "[]"}
    status, payload, _ = await poll(http, gateway, location)
    assert status == 200 and payload["status"] == "ok" and payload["execution_count"] == 1
    assert json.loads(payload["outputs"]) == [{"output_type": "stream", "name": "stdout", "text": "hello buddy\n"}]
    # test_post_execute_with_ycell's snippets (no shared document here: the metadata is carried along).
    for snippet, outputs in [
        ("a = 1", []),
        ("display('a'); print('b')", [{"output_type": "display_data", "metadata": {}, "data": {"text/plain": "'a'"}},
                                      {"output_type": "stream", "name": "stdout", "text": "b\n"}]),
    ]:
        result = await run(http, gateway, kernel["id"], snippet, metadata={"cell_id": "c1", "document_path": "t.ipynb"})
        assert result["outputs"] == outputs and result["cell_id"] == "c1" and result["document_path"] == "t.ipynb"
    # test_pending_execute_returns_stream_outputs: outputs show while it runs.
    code = "import time\nprint('streamed before completion', flush=True)\ntime.sleep(2)\nprint('completed', flush=True)"
    _, _, location = await post_execute(http, gateway, kernel["id"], {"code": code})
    await eventually(lambda: _running_with_output(http, gateway, location))
    async with http.get(f"{gateway.url}/api/kernels/{kernel['id']}/execute") as r:
        active = await r.json()
    assert active["kernel_id"] == kernel["id"]
    [listed] = active["requests"]
    assert listed["request_url"] == location and listed["pending"] is True and listed["request_status"] == "running"
    status, final, _ = await poll(http, gateway, location)
    assert final["pending"] is False and final["request_status"] == "complete"
    assert "".join(o["text"] for o in json.loads(final["outputs"])) == "streamed before completion\ncompleted\n"


async def _running_with_output(http, gw, location: str) -> bool:
    async with http.get(f"http://127.0.0.1:{gw.port}{location}") as r:
        body = await r.json()
    assert r.status == 202, body
    return body["request_status"] == "running" and json.loads(body["outputs"]) == [
        {"output_type": "stream", "name": "stdout", "text": "streamed before completion\n"}]


# -- executions outlive their caller and its worker ---------------------------------------------------


def _waits_for(path) -> str:
    return (f"import os, time\nprint('started', flush=True)\n"
            f"while not os.path.exists({str(path)!r}): time.sleep(0.02)\nprint('finished')")


async def _first_line(response: aiohttp.ClientResponse) -> dict:
    return json.loads(await response.content.readline())


async def test_a_caller_that_disconnects_fetches_later_through_another_worker(start_gateway, http, tmp_path):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    first = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    second = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    async with http.get(f"{first.url}/api/kernels") as r:
        [kernel] = await r.json()
    release = tmp_path / "release"
    async with aiohttp.ClientSession() as caller:  # its own connection, closed mid-stream
        async with caller.post(f"{first.url}/api/kernels/{kernel['id']}/execute",
                               json={"code": _waits_for(release)}, headers=NDJSON) as response:
            location = response.headers["Location"]
            assert (await _first_line(response))["text"] == "started\n"
            response.close()
    release.touch()
    status, result, _ = await poll(http, second, location)
    assert status == 200 and result["status"] == "ok"
    assert [o["text"] for o in json.loads(result["outputs"])] == ["started\n", "finished\n"]

    async def answered():  # the first worker's handler ended (its access log line), quietly
        return f"POST /api/kernels/{kernel['id']}/execute HTTP/1.1" in first.log()

    await eventually(answered)
    assert "Traceback" not in first.log() and "[E " not in first.log(), first.log()


async def test_a_worker_killed_mid_execution_loses_nothing(start_gateway, http, tmp_path):
    gw = await start_gateway("--workers", "2")
    async with http.get(f"{gw.url}/api/kernels") as r:
        [kernel] = await r.json()
    release = tmp_path / "release"
    async with aiohttp.ClientSession() as caller:
        async with caller.post(f"{gw.url}/api/kernels/{kernel['id']}/execute",
                               json={"code": _waits_for(release)}, headers=NDJSON) as response:
            location = response.headers["Location"]
            assert (await _first_line(response))["text"] == "started\n"
            workers = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway web" in cmd]
            assert len(workers) == 2
            for worker in workers:  # both, so that the one streaming is among them
                os.kill(worker, signal.SIGKILL)
            with pytest.raises((aiohttp.ClientError, ConnectionError)):
                while await response.content.readline():
                    pass
    release.touch()
    status, result, _ = await eventually(lambda: _fetched(http, gw, location))
    assert status == 200 and result["status"] == "ok"
    assert [o["text"] for o in json.loads(result["outputs"])] == ["started\n", "finished\n"]


async def _fetched(http, gw, location: str):
    try:
        async with http.get(f"http://127.0.0.1:{gw.port}{location}") as r:
            found = r.status, await r.json(), r.headers
    except aiohttp.ClientError:
        return None  # the arbiter is starting new workers
    return found if found[0] == 200 else None


# -- retention ----------------------------------------------------------------------------------------


async def test_what_is_over_the_limits_is_dropped_and_said(start_gateway, http):
    gw = await start_gateway("--execution-bytes", "100000")
    async with http.get(f"{gw.url}/api/kernels") as r:
        [kernel] = await r.json()
    old = await run(http, gw, kernel["id"], "print('old')")
    flood = await run(http, gw, kernel["id"], "for i in range(200):\n    print('x' * 1000, flush=True)")
    assert flood["status"] == "ok"
    dropped = flood["dropped"]
    assert dropped["outputs"] > 0 and dropped["bytes"] > 0
    assert len(flood["outputs"]) + dropped["outputs"] == 200 and flood["outputs"][-1]["text"] == "x" * 1000 + "\n"
    async with http.get(f"http://127.0.0.1:{gw.port}{old['request_url']}") as r:
        assert r.status == 404 and "holds at most 100000 bytes" in (await r.json())["message"]


async def test_results_are_kept_for_their_age_only(start_gateway, http):
    gw = await start_gateway("--execution-age", "1")
    async with http.get(f"{gw.url}/api/kernels") as r:
        [kernel] = await r.json()
    result = await run(http, gw, kernel["id"], "1")

    async def gone():
        async with http.get(f"http://127.0.0.1:{gw.port}{result['request_url']}") as r:
            return r.status == 404 and "its result was kept 1 s" in (await r.json())["message"]

    await eventually(gone)


async def test_a_flood_streams_whole_while_the_gateway_answers(gateway, http, kernel):
    lines = 20000
    code = f"for i in range({lines}):\n    print(i)"
    async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/execute", json={"code": code},
                         headers=NDJSON) as r:
        first = await r.content.readline()
        async with http.get(f"{gateway.url}/api/health") as health:  # the control path is not starved
            assert health.status == 200
        streamed = [json.loads(first)] + [json.loads(line) async for line in r.content]
    result = streamed[-1]
    assert result["status"] == "ok"
    text = "".join(o["text"] for o in streamed[:-1])
    assert text == "".join(f"{i}\n" for i in range(lines))
    assert "".join(o["text"] for o in result["outputs"]) == text


async def test_a_kernel_shut_down_takes_its_executions_with_it(gateway, http, kernel):
    _, _, location = await post_execute(http, gateway, kernel["id"], {"code": "import time\ntime.sleep(600)"})
    async with http.delete(f"{gateway.url}/api/kernels/{kernel['id']}") as r:
        assert r.status == 204
    async with http.get(f"http://127.0.0.1:{gateway.port}{location}") as r:
        assert r.status == 404 and "Kernel does not exist" in (await r.json())["message"]
