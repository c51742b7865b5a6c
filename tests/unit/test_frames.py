"""The websocket codecs, including frames built to make a careless decoder read past the end."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels_gateway.gateway.frames import CHANNELS, FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1

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


def test_legacy_frames_without_a_channel_are_for_shell():
    header = {"msg_id": "a", "msg_type": "kernel_info_request"}
    for frame in (json.dumps({"header": header}), json.dumps({"header": header, "channel": None})):
        channel, msg = decode_legacy(frame)
        assert channel == "shell" and msg["header"] == header and "channel" not in msg


def test_legacy_accepts_null_parent_header():
    channel, msg = decode_legacy(json.dumps({
        "channel": "shell", "header": {"msg_id": "a", "msg_type": "b"}, "parent_header": None,
    }))
    assert msg["parent_header"] == {} and msg["metadata"] == {} and msg["content"] == {}


# -- properties, over frames hypothesis makes up -------------------------------------------------

parts_lists = st.lists(st.binary(max_size=40), min_size=4, max_size=8)


@given(st.binary(max_size=400) | st.text(max_size=200))
def test_decoders_refuse_with_frame_error_only(data):
    for decode in (decode_v1, decode_legacy) if isinstance(data, bytes) else (decode_legacy,):
        try:
            decode(data)
        except FrameError:
            pass


@given(st.sampled_from(sorted(CHANNELS - {"iopub"})), parts_lists)
def test_v1_round_trip(channel, parts):
    assert decode_v1(encode_v1(channel, parts)) == (channel, parts)


@given(parts_lists, st.data())
def test_a_v1_frame_cut_short_is_refused(parts, data):
    frame = encode_v1("shell", parts)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(FrameError):
        decode_v1(frame[:cut])


@given(parts_lists, st.data())
def test_a_v1_frame_with_a_forged_word_is_refused_or_read_exactly(parts, data):
    """Overwrite the count or one offset: the decoder refuses, or what it returns fills the frame exactly,
    never a part cut short by slicing past the end."""
    frame = bytearray(encode_v1("shell", parts))
    words = 1 + len(parts) + 2
    at = 8 * data.draw(st.integers(0, words - 1))
    frame[at : at + 8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    try:
        channel, decoded = decode_v1(bytes(frame))
    except FrameError:
        return
    (count,) = struct.unpack_from("<Q", frame)
    assert 8 * (count + 1) + len(channel) + sum(map(len, decoded)) <= len(frame)
    assert all(len(part) <= len(frame) for part in decoded)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.data())
def test_a_legacy_frame_with_a_forged_word_is_refused_or_read_exactly(buffers, data):
    payload, _ = encode_legacy("shell", PARTS + buffers)
    frame = bytearray(payload)
    (count,) = struct.unpack_from("!I", frame)
    at = 4 * data.draw(st.integers(0, count))
    frame[at : at + 4] = struct.pack("!I", data.draw(st.integers(0, 2**32 - 1)))
    try:
        _, msg = decode_legacy(bytes(frame))
    except FrameError:
        return
    (count,) = struct.unpack_from("!I", frame)
    assert 4 * (count + 1) + sum(map(len, msg["buffers"])) < len(frame)
