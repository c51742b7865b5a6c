"""A websocket bridged straight to one kernel's ZMQ channels: the hot path, one hop, no supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web
from jupyter_client.session import Session

from ..supervisor.errors import OutOfFiles
from ..supervisor.wire import kernel_url
from .auth import origin_allowed
from .feeds import IOPubFeed, message_body
from .frames import V1_PROTOCOL, FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1
from .keys import CONFIG, FEEDS, SUPERVISOR, ZMQ_CONTEXT
from .limits import check_open_files, files_in_use, is_out_of_files, out_of_files
from .metrics import RELAYED, TO_CLIENT, TO_KERNEL, RelayCounts
from .outbox import Outbox

log = logging.getLogger("kernels_gateway.channels")

MAX_HELD = 1000
# Each websocket logs this many dropped frames one by one, then only a total when it closes, so a
# client sending garbage in a loop cannot flood the log.
LOGGED_DROPS = 10


class KernelConnection:
    """One websocket on one kernel: its share of the kernel's iopub feed, its own shell, control and
    stdin sockets (opened when the client first uses them, so an idle websocket costs no ZMQ socket),
    and the session that signs what the client sends."""

    def __init__(self, context: zmq.asyncio.Context, kernel_id: str, info: dict[str, Any],
                 ws: web.WebSocketResponse, outbox_limit: int, relayed: RelayCounts):
        self.kernel_id = kernel_id
        self.ws = ws
        self.outbox = Outbox(outbox_limit)
        self.relayed = relayed
        self._context = context
        self._use(info)
        # shell and stdin share an identity, so that input_request finds its way back to this websocket;
        # a fresh one per websocket, so that two connections of one session never collide.
        self._identity = uuid.uuid4().hex.encode()
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._readers: dict[str, asyncio.Task] = {}
        self.last_iopub_header: bytes | None = None  # what to tell the supervisor we last delivered
        self._replayed: set[str] = set()  # msg_ids sent from the replay buffer, not to be sent twice
        # Client frames that arrive while the kernel restarts wait here for the new process.
        self._held: list[str | bytes] | None = None
        self._dropped = 0

    def _use(self, info: dict[str, Any]) -> None:
        self._info = info
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])

    def _socket(self, channel: str) -> zmq.asyncio.Socket:
        if channel not in self._sockets:
            # stdin opens with shell: the kernel's input_request for a shell request must find it there.
            for opening in ("shell", "stdin") if channel in ("shell", "stdin") else (channel,):
                try:
                    sock = self._sockets[opening] = self._context.socket(zmq.DEALER)
                except zmq.ZMQError as e:
                    if not is_out_of_files(e):
                        raise
                    self._close_sockets()  # opened on next use, when descriptors are free again
                    raise OutOfFiles("the gateway is out of file descriptors") from None
                sock.linger = 0
                sock.identity = self._identity
                sock.connect(kernel_url(self._info, opening))
                self._readers[opening] = asyncio.create_task(self._read(opening, sock), name=f"{opening}-reader")
        return self._sockets[channel]

    async def _read(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        while True:
            body = message_body(await sock.recv_multipart())
            if body is None:
                log.warning("Kernel %s: malformed message on %s dropped", self.kernel_id, channel)
                continue
            self.deliver(channel, body)

    def deliver(self, channel: str, body: list[bytes]) -> None:
        """A kernel message for this websocket; it waits in the outbox, never for the websocket."""
        self.outbox.put(channel, body)

    def hold(self) -> None:
        """Keep the client's frames for the process that is about to replace the kernel's."""
        if self._held is None:
            self._held = []

    def kernel_state(self, state: str) -> None:
        """A state the supervisor reported, relayed as an iopub status message as Jupyter Server does.
        While the kernel restarts, the client's frames are held for the new process."""
        if state == "restarting":
            self.hold()
        elif state == "dead" and self._held:
            log.warning("Kernel %s is dead: %d held frames dropped", self.kernel_id, len(self._held))
            self._held = None
        status = self.session.msg("status", {"execution_state": state})
        pack = self.session.pack
        self.outbox.put("iopub", [pack(status["header"]), pack({}), pack({}), pack(status["content"])])

    def kernel_restarted(self, info: dict[str, Any]) -> None:
        """The kernel runs again, with new endpoints and key if a warm kernel took over. The sockets
        of a websocket that saw the restart begin (it holds frames) are closed, to be opened anew on
        next use, even when the endpoints stayed: a socket that was sending while the old process died
        may never hear from the new one, though ZMQ reconnects it. A websocket that opened meanwhile
        already talks to the new process. Then the held frames go."""
        if self._held is not None or info != self._info:
            self._close_sockets()
            self._use(info)
        held, self._held = self._held or [], None
        for i, data in enumerate(held):
            try:
                self._forward(data)
            except OutOfFiles:
                out_of_files.warning(*files_in_use(), f"{len(held) - i} frames held for kernel {self.kernel_id} dropped")
                return

    async def replay(self, missed: list[list[bytes]]) -> None:
        """Send what the client's session missed while away, before anything live."""
        for parts in missed:
            self._replayed.add(json.loads(parts[0]).get("msg_id"))
            await self._send("iopub", parts)

    async def relay(self) -> None:
        """Carry messages both ways until the websocket closes or sending to it fails."""
        tasks = [
            asyncio.create_task(self._from_client(), name="from-client"),
            asyncio.create_task(self._to_client(), name="to-client"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception():
                    log.error("Kernel %s: relay failed", self.kernel_id, exc_info=task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send(self, channel: str, body: list[bytes]) -> None:
        """body: header, parent_header, metadata, content, *buffers, as the kernel wrote them."""
        if self.ws.ws_protocol == V1_PROTOCOL:
            payload, binary = encode_v1(channel, body), True
        else:
            payload, binary = encode_legacy(channel, body)
        await self.ws.send_frame(payload, WSMsgType.BINARY if binary else WSMsgType.TEXT)
        self.relayed.count(TO_CLIENT, channel, len(payload))

    async def _to_client(self) -> None:
        while True:
            channel, body = await self.outbox.get()
            if self.ws.closed:
                return  # what was not sent before the client's close stays replayable
            if channel == "iopub":
                if self._replayed:
                    # Live output overlaps the replay only at its start; once past it, stop looking.
                    if json.loads(body[0]).get("msg_id") in self._replayed:
                        continue
                    self._replayed.clear()
                self.last_iopub_header = body[0]
            await self._send(channel, body)

    async def _from_client(self) -> None:
        try:
            async for message in self.ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                if self._held is None:
                    self._forward(message.data)
                elif len(self._held) < MAX_HELD:
                    self._held.append(message.data)
                else:
                    self._drop(f"the kernel is restarting and {MAX_HELD} frames wait already")
        except OutOfFiles:
            # No socket to the kernel can be opened: the client is told to come back (1013), not left waiting.
            out_of_files.warning(*files_in_use(), f"closing a websocket on kernel {self.kernel_id}")
            await self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"out of file descriptors")
        finally:
            if self._dropped > LOGGED_DROPS:
                log.warning("Kernel %s: %d websocket frames dropped on one connection", self.kernel_id, self._dropped)

    def _forward(self, data: str | bytes) -> None:
        """A frame that is not a kernel message is dropped with a log line, as Jupyter Server does: the
        protocol has no message to tell the client, and the websocket stays up for the frames that are fine."""
        try:
            self.relayed.count(TO_KERNEL, self._send_to_kernel(data), len(data))
        except (TypeError, ValueError, KeyError, RecursionError) as e:  # FrameError is a ValueError
            self._drop(str(e))

    def _drop(self, reason: str) -> None:
        self._dropped += 1
        level = logging.WARNING if self._dropped <= LOGGED_DROPS else logging.DEBUG
        log.log(level, "Kernel %s: websocket frame dropped: %s", self.kernel_id, reason)

    def _send_to_kernel(self, data: str | bytes) -> str:
        if self.ws.ws_protocol == V1_PROTOCOL:
            if isinstance(data, str):
                raise FrameError("text frame on the v1 protocol")
            channel, parts = decode_v1(data)
            if channel == "iopub":
                raise FrameError("clients cannot publish on iopub")
            self.session.send_raw(self._socket(channel), parts)
        else:
            channel, message = decode_legacy(data)
            if channel == "iopub":
                raise FrameError("clients cannot publish on iopub")
            self.session.send(self._socket(channel), message)
        return channel

    def last_delivered_msg_id(self) -> str | None:
        return json.loads(self.last_iopub_header).get("msg_id") if self.last_iopub_header else None

    def _close_sockets(self) -> None:
        for reader in self._readers.values():
            reader.cancel()
        for sock in self._sockets.values():
            sock.close()
        self._readers, self._sockets = {}, {}

    async def close(self) -> None:
        readers = list(self._readers.values())
        self._close_sockets()
        await asyncio.gather(*readers, return_exceptions=True)


async def channels(request: web.Request) -> web.WebSocketResponse:
    """GET {base}/api/kernels/{kernel_id}/channels?session_id=S: the websocket."""
    kernel_id = request.match_info["kernel_id"]
    session_id = request.query.get("session_id") or uuid.uuid4().hex
    supervisor = request.app[SUPERVISOR]
    config = request.app[CONFIG]
    # aiohttp pings every interval and closes a websocket whose pong does not come within half of it.
    ws = web.WebSocketResponse(protocols=(V1_PROTOCOL,), max_msg_size=config.max_message_size,
                               heartbeat=config.ws_ping_interval or None)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="expected a websocket upgrade")
    if not origin_allowed(request, config.allow_origin):
        raise web.HTTPForbidden(text=f"Origin {request.headers['Origin'][:200]} is not allowed (--allow-origin)")
    check_open_files()  # refused while plain HTTP still can be: before the upgrade
    found = await supervisor.connection_info(kernel_id)  # an unknown kernel is a 404 before the upgrade
    info = found["connection_info"]
    feeds = request.app[FEEDS]
    feed = feeds.get(kernel_id)
    if feed is None or feed.info != info:
        feed = feeds[kernel_id] = IOPubFeed(request.app[ZMQ_CONTEXT], kernel_id, info)
    connection = KernelConnection(request.app[ZMQ_CONTEXT], kernel_id, feed.info, ws,
                                  request.app[CONFIG].max_output_buffer, request.app[RELAYED])
    try:
        await feed.ready()
        # Subscribed before asking for the replay, so nothing falls between the two (the overlap is
        # skipped), and before the upgrade, so that a vanished kernel or supervisor is still plain HTTP.
        feed.subscribers.add(connection)
        missed = await supervisor.connection_opened(kernel_id, session_id)
        try:
            await ws.prepare(request)
            request.app[RELAYED].opened += 1
            with contextlib.suppress(ConnectionResetError):
                await connection.replay(missed)
            await connection.relay()
        finally:
            await supervisor.connection_closed(kernel_id, session_id, connection.last_delivered_msg_id())
            if ws.prepared:
                await ws.close()
    finally:
        feed.subscribers.discard(connection)
        await connection.close()
        if not feed.subscribers and feeds.get(kernel_id) is feed:
            del feeds[kernel_id]
            await feed.close()
    return ws


def relay_event(app: web.Application, event: dict[str, Any]) -> None:
    """A kernel event the supervisor pushed, for the websockets on that kernel in this worker."""
    feed = app[FEEDS].get(event.get("kernel_id"))
    if feed:
        feed.events.put_nowait(event)


async def close_all(app: web.Application) -> None:
    """On shutdown, tell every client the server is going away (1001) rather than just dropping it."""
    for feed in list(app[FEEDS].values()):
        for connection in list(feed.subscribers):
            await connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
