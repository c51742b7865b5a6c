"""Websocket frames to and from the parts of a kernel message, in both protocols Jupyter clients speak.

A kernel message on ZMQ, after the `<IDS|MSG>` delimiter and the signature, is
`header, parent_header, metadata, content, *buffers`: JSON parts, then raw buffers.

`v1.kernel.websocket.jupyter.org` (binary frames; all integers u64 little endian)::

    | n | offset_0 ... offset_{n-1} | channel | header | parent | metadata | content | buffer... |
    offset_0 = 8 * (n + 1) is where the channel starts; offset_{i+1} is where part i ends.

Legacy, no subprotocol: a text frame holding one JSON object with a `channel` key (none: shell), or, when the
message has buffers, a binary frame (all integers u32 big endian; accepted in a text frame too, since
that is how Jupyter Server's gateway client relays it)::

    | nbufs | offset_0 ... offset_{nbufs-1} | JSON object | buffer... |
    offset_0 = 4 * (nbufs + 1) is where the JSON starts; the last part runs to the frame's end.

Decoders check every count and offset against the frame's length before they slice; whatever does
not fit raises `FrameError`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ..kernel_protocol import CHANNELS

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MESSAGE_PARTS = 4  # header, parent_header, metadata, content


class FrameError(ValueError):
    """A frame that cannot be a kernel message."""


def _offsets(frame: bytes, word: struct.Struct, count_format: str) -> list[int]:
    if len(frame) < word.size:
        raise FrameError("frame too short for its count")
    (count,) = word.unpack_from(frame)
    table_end = word.size * (count + 1)
    if count < 1 or table_end > len(frame):
        raise FrameError(f"frame of {len(frame)} bytes cannot hold {count} offsets")
    offsets = list(struct.unpack_from(count_format % count, frame, word.size))
    if offsets[0] != table_end or any(b < a for a, b in zip(offsets, offsets[1:])) or offsets[-1] > len(frame):
        raise FrameError("offsets out of order or past the frame's end")
    return offsets


def decode_v1(frame: bytes) -> tuple[str, list[bytes]]:
    """A v1 frame as (channel, [header, parent_header, metadata, content, *buffers])."""
    offsets = _offsets(frame, _U64, "<%dQ")
    if len(offsets) < 2 + MESSAGE_PARTS:
        raise FrameError("a v1 frame needs a channel, header, parent_header, metadata and content")
    view = memoryview(frame)
    channel = _channel(bytes(view[offsets[0] : offsets[1]]))
    parts = [bytes(view[a:b]) for a, b in zip(offsets[1:], offsets[2:])]
    return channel, parts


def encode_v1(channel: str, parts: list[bytes]) -> bytes:
    name = channel.encode()
    count = len(parts) + 2
    offsets = [8 * (count + 1), 8 * (count + 1) + len(name)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([struct.pack(f"<{count + 1}Q", count, *offsets), name, *parts])


def decode_legacy(frame: str | bytes) -> tuple[str, dict[str, Any]]:
    """A legacy frame as (channel, message dict with `buffers`)."""
    if isinstance(frame, str) and frame.startswith("\0"):
        # Jupyter Server's gateway client (tornado) relays a browser's binary frame with the text opcode;
        # one that was valid UTF-8 arrives as text, and its bytes are the binary layout.
        frame = frame.encode()
    if isinstance(frame, str):
        message, buffers = _json_object(frame), []
    else:
        offsets = _offsets(frame, _U32, "!%dI")
        ends = offsets[1:] + [len(frame)]
        message = _json_object(frame[offsets[0] : ends[0]])
        buffers = [frame[a:b] for a, b in zip(offsets[1:], ends[1:])]
    # A message without a channel is meant for shell, as Jupyter Server and Kernel Gateway take it:
    # Jupyter Server's own gateway client (nbclient, papermill, Voila through it) sends them so.
    channel = message.pop("channel", None)
    if channel is None:
        channel = "shell"
    if not isinstance(channel, str):
        raise FrameError("channel must be a string")
    for key in ("header", "parent_header", "metadata", "content"):
        if message.get(key) is None:
            message[key] = {}
        if not isinstance(message[key], dict):
            raise FrameError(f"{key} must be an object")
    if not message["header"].get("msg_type") or not message["header"].get("msg_id"):
        raise FrameError("header needs msg_id and msg_type")
    message["buffers"] = buffers
    return _channel(channel.encode()), message


def encode_legacy(channel: str, parts: list[bytes]) -> tuple[bytes, bool]:
    """Jupyter Server's legacy layout as (payload, is_binary), spliced from the kernel's own JSON parts
    rather than re-encoded: only the small header is parsed, for the top-level msg_id and msg_type."""
    header = json.loads(parts[0])
    head = b"".join([
        b'{"header":', parts[0],
        b',"msg_id":', json.dumps(header.get("msg_id")).encode(),
        b',"msg_type":', json.dumps(header.get("msg_type")).encode(),
        b',"parent_header":', parts[1], b',"metadata":', parts[2], b',"content":', parts[3],
        b',"channel":"', channel.encode(), b'"',
    ])
    buffers = parts[MESSAGE_PARTS:]
    if not buffers:
        return head + b',"buffers":[]}', False
    blobs = [head + b"}", *buffers]
    offsets = [4 * (len(blobs) + 1)]
    for blob in blobs[:-1]:
        offsets.append(offsets[-1] + len(blob))
    return b"".join([struct.pack(f"!{len(blobs) + 1}I", len(blobs), *offsets), *blobs]), True


def _channel(name: bytes) -> str:
    channel = name.decode("ascii", "replace")
    if channel not in CHANNELS:
        raise FrameError(f"unknown channel {channel[:20]!r}")
    return channel


def _json_object(data: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FrameError(f"not JSON: {str(e)[:100]}") from None
    if not isinstance(value, dict):
        raise FrameError("not a JSON object")
    return value


_U64 = struct.Struct("<Q")
_U32 = struct.Struct("!I")
