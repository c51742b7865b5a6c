"""The websocket, in both protocols, against real ipykernel kernels on the shared gateway."""

from __future__ import annotations

import asyncio
import json
import struct
import sys

import pytest
import zmq.asyncio

from kernels_gateway.kernel_protocol import subscriber

from .conftest import HERE, write_kernelspec
from .kernel_client import KernelSocket, encode_v1

both_protocols = pytest.mark.parametrize("v1", [False, True], ids=["legacy", "v1"])

ECHO_TARGET = """
from comm import get_comm_manager

def _echo_target(comm, open_msg):
    @comm.on_msg
    def _echo(msg):
        comm.send({"echo": msg["content"]["data"], "sizes": [len(b) for b in msg["buffers"]]},
                  buffers=[bytes(b)[::-1] for b in msg["buffers"]])

get_comm_manager().register_target("echo", _echo_target)
"""


@both_protocols
async def test_execute_with_output(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    reply, stdout = await sock.execute("for i in range(3): print('line', i)")
    assert reply["header"]["msg_type"] == "execute_reply"
    assert reply["content"]["status"] == "ok"
    assert stdout == "line 0\nline 1\nline 2\n"


@both_protocols
async def test_first_output_of_a_fresh_connection_arrives(kernel, connect, v1):
    """The nudge: a websocket's iopub subscription is live before its first message is relayed."""
    for _ in range(3):
        sock = await connect(kernel["id"], v1=v1)
        _, stdout = await sock.execute("print('first')")
        assert stdout == "first\n"
        await sock.close()


async def test_a_kernel_that_sends_no_welcome_still_loses_no_first_output(start_gateway, http, tmp_path):
    """Without iopub_welcome, the supervisor and each worker prove their subscriptions with the status
    messages of kernel_info requests, asked again until one comes through."""
    argv = [sys.executable, str(HERE / "kernels" / "unwelcoming.py"), "-f", "{connection_file}"]
    write_kernelspec(tmp_path, "unwelcoming", argv)
    gw = await start_gateway("--initial-kernels", "0", env={"JUPYTER_PATH": str(tmp_path)})
    for _ in range(2):
        async with http.post(f"{gw.url}/api/kernels", json={"name": "unwelcoming"}) as response:
            assert response.status == 201
            model = await response.json()
        assert model["execution_state"] == "idle"
        for v1 in (False, True):
            sock = await KernelSocket.open(http, gw, model["id"], v1=v1)
            _, stdout = await sock.execute("print('first')")
            assert stdout == "first\n"
            await sock.close()


async def test_the_kernels_welcomes_reach_no_client_and_are_no_activity(gateway, http, kernel, connect):
    """ipykernel greets each new iopub subscription with iopub_welcome, sent to every subscriber: those
    greeting the gateway's own subscriptions mean nothing to clients, and a subscription is no activity."""
    pytest.importorskip("ipykernel", minversion="7")  # the first version that greets subscribers
    sock = await connect(kernel["id"])
    await sock.execute("1")
    await asyncio.sleep(0.5)  # the supervisor has seen the cell's last status
    async with http.get(f"{gateway.url}/api/kernels/{kernel['id']}") as response:
        before = (await response.json())["last_activity"]
    info = json.loads((gateway.runtime_dir / f"kernel-{kernel['id']}.json").read_text())
    context = zmq.asyncio.Context()
    sub = subscriber(context, info)  # greeted at once: it has a topic of its own, as the gateway's do
    try:
        async with asyncio.timeout(10):
            while b'"iopub_welcome"' not in b"".join(await sub.recv_multipart()):
                pass
    finally:
        context.destroy(linger=0)
    await asyncio.sleep(0.5)  # time for the gateway's own subscribers to hear the same welcome
    async with http.get(f"{gateway.url}/api/kernels/{kernel['id']}") as response:
        assert (await response.json())["last_activity"] == before
    _, stdout = await sock.execute("print('after')")  # relayed after the welcome, had it been relayed
    assert stdout == "after\n"
    assert "iopub_welcome" not in {m["header"]["msg_type"] for m in sock.pending}


async def test_legacy_messages_carry_jupyter_server_fields(kernel, connect):
    sock = await connect(kernel["id"])
    request = sock.message("kernel_info_request", {})
    reply, _ = await sock.reply_to(request)
    assert reply["msg_type"] == "kernel_info_reply" == reply["header"]["msg_type"]
    assert reply["msg_id"] == reply["header"]["msg_id"]
    assert reply["channel"] == "shell"
    assert reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
    assert reply["content"]["implementation"] == "ipython"


@both_protocols
async def test_comm_round_trip_with_binary_buffers(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    reply, _ = await sock.execute(ECHO_TARGET)
    assert reply["content"]["status"] == "ok", reply["content"]
    open_msg = sock.message("comm_open", {"comm_id": "c1", "target_name": "echo", "data": {}})
    await sock.send(open_msg)
    payload = [bytes(range(256)) * 4, b"\x00\xff tail"]
    request = sock.message("comm_msg", {"comm_id": "c1", "data": {"hello": "kernel"}}, buffers=payload)
    _, iopub = await sock.reply_to(request, replied=False)
    echoes = [m for m in iopub if m["header"]["msg_type"] == "comm_msg"]
    assert len(echoes) == 1
    echo = echoes[0]
    assert echo["content"]["data"] == {"echo": {"hello": "kernel"}, "sizes": [1024, 7]}
    assert [bytes(b) for b in echo["buffers"]] == [b[::-1] for b in payload]


@both_protocols
async def test_control_channel(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    reply, _ = await sock.reply_to(sock.message("kernel_info_request", {}, channel="control"))
    assert reply["channel"] == "control"
    assert reply["header"]["msg_type"] == "kernel_info_reply"


@both_protocols
async def test_stdin_round_trip(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    request = sock.message("execute_request", {"code": "print('got', input('name? '))", "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": True})
    await sock.send(request)
    async with asyncio.timeout(30):
        while True:
            msg = await sock.receive()
            if msg["channel"] == "stdin":
                break
    assert msg["header"]["msg_type"] == "input_request"
    assert msg["content"]["prompt"] == "name? "
    answer = sock.message("input_reply", {"value": "ada"}, channel="stdin")
    answer["parent_header"] = msg["header"]
    await sock.send(answer)
    async with asyncio.timeout(30):
        while True:
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "stream":
                assert msg["content"]["text"] == "got ada\n"
                break


@both_protocols
async def test_interrupt_a_running_sleep(gateway, http, kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    code = "print('sleeping', flush=True); import time; time.sleep(60)"
    # After an error, ipykernel aborts the requests that reach its shell before its own "stop aborting"
    # marker does: the next cell, sent the moment this one's error arrives, can be one of them when the
    # kernel gets little CPU. A client that wants that cell run says so with stop_on_error.
    request = sock.message("execute_request", {"code": code, "silent": False, "store_history": False,
                                               "user_expressions": {}, "allow_stdin": False, "stop_on_error": False})
    await sock.send(request)
    async with asyncio.timeout(30):
        while True:  # interrupt only once the sleep is surely running
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "stream":
                break
        async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/interrupt") as r:
            assert r.status == 204
        while True:
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "execute_reply":
                break
    assert msg["parent_header"]["msg_id"] == request["header"]["msg_id"]
    assert msg["content"]["status"] == "error"
    assert msg["content"]["ename"] == "KeyboardInterrupt"
    reply, stdout = await sock.execute("print('still here')")
    assert (stdout, reply["content"]["status"]) == ("still here\n", "ok"), reply["content"]


async def test_restart_clears_state_and_keeps_the_websocket(gateway, http, kernel, connect):
    sock = await connect(kernel["id"])
    await sock.execute("x = 42")
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    async with http.post(f"{gateway.url}/api/kernels/{kernel['id']}/restart") as r:
        assert r.status == 200
        model = await r.json()
    assert model["id"] == kernel["id"]
    assert model["execution_state"] == "idle"
    async with asyncio.timeout(30):
        while True:  # the same websocket reaches the restarted kernel
            reply, _ = await sock.execute("print(x)")
            if reply["content"].get("ename") == "NameError":
                break
            await asyncio.sleep(0.1)


@both_protocols
async def test_bad_frames_are_dropped_and_the_connection_lives_on(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    good = sock.message("kernel_info_request", {})
    bad_frames = [
        "not json",
        "[1, 2, 3]",
        json.dumps({"header": {}, "content": {}}),  # no channel (shell), but no msg_id
        json.dumps({**good, "channel": "nowhere"}),
        json.dumps({**good, "channel": "iopub"}),
        json.dumps({**good, "header": "string"}),
        json.dumps({**good, "header": {}}),
        json.dumps({**good, "content": [1]}),
        b"",
        b"\x00\x00",
        struct.pack("<Q", 2**40),
        struct.pack("<QQQ", 2, 24, 10**9),
        struct.pack("!II", 7, 8),
        struct.pack("!II", 1, 8) + b"{bad",
        encode_v1({**good, "channel": "nowhere"}),
        encode_v1(good)[:40],
    ]
    for frame in bad_frames:
        await sock.send_frame(frame)
    # A correctly framed message with a forged signature never reaches ZMQ unsigned: the gateway signs it.
    reply, _ = await sock.reply_to(sock.message("kernel_info_request", {}))
    assert reply["header"]["msg_type"] == "kernel_info_reply"
    _, stdout = await sock.execute("print('alive')")
    assert stdout == "alive\n"


async def test_two_protocols_on_one_kernel_see_each_others_output(kernel, connect):
    legacy = await connect(kernel["id"])
    v1 = await connect(kernel["id"], v1=True)
    _, stdout = await legacy.execute("print('shared')")
    assert stdout == "shared\n"
    async with asyncio.timeout(10):
        while True:
            msg = await v1.receive()
            if msg["header"]["msg_type"] == "stream":
                assert msg["content"]["text"] == "shared\n"
                break


TWENTY_MIB = """
import sys
for i in range(20):
    sys.stdout.write(chr(65 + i) * (1 << 20))
    sys.stdout.flush()
"""


@both_protocols
async def test_twenty_mib_of_output_all_arrive(kernel, connect, v1):
    sock = await connect(kernel["id"], v1=v1)
    reply, stdout = await sock.execute(TWENTY_MIB, timeout=120)
    assert reply["content"]["status"] == "ok"
    assert len(stdout) == 20 << 20
    assert stdout == "".join(chr(65 + i) * (1 << 20) for i in range(20))
