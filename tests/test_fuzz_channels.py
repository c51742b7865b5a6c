"""A hypothesis-driven fuzzer for the websocket, in both protocols, against a real kernel.

It sends malformed frames of every kind: text that is not JSON, JSON of the wrong types, unknown and
forbidden channels, messages carrying forged signatures and delimiters, legacy and v1 binary frames with
counts and offsets that do not fit, truncated frames and frames claiming far more than they hold. After
every batch the same websocket must still reach the kernel, and at the end the worker must never have
been restarted and the dropped frames must be in the log.

The gateway signs whatever it sends to the kernel with the kernel's key, so a signature a client puts in
a message is only data: the kernel never sees it as one.
"""

from __future__ import annotations

import asyncio
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .kernel_client import encode_v1

# Messages the kernel may receive without being stopped, restarted, or made to run code.
HARMLESS = ["kernel_info_request", "comm_info_request", "is_complete_request", "history_request",
            "comm_open", "comm_msg", "comm_close", "input_reply", "connect_request"]
DELIMITER = b"<IDS|MSG>"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
channels = st.sampled_from(["shell", "control", "stdin", "iopub", "", "nowhere", "SHELL", "shell\x00"]) | json_values
headers = st.fixed_dictionaries(
    {"msg_id": st.text(max_size=12) | json_values, "msg_type": st.sampled_from(HARMLESS) | st.text(max_size=20)},
    optional={"session": st.text(max_size=12), "username": json_values, "version": st.text(max_size=5),
              "date": json_values},
)
forged = st.sampled_from([DELIMITER, b"0" * 64, b"", b"\xff" * 32]) | st.binary(max_size=64)
messages = st.fixed_dictionaries(
    {"channel": channels, "header": headers | json_values},
    optional={"parent_header": json_values, "metadata": json_values, "content": json_values,
              "signature": st.text(alphabet="0123456789abcdef", max_size=64), "msg_id": json_values,
              "buffers": json_values},
)


def legacy_binary(message: dict, buffers: list[bytes]) -> bytes:
    blobs = [json.dumps(message).encode(), *buffers]
    offsets = [4 * (len(blobs) + 1)]
    for blob in blobs[:-1]:
        offsets.append(offsets[-1] + len(blob))
    return struct.pack(f"!{len(blobs) + 1}I", len(blobs), *offsets) + b"".join(blobs)


def v1_binary(message: dict, buffers: list[bytes]) -> bytes:
    parts = {key: message.get(key, {}) for key in ("header", "parent_header", "metadata", "content")}
    channel = message["channel"] if isinstance(message["channel"], str) else "shell"
    return encode_v1({"channel": channel, **parts, "buffers": buffers})


@st.composite
def binary_frames(draw) -> bytes:
    """A well-formed binary frame of either protocol, then maybe broken: cut short, its count or an
    offset overwritten, or padded."""
    encode = draw(st.sampled_from([legacy_binary, v1_binary]))
    frame = bytearray(encode(draw(messages), draw(st.lists(forged, max_size=3))))
    damage = draw(st.sampled_from(["none", "truncate", "count", "offset", "pad"]))
    word = 4 if encode is legacy_binary else 8
    if damage == "truncate":
        frame = frame[: draw(st.integers(0, len(frame)))]
    elif damage in ("count", "offset"):
        at = 0 if damage == "count" else word * draw(st.integers(1, max(1, len(frame) // word - 1)))
        value = draw(st.integers(0, 2 ** (8 * word) - 1) | st.sampled_from([0, 1, 2 ** (8 * word) - 1]))
        packed = value.to_bytes(word, "big" if word == 4 else "little")
        frame[at : at + word] = packed[: max(0, len(frame) - at)]
    elif damage == "pad":
        frame += b"\0" * draw(st.integers(0, 1 << 20))
    return bytes(frame)


text_frames = (st.text(max_size=100) | messages.map(json.dumps)
               | messages.map(json.dumps).flatmap(lambda s: st.integers(0, len(s)).map(lambda n: s[:n])))
frames = st.lists(text_frames | binary_frames() | st.binary(max_size=100), min_size=1, max_size=6)


async def fuzz(sock, batches: list[str | bytes]) -> None:
    async with asyncio.timeout(30):
        for frame in batches:
            await sock.send_frame(frame)
        # The same websocket still reaches the kernel.
        reply, _ = await sock.reply_to(sock.message("kernel_info_request", {}))
    assert reply["header"]["msg_type"] == "kernel_info_reply"
    assert not sock.ws.closed


@pytest.fixture(params=[False, True], ids=["legacy", "v1"])
async def sock(request, kernel, connect):
    """One websocket for all of a test's examples: it must survive them all."""
    return await connect(kernel["id"], v1=request.param)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=frames)
async def test_the_websocket_survives_fuzzing(sock, batches):
    await fuzz(sock, batches)


async def test_dropped_frames_are_logged_and_the_worker_never_restarted(gateway, kernel, connect):
    sock = await connect(kernel["id"])
    for _ in range(20):
        await sock.ws.send_str("not json")
    _, stdout = await sock.execute("print('still here')")
    assert stdout == "still here\n"
    assert "websocket frame dropped: not JSON" in gateway.log()
    assert "exited with code" not in gateway.log()  # what the arbiter says when it restarts a worker
    # The first few drops are logged one by one, and a connection that dropped more says so as it closes.
    await sock.close()
    async with asyncio.timeout(10):
        while "20 websocket frames dropped on one connection" not in gateway.log():
            await asyncio.sleep(0.05)


async def test_deeply_nested_json_is_dropped_not_fatal(kernel, connect):
    sock = await connect(kernel["id"])
    await sock.ws.send_str("[" * 100_000)
    await sock.ws.send_str(json.dumps({"channel": "shell", "header": {"msg_id": "a", "msg_type": "b"}})[:-1]
                           + ', "content": ' + "[" * 50_000 + "]" * 50_000 + "}")
    reply, _ = await sock.reply_to(sock.message("kernel_info_request", {}))
    assert reply["header"]["msg_type"] == "kernel_info_reply"
    assert not sock.ws.closed
