"""A small websocket kernel client for the tests, written from the protocol descriptions rather than from
the gateway's own codec, so that a mistake there cannot hide behind the same mistake here."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from datetime import datetime, timezone

import aiohttp

V1 = "v1.kernel.websocket.jupyter.org"


def encode_v1(msg: dict) -> bytes:
    parts = [msg["channel"].encode()] + [
        json.dumps(msg[key]).encode() for key in ("header", "parent_header", "metadata", "content")
    ] + [bytes(b) for b in msg.get("buffers", [])]
    count = len(parts) + 1
    offsets = [8 * (count + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack("<Q", count) + b"".join(struct.pack("<Q", o) for o in offsets) + b"".join(parts)


def decode_v1(data: bytes) -> dict:
    count = struct.unpack_from("<Q", data)[0]
    offsets = [struct.unpack_from("<Q", data, 8 * (i + 1))[0] for i in range(count)]
    parts = [data[a:b] for a, b in zip(offsets, offsets[1:])]
    msg = {"channel": parts[0].decode()}
    for key, part in zip(("header", "parent_header", "metadata", "content"), parts[1:5]):
        msg[key] = json.loads(part)
    msg["buffers"] = parts[5:]
    return msg


def encode_legacy_binary(msg: dict) -> bytes:
    msg = dict(msg)
    buffers = [bytes(b) for b in msg.pop("buffers")]
    blobs = [json.dumps(msg).encode(), *buffers]
    offsets = [4 * (len(blobs) + 1)]
    for blob in blobs[:-1]:
        offsets.append(offsets[-1] + len(blob))
    return struct.pack(f"!{len(blobs) + 1}I", len(blobs), *offsets) + b"".join(blobs)


def decode_legacy_binary(data: bytes) -> dict:
    count = struct.unpack_from("!I", data)[0]
    offsets = list(struct.unpack_from(f"!{count}I", data, 4)) + [len(data)]
    msg = json.loads(data[offsets[0] : offsets[1]])
    msg["buffers"] = [data[a:b] for a, b in zip(offsets[1:], offsets[2:])]
    return msg


class KernelSocket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, v1: bool, session_id: str):
        self.ws, self.v1, self.session_id = ws, v1, session_id
        self.pending: list[dict] = []

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, gw, kernel_id: str, v1: bool = False,
                   session_id: str | None = None, **kw) -> "KernelSocket":
        session_id = session_id or uuid.uuid4().hex
        ws = await http.ws_connect(
            f"{gw.ws_url}/api/kernels/{kernel_id}/channels?session_id={session_id}",
            protocols=(V1,) if v1 else (), **kw,
        )
        assert (ws.protocol == V1) == v1
        return cls(ws, v1, session_id)

    def message(self, msg_type: str, content: dict, channel: str = "shell", buffers=()) -> dict:
        header = {
            "msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": self.session_id,
            "username": "test", "version": "5.3", "date": datetime.now(timezone.utc).isoformat(),
        }
        return {"channel": channel, "header": header, "parent_header": {}, "metadata": {},
                "content": content, "buffers": list(buffers)}

    async def send(self, msg: dict) -> None:
        if self.v1:
            await self.ws.send_bytes(encode_v1(msg))
        elif msg.get("buffers"):
            await self.ws.send_bytes(encode_legacy_binary(msg))
        else:
            await self.ws.send_str(json.dumps({k: v for k, v in msg.items() if k != "buffers"}))

    async def send_frame(self, frame: str | bytes) -> None:
        """A frame as it is, however malformed: text for str, binary for bytes."""
        if isinstance(frame, str):
            await self.ws.send_str(frame)
        else:
            await self.ws.send_bytes(frame)

    async def receive(self, timeout: float = 30) -> dict:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type == aiohttp.WSMsgType.TEXT:
            assert not self.v1, "text frame on the v1 protocol"
            msg = json.loads(frame.data)
            msg["buffers"] = []
            return msg
        if frame.type == aiohttp.WSMsgType.BINARY:
            return decode_v1(frame.data) if self.v1 else decode_legacy_binary(frame.data)
        raise ConnectionError(f"websocket ended: {frame.type} {frame.data} {frame.extra}")

    async def reply_to(self, request: dict, timeout: float = 30, replied: bool = True) -> tuple[dict, list[dict]]:
        """Send `request`, then collect its iopub messages up to `idle` and its reply (if it has one)."""
        await self.send(request)
        msg_id = request["header"]["msg_id"]
        reply, iopub, idle = None if replied else {}, [], False
        async with asyncio.timeout(timeout):
            while reply is None or not idle:
                msg = await self.receive()
                if msg["parent_header"].get("msg_id") != msg_id:
                    self.pending.append(msg)
                    continue
                if msg["channel"] == "iopub":
                    iopub.append(msg)
                    idle = idle or (msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")
                elif msg["channel"] == request["channel"]:
                    reply = msg
        return reply, iopub

    async def execute(self, code: str, timeout: float = 30) -> tuple[dict, str]:
        """Run code; the execute_reply and everything printed to stdout."""
        request = self.message("execute_request", {"code": code, "silent": False, "store_history": False,
                                                   "user_expressions": {}, "allow_stdin": False})
        reply, iopub = await self.reply_to(request, timeout)
        stdout = "".join(m["content"]["text"] for m in iopub if m["header"]["msg_type"] == "stream")
        return reply, stdout

    async def close(self) -> None:
        await self.ws.close()
