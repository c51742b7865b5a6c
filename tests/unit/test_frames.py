"""The websocket codecs, including frames built to make a careless decoder read past the end."""

from __future__ import annotations

import json
import struct

import pytest

from kernels_gateway.gateway.frames import FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1

HEADER = json.dumps({"msg_id": "m1", "msg_type": "execute_request", "session": "s"}).encode()
PARTS = [HEADER, b"{}", b"{}", b'{"code": "1"}']


def test_v1_round_trip_with_buffers():
    parts = PARTS + [b"\x00\x01", b""]
    assert decode_v1(encode_v1("shell", parts)) == ("shell", parts)


def test_legacy_text_is_spliced_json():
    payload, binary = encode_legacy("iopub", PARTS)
    assert not binary
    msg = json.loads(payload)
    assert msg["msg_id"] == "m1" and msg["msg_type"] == "execute_request"
    assert msg["channel"] == "iopub" and msg["buffers"] == [] and msg["content"] == {"code": "1"}


def test_legacy_binary_round_trip():
    payload, binary = encode_legacy("shell", PARTS + [b"abc", b"\xff"])
    assert binary
    channel, msg = decode_legacy(payload)
    assert channel == "shell"
    assert msg["buffers"] == [b"abc", b"\xff"]
    assert msg["header"]["msg_id"] == "m1"


@pytest.mark.parametrize("frame", [
    b"",
    b"\x01\x00",
    struct.pack("<Q", 2**62),
    struct.pack("<QQQ", 2, 24, 25) + b"s",  # too few parts
    struct.pack("<QQQQQQQ", 6, 56, 61, 60, 60, 60, 60) + b"shell",  # offsets going backwards
    struct.pack("<QQQQQQQ", 6, 56, 61, 62, 63, 64, 10**6) + b"shell{}{}{}",  # past the end
    struct.pack("<QQQQQQQ", 6, 0, 61, 62, 63, 64, 65) + b"shell{}{}{}{}",  # first offset inside the table
    encode_v1("nowhere", PARTS),
])
def test_v1_rejects_frames_that_do_not_fit(frame):
    with pytest.raises(FrameError):
        decode_v1(frame)


@pytest.mark.parametrize("frame", [
    "nope", "[]", "{}", '{"channel": 1}', '{"channel": "shell", "header": []}',
    '{"channel": "shell", "header": {}}', '{"channel": "bogus", "header": {"msg_id": "a", "msg_type": "b"}}',
    b"", b"\x00\x00\x00\x05", struct.pack("!II", 1, 4), struct.pack("!II", 1, 9) + b"{}",
    struct.pack("!III", 2, 12, 11) + b"{}",
])
def test_legacy_rejects_malformed_frames(frame):
    with pytest.raises(FrameError):
        decode_legacy(frame)


def test_legacy_accepts_null_parent_header():
    channel, msg = decode_legacy(json.dumps({
        "channel": "shell", "header": {"msg_id": "a", "msg_type": "b"}, "parent_header": None,
    }))
    assert msg["parent_header"] == {} and msg["metadata"] == {} and msg["content"] == {}
