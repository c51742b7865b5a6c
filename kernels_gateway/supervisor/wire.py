"""The supervisor's control protocol: length-prefixed JSON over a Unix stream socket.

Every frame, in both directions::

    +--------------------+----------------------------------------+
    | length: u32, big   | body: one JSON object, UTF-8, `length` |
    | endian, <= MAX     | bytes                                  |
    +--------------------+----------------------------------------+

Bodies::

    request  {"id": 7, "op": "get", "args": {"kernel_id": "..."}}
    reply    {"id": 7, "result": {...}}
             {"id": 7, "error": {"code": "kernel_not_found", "message": "..."}}
    event    {"event": "kernel_state", "data": {...}}      (no id: pushed to subscribers)

A frame that is too long, not JSON or not an object raises `WireError`, the one error type of this
module; the reader stops at the length prefix and never buffers an oversized body. Requests are held
to MAX_FRAME; replies may be larger (REPLY_LIMIT), since replayed kernel output travels in them and the
gateway trusts its supervisor. Bytes (kernel message parts) travel base64-encoded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

MAX_FRAME = 1 << 20
REPLY_LIMIT = 64 << 20
_LENGTH = struct.Struct("!I")


class WireError(Exception):
    """A frame that breaks the protocol; the connection that sent it is closed."""


def encode(body: dict[str, Any], limit: int = MAX_FRAME) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > limit:
        raise WireError(f"frame of {len(data)} bytes exceeds the {limit} byte limit")
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """The next frame's body, or None at a clean end of stream."""
    try:
        prefix = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise WireError("stream ended inside a length prefix") from None
        return None
    (length,) = _LENGTH.unpack(prefix)
    if length > limit:
        raise WireError(f"frame of {length} bytes exceeds the {limit} byte limit")
    try:
        data = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise WireError("stream ended inside a frame") from None
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"frame is not JSON: {e}") from None
    except RecursionError:
        raise WireError("frame is nested too deeply") from None
    if not isinstance(body, dict):
        raise WireError("frame is not a JSON object")
    return body


async def write_frame(writer: asyncio.StreamWriter, body: dict[str, Any], limit: int = MAX_FRAME) -> None:
    writer.write(encode(body, limit))
    await writer.drain()


def pack_parts(parts: list[bytes]) -> list[str]:
    return [base64.b64encode(part).decode() for part in parts]


def unpack_parts(packed: list[str]) -> list[bytes]:
    return [base64.b64decode(part) for part in packed]


# How long the supervisor may wait, answering a returning websocket's connection_opened, for its own
# iopub socket to hear the message the client last read: the web half's deadline allows for it.
FIND_TIMEOUT = 5.0
