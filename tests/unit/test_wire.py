"""The supervisor's framing, and its server's answers to broken peers."""

from __future__ import annotations

import asyncio
import struct

import pytest

from kernels_gateway.supervisor import wire


def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_round_trip():
    body = {"id": 1, "op": "get", "args": {"kernel_id": "k"}}
    reader = reader_of(wire.encode(body) + wire.encode({"id": 2}))
    assert await wire.read_frame(reader) == body
    assert await wire.read_frame(reader) == {"id": 2}
    assert await wire.read_frame(reader) is None


@pytest.mark.parametrize("data, error", [
    (struct.pack("!I", wire.MAX_FRAME + 1), "exceeds"),
    (b"\x00\x00", "inside a length prefix"),
    (struct.pack("!I", 10) + b"{}", "inside a frame"),
    (struct.pack("!I", 3) + b"{x}", "not JSON"),
    (struct.pack("!I", 2) + b"\xff\xfe", "not JSON"),
    (struct.pack("!I", 2) + b"[]", "not a JSON object"),
])
async def test_broken_frames(data, error):
    with pytest.raises(wire.WireError, match=error):
        await wire.read_frame(reader_of(data))


def test_oversized_bodies_are_not_sent():
    with pytest.raises(wire.WireError):
        wire.encode({"blob": "x" * wire.MAX_FRAME})
