"""The clients every workload drives: one over a gateway's websocket (either protocol), one over raw ZMQ
with jupyter_client. Both answer the same few questions, so a workload runs unchanged against any target.

A request is done when its reply has arrived on its own channel and, unless told otherwise, the kernel's
`idle` status for it on iopub: what a notebook waits for before it calls a cell finished. Every wait has
a timeout; what arrived before it is still reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import aiohttp
from jupyter_client import AsyncKernelClient

V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Outcome:
    seconds: float  # from sending the request to having its reply (and its idle, when waited for)
    stdout_bytes: int = 0  # UTF-8 bytes of stream text that arrived for the request
    replied: bool = False
    complete: bool = False  # everything waited for arrived before the timeout


def execute_content(code: str) -> dict:
    return {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}


class KernelRequests:
    """The questions every workload asks, in terms of each client's own `request`."""

    async def request(self, msg_type: str, content: dict, channel: str = "shell", idle: bool = True,
                      timeout: float = 60.0) -> Outcome:
        raise NotImplementedError

    async def execute(self, code: str, timeout: float = 60.0) -> Outcome:
        return await self.request("execute_request", execute_content(code), timeout=timeout)

    async def kernel_info(self, timeout: float = 60.0) -> Outcome:
        """Until the reply only: a first request need not wait for its iopub."""
        return await self.request("kernel_info_request", {}, idle=False, timeout=timeout)


class WebsocketKernel(KernelRequests):
    """A kernel reached through a gateway's /api/kernels/{id}/channels, in whichever protocol the server
    accepted: v1 when asked for and granted, the legacy JSON protocol otherwise."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.v1 = ws.protocol == V1
        self.session = uuid.uuid4().hex

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, ws_url: str, kernel_id: str, v1: bool) -> "WebsocketKernel":
        ws = await http.ws_connect(
            f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
            protocols=(V1,) if v1 else (), max_msg_size=0, autoping=True,
        )
        return cls(ws)

    @property
    def protocol(self) -> str:
        return "v1" if self.v1 else "legacy"

    async def _send(self, msg_type: str, content: dict, channel: str = "shell") -> str:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "bench",
                  "version": "5.3", "date": datetime.now(timezone.utc).isoformat()}
        if self.v1:
            parts = [channel.encode()] + [json.dumps(p).encode() for p in (header, {}, {}, content)]
            offsets = [8 * (len(parts) + 2)]
            for part in parts:
                offsets.append(offsets[-1] + len(part))
            await self.ws.send_bytes(struct.pack(f"<{len(offsets) + 1}Q", len(offsets), *offsets) + b"".join(parts))
        else:
            await self.ws.send_str(json.dumps({"channel": channel, "header": header, "parent_header": {},
                                               "metadata": {}, "content": content}))
        return msg_id

    async def _receive(self) -> tuple[str, dict, dict, dict]:
        """The next message as (channel, header, parent_header, content)."""
        frame = await self.ws.receive()
        if frame.type == aiohttp.WSMsgType.TEXT:
            msg = json.loads(frame.data)
        elif frame.type == aiohttp.WSMsgType.BINARY and self.v1:
            data = frame.data
            (count,) = struct.unpack_from("<Q", data)
            offsets = struct.unpack_from(f"<{count}Q", data, 8)
            part = lambda i: data[offsets[i] : offsets[i + 1]]  # noqa: E731
            return part(0).decode(), json.loads(part(1)), json.loads(part(2)), json.loads(part(4))
        elif frame.type == aiohttp.WSMsgType.BINARY:  # legacy with buffers: u32 count, offsets, JSON, ...
            (count,) = struct.unpack_from("!I", frame.data)
            offsets = struct.unpack_from(f"!{count}I", frame.data, 4)
            end = offsets[1] if count > 1 else len(frame.data)
            msg = json.loads(frame.data[offsets[0] : end])
        else:
            raise ConnectionError(f"websocket ended: {frame.type.name} {frame.data!r}")
        return msg["channel"], msg["header"], msg["parent_header"], msg["content"]

    async def request(self, msg_type: str, content: dict, channel: str = "shell", idle: bool = True,
                      timeout: float = 60.0) -> Outcome:
        outcome = Outcome(0.0, replied=False, complete=False)
        started = time.perf_counter()
        msg_id = await self._send(msg_type, content, channel)
        seen_idle = not idle
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not (outcome.replied and seen_idle):
                    got, header, parent, body = await self._receive()
                    if parent.get("msg_id") != msg_id:
                        continue
                    kind = header["msg_type"]
                    if got == channel:
                        outcome.replied = True
                    elif kind == "stream":
                        outcome.stdout_bytes += len(body["text"].encode())
                    elif kind == "status" and body["execution_state"] == "idle":
                        seen_idle = True
                outcome.complete = True
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def alive(self, wait: float = 0.5) -> bool:
        """Whether the server still holds this websocket open: frames waiting to be read are skipped, a
        close from the server (some accept the upgrade and only then give up) counts as gone."""
        try:
            while True:
                frame = await self.ws.receive(timeout=wait)
                if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return False
        except TimeoutError:
            return not self.ws.closed

    async def close(self) -> None:
        await self.ws.close()


class RawKernel(KernelRequests):
    """A kernel reached straight over ZMQ with jupyter_client's AsyncKernelClient, read the way its own
    blocking helpers read: iopub until the request's idle, then the reply (which ZMQ has queued)."""

    def __init__(self, client: AsyncKernelClient):
        self.client = client
        self.protocol = "zmq"

    async def request(self, msg_type: str, content: dict, channel: str = "shell", idle: bool = True,
                      timeout: float = 60.0) -> Outcome:
        outcome = Outcome(0.0, replied=False, complete=False)
        started = time.perf_counter()
        msg = self.client.session.msg(msg_type, content)
        replies = self.client.shell_channel if channel == "shell" else self.client.control_channel
        replies.send(msg)
        msg_id = msg["header"]["msg_id"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while idle:
                    got = await self.client.get_iopub_msg()
                    if got["parent_header"].get("msg_id") != msg_id:
                        continue
                    if got["msg_type"] == "stream":
                        outcome.stdout_bytes += len(got["content"]["text"].encode())
                    elif got["msg_type"] == "status" and got["content"]["execution_state"] == "idle":
                        break
                while (await replies.get_msg())["parent_header"].get("msg_id") != msg_id:
                    pass
                outcome.replied = outcome.complete = True
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def close(self) -> None:
        self.client.stop_channels()


class StreamingExecute:
    """Code run through this gateway's POST /api/kernels/{id}/execute with `Accept: application/x-ndjson`:
    done when the result line (the last) has arrived."""

    protocol = "http ndjson"

    def __init__(self, http: aiohttp.ClientSession, url: str, kernel_id: str):
        self.http, self.url = http, f"{url}/api/kernels/{kernel_id}/execute"

    async def execute(self, code: str, timeout: float = 60.0) -> Outcome:
        outcome = Outcome(0.0)
        started = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async with self.http.post(self.url, json={"code": code},
                                          headers={"Accept": "application/x-ndjson"}) as r:
                    async for line in r.content:
                        if b'"request_status"' in line:
                            outcome.replied = outcome.complete = json.loads(line)["status"] == "ok"
        outcome.seconds = time.perf_counter() - started
        return outcome

    async def close(self) -> None:
        pass
