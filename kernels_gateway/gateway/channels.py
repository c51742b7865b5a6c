"""A websocket bridged straight to one kernel's ZMQ channels: the hot path, one hop, no supervisor."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web
from jupyter_client.session import Session

from ..supervisor.wire import kernel_url
from .keys import CONFIG, SUPERVISOR, WEBSOCKETS, ZMQ_CONTEXT
from .frames import V1_PROTOCOL, FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1

log = logging.getLogger("kernels_gateway.channels")

DELIMITER = b"<IDS|MSG>"
NUDGE_TIMEOUT = 10.0
# Each websocket logs this many dropped frames one by one, then only a total when it closes, so a
# client sending garbage in a loop cannot flood the log.
LOGGED_DROPS = 10


class KernelConnection:
    """One websocket's own ZMQ sockets to one kernel, and the session that signs what the client sends."""

    def __init__(self, context: zmq.asyncio.Context, kernel_id: str, info: dict[str, Any]):
        self.kernel_id = kernel_id
        self._context = context
        self._info = info
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        # A fresh identity per websocket: two connections of one client session must not collide
        # on the kernel's ROUTER sockets. shell and stdin share it so input_request finds its way.
        identity = uuid.uuid4().hex.encode()
        self.sockets = {
            "shell": self._connect("shell", zmq.DEALER, identity),
            "control": self._connect("control", zmq.DEALER, identity),
            "stdin": self._connect("stdin", zmq.DEALER, identity),
            "iopub": self._connect("iopub", zmq.SUB),
        }
        self.sockets["iopub"].subscribe(b"")

    def _connect(self, channel: str, kind: int, identity: bytes | None = None) -> zmq.asyncio.Socket:
        sock = self._context.socket(kind)
        sock.linger = 0
        if identity:
            sock.identity = identity
        sock.connect(kernel_url(self._info, channel))
        return sock

    async def nudge(self) -> None:
        """Send kernel_info_request until something arrives on our iopub socket.

        A SUB socket misses whatever the kernel publishes before its subscription has propagated; only
        once a message has come through can a cell's first output be trusted to arrive. Requests go on
        throwaway sockets so their replies never reach the client; control answers even while shell
        is busy running a cell.
        """
        probes = [self._connect("shell", zmq.DEALER), self._connect("control", zmq.DEALER)]
        iopub = self.sockets["iopub"]
        try:
            async with asyncio.timeout(NUDGE_TIMEOUT):
                while True:
                    for probe in probes:
                        self.session.send(probe, "kernel_info_request")
                    if await iopub.poll(200):
                        break
        except TimeoutError:
            log.warning("Kernel %s: no iopub message within %g s; relaying anyway", self.kernel_id, NUDGE_TIMEOUT)
        finally:
            for probe in probes:
                probe.close()
        # What the nudge itself caused is not the client's business.
        while await iopub.poll(0):
            await iopub.recv_multipart()

    async def relay(self, ws: web.WebSocketResponse) -> None:
        """Carry messages both ways until the websocket closes or a kernel socket fails."""
        v1 = ws.ws_protocol == V1_PROTOCOL
        tasks = [
            asyncio.create_task(self._to_client(channel, sock, ws, v1), name=f"{channel}-to-client")
            for channel, sock in self.sockets.items()
        ]
        tasks.append(asyncio.create_task(self._from_client(ws, v1), name="from-client"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception():
                    log.error("Kernel %s: relay failed", self.kernel_id, exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _to_client(self, channel: str, sock: zmq.asyncio.Socket, ws: web.WebSocketResponse, v1: bool) -> None:
        while True:
            parts = await sock.recv_multipart()
            try:
                body = parts[parts.index(DELIMITER) + 2 :]  # drop routing ids, delimiter, signature
            except ValueError:
                log.warning("Kernel %s: message without delimiter on %s dropped", self.kernel_id, channel)
                continue
            if len(body) < 4:
                log.warning("Kernel %s: truncated message on %s dropped", self.kernel_id, channel)
                continue
            if v1:
                await ws.send_frame(encode_v1(channel, body), WSMsgType.BINARY)
            else:
                payload, binary = encode_legacy(channel, body)
                await ws.send_frame(payload, WSMsgType.BINARY if binary else WSMsgType.TEXT)

    async def _from_client(self, ws: web.WebSocketResponse, v1: bool) -> None:
        """Sign and send what the client sends. A frame that is not a kernel message is dropped with a
        log line, as Jupyter Server does: the protocol has no message to tell the client, and the
        connection stays up for the frames that are fine."""
        dropped = 0
        try:
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    self._send_to_kernel(message.data, v1)
                except (TypeError, ValueError, KeyError, RecursionError) as e:  # FrameError is a ValueError
                    dropped += 1
                    level = logging.WARNING if dropped <= LOGGED_DROPS else logging.DEBUG
                    log.log(level, "Kernel %s: websocket frame dropped: %s", self.kernel_id, e)
        finally:
            if dropped > LOGGED_DROPS:
                log.warning("Kernel %s: %d websocket frames dropped on one connection", self.kernel_id, dropped)

    def _send_to_kernel(self, data: str | bytes, v1: bool) -> None:
        if v1:
            if isinstance(data, str):
                raise FrameError("text frame on the v1 protocol")
            channel, parts = decode_v1(data)
        else:
            channel, message = decode_legacy(data)
        if channel == "iopub":
            raise FrameError("clients cannot publish on iopub")
        sock = self.sockets[channel]
        if v1:
            self.session.send_raw(sock, parts)
        else:
            self.session.send(sock, message)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


async def channels(request: web.Request) -> web.WebSocketResponse:
    """GET {base}/api/kernels/{kernel_id}/channels: the websocket."""
    kernel_id = request.match_info["kernel_id"]
    supervisor = request.app[SUPERVISOR]
    ws = web.WebSocketResponse(
        protocols=(V1_PROTOCOL,), max_msg_size=request.app[CONFIG].max_message_size, heartbeat=30.0
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="expected a websocket upgrade")
    found = await supervisor.connection_info(kernel_id)  # an unknown kernel is a 404 before the upgrade
    connection = KernelConnection(request.app[ZMQ_CONTEXT], kernel_id, found["connection_info"])
    try:
        await connection.nudge()
        await ws.prepare(request)
        await supervisor.connection_opened(kernel_id)
        request.app[WEBSOCKETS].add(ws)
        try:
            await connection.relay(ws)
        finally:
            request.app[WEBSOCKETS].discard(ws)
            await supervisor.connection_closed(kernel_id)
            await ws.close()
    finally:
        connection.close()
    return ws
