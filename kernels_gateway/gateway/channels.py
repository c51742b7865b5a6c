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

from ..supervisor.wire import kernel_url
from .auth import origin_allowed
from .frames import V1_PROTOCOL, FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1
from .keys import CONFIG, CONNECTIONS, SUPERVISOR, ZMQ_CONTEXT
from .metrics import RELAYED, TO_CLIENT, TO_KERNEL, RelayCounts
from .outbox import Outbox

log = logging.getLogger("kernels_gateway.channels")

DELIMITER = b"<IDS|MSG>"
NUDGE_TIMEOUT = 10.0
MAX_HELD = 1000
# Each websocket logs this many dropped frames one by one, then only a total when it closes, so a
# client sending garbage in a loop cannot flood the log.
LOGGED_DROPS = 10


class KernelConnection:
    """One websocket's own ZMQ sockets to one kernel, and the session that signs what the client sends."""

    def __init__(self, context: zmq.asyncio.Context, kernel_id: str, info: dict[str, Any],
                 ws: web.WebSocketResponse, outbox_limit: int, relayed: RelayCounts):
        self.kernel_id = kernel_id
        self.ws = ws
        self.outbox = Outbox(outbox_limit)
        self.relayed = relayed
        self._context = context
        self._open_sockets(info)
        # Kernel events that iopub cannot carry, pushed by the supervisor: a state (restarting, dead)
        # or new connection info (a warm kernel took over from a dead one).
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.last_iopub_header: bytes | None = None  # what to tell the supervisor we last delivered
        self._replayed: set[str] = set()  # msg_ids sent from the replay buffer, not to be sent twice
        # Client frames that arrive while the kernel restarts wait here for the new process.
        self._held: list[str | bytes] | None = None
        self._dropped = 0

    def _open_sockets(self, info: dict[str, Any]) -> None:
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
        self.sockets["iopub"].rcvhwm = 0  # ZMQ would drop silently; the outbox bounds and reports instead

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

    async def replay(self, missed: list[list[bytes]]) -> None:
        """Send what the client's session missed while away, before anything live."""
        for parts in missed:
            self._replayed.add(json.loads(parts[0]).get("msg_id"))
            await self._send("iopub", parts)

    async def relay(self) -> None:
        """Carry messages both ways until the websocket closes or a kernel socket fails; when the kernel
        moves to new connection info, move this websocket's sockets with it."""
        from_client = asyncio.create_task(self._from_client(), name="from-client")
        to_client = asyncio.create_task(self._outbox_to_client(), name="outbox-to-client")
        try:
            while True:
                events = asyncio.create_task(self._events(), name="events")
                readers = [
                    asyncio.create_task(self._to_client(channel, sock), name=f"{channel}-to-client")
                    for channel, sock in self.sockets.items()
                ]
                try:
                    done, _ = await asyncio.wait([from_client, to_client, events, *readers],
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (events, *readers):
                        task.cancel()
                    await asyncio.gather(events, *readers, return_exceptions=True)
                restarted = events in done and not events.cancelled() and not events.exception()
                if not restarted:
                    for task in done:
                        if not task.cancelled() and task.exception():
                            log.error("Kernel %s: relay failed", self.kernel_id, exc_info=task.exception())
                    return
                await self._follow_restart(events.result())
        finally:
            from_client.cancel()
            to_client.cancel()
            await asyncio.gather(from_client, to_client, return_exceptions=True)

    async def _send(self, channel: str, body: list[bytes]) -> None:
        """body: header, parent_header, metadata, content, *buffers, as the kernel wrote them."""
        if self.ws.ws_protocol == V1_PROTOCOL:
            payload, binary = encode_v1(channel, body), True
        else:
            payload, binary = encode_legacy(channel, body)
        await self.ws.send_frame(payload, WSMsgType.BINARY if binary else WSMsgType.TEXT)
        self.relayed.count(TO_CLIENT, channel, len(payload))

    async def _to_client(self, channel: str, sock: zmq.asyncio.Socket) -> None:
        """Drain one kernel socket into the outbox; never waits for the websocket."""
        while True:
            parts = await sock.recv_multipart()
            try:
                body = parts[parts.index(DELIMITER) + 2 :]  # drop routing ids, delimiter, signature
            except ValueError:
                body = []
            if len(body) < 4:
                log.warning("Kernel %s: malformed message on %s dropped", self.kernel_id, channel)
                continue
            if channel == "iopub":
                if self._replayed:
                    # The live stream overlaps the replay only at its start; once past it, stop looking.
                    if json.loads(body[0]).get("msg_id") in self._replayed:
                        continue
                    self._replayed.clear()
            self.outbox.put(channel, body)

    async def _outbox_to_client(self) -> None:
        while True:
            channel, body = await self.outbox.get()
            await self._send(channel, body)
            if channel == "iopub":
                self.last_iopub_header = body[0]

    async def _events(self) -> dict[str, Any]:
        """Relay supervisor-reported states as iopub status messages, as Jupyter Server does; return
        the connection info of the process that replaced a dead one."""
        while True:
            event = await self.events.get()
            if "connection_info" in event:
                return event["connection_info"]
            state = event.get("execution_state")
            if state == "restarting":
                self._held = []
            elif state == "dead" and self._held:
                log.warning("Kernel %s is dead: %d held messages dropped", self.kernel_id, len(self._held))
                self._held = None
            status = self.session.msg("status", {"execution_state": state})
            pack = self.session.pack
            self.outbox.put("iopub", [pack(status["header"]), pack({}), pack({}), pack(status["content"])])

    async def _follow_restart(self, info: dict[str, Any]) -> None:
        """The kernel runs again. A process restarted in place keeps its endpoints, and ZMQ reconnects
        these sockets by itself (delivering what was queued); a warm kernel that took over has new
        ones and a new key, so the sockets move. Either way iopub is nudged anew, then held frames go."""
        if info != self._info:
            self.close()
            self._open_sockets(info)
        await self.nudge()
        held, self._held = self._held or [], None
        for data in held:
            self._forward(data)

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
            self.session.send_raw(self.sockets[channel], parts)
        else:
            channel, message = decode_legacy(data)
            if channel == "iopub":
                raise FrameError("clients cannot publish on iopub")
            self.session.send(self.sockets[channel], message)
        return channel

    def last_delivered_msg_id(self) -> str | None:
        return json.loads(self.last_iopub_header).get("msg_id") if self.last_iopub_header else None

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


async def channels(request: web.Request) -> web.WebSocketResponse:
    """GET {base}/api/kernels/{kernel_id}/channels?session_id=S: the websocket."""
    kernel_id = request.match_info["kernel_id"]
    session_id = request.query.get("session_id") or uuid.uuid4().hex
    supervisor = request.app[SUPERVISOR]
    ws = web.WebSocketResponse(
        protocols=(V1_PROTOCOL,), max_msg_size=request.app[CONFIG].max_message_size, heartbeat=30.0
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="expected a websocket upgrade")
    if not origin_allowed(request, request.app[CONFIG].allow_origin):
        raise web.HTTPForbidden(text=f"Origin {request.headers['Origin'][:200]} is not allowed (--allow-origin)")
    found = await supervisor.connection_info(kernel_id)  # an unknown kernel is a 404 before the upgrade
    connection = KernelConnection(request.app[ZMQ_CONTEXT], kernel_id, found["connection_info"], ws,
                                  request.app[CONFIG].max_output_buffer, request.app[RELAYED])
    connections = request.app[CONNECTIONS].setdefault(kernel_id, set())
    try:
        await connection.nudge()
        # Before the upgrade, so that a vanished kernel or supervisor is still a plain HTTP error.
        missed = await supervisor.connection_opened(kernel_id, session_id)
        try:
            await ws.prepare(request)
            request.app[RELAYED].opened += 1
            connections.add(connection)
            with contextlib.suppress(ConnectionResetError):
                await connection.replay(missed)
            await connection.relay()
        finally:
            connections.discard(connection)
            await supervisor.connection_closed(kernel_id, session_id, connection.last_delivered_msg_id())
            if ws.prepared:
                await ws.close()
    finally:
        connection.close()
        if not connections:
            request.app[CONNECTIONS].pop(kernel_id, None)
    return ws


def relay_event(app: web.Application, event: dict[str, Any]) -> None:
    """A kernel event the supervisor pushed, for every websocket on that kernel."""
    for connection in app[CONNECTIONS].get(event.get("kernel_id"), ()):
        connection.events.put_nowait(event)


async def close_all(app: web.Application) -> None:
    """On shutdown, tell every client the server is going away (1001) rather than just dropping it."""
    for connections in list(app[CONNECTIONS].values()):
        for connection in list(connections):
            await connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
