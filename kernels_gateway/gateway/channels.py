"""A websocket bridged straight to one kernel's ZMQ channels: the hot path, one hop, no supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import WSCloseCode, WSMsgType, web
from jupyter_client.session import Session

from ..supervisor import wire
from ..supervisor.client import SupervisorClient
from ..kernel_protocol import DELIMITER, kernel_url, message_body, receive
from ..errors import GatewayError, OutOfFiles
from ..progress import ProgressMap
from .auth import origin_allowed
from .feeds import IOPubFeed, signed
from .frames import V1_PROTOCOL, FrameError, decode_legacy, decode_v1, encode_legacy, encode_v1
from .keys import CONFIG, DEPARTING, FEEDS, HANDED_BACK, PROGRESS, RELAYED, SUPERVISOR, ZMQ_CONTEXT
from .limits import check_open_files, files_in_use, is_out_of_files, out_of_files
from .metrics import TO_CLIENT, TO_KERNEL, RelayCounts
from ..turns import Pace
from .outbox import Outbox

log = logging.getLogger("kernels_gateway.channels")

MAX_HELD = 1000
# Shell requests of one websocket that may await their reply at once; past this, the websocket is read
# no further until replies come. ipykernel passes shell requests between two of its threads over
# bounded queues: with a few thousand requests queued, each thread blocks sending to the other, for good.
MAX_UNANSWERED = 500
# Each websocket logs this many dropped frames one by one, then only a total when it closes, so a
# client sending garbage in a loop cannot flood the log.
LOGGED_DROPS = 10
# What a client has read is known only from its websocket's answers to pings: clients answer a ping
# once they have taken every message before it (aiohttp, Node's ws), or at least received it
# (browsers). A ping follows every message but `stream` output, which gets one at the end of each
# burst and after every ACK_EVERY in a flood: a ping per message would make a position exact
# mid-flood too, at twice the worker's work per message.
ACK_EVERY = 16
STREAM = b'"stream"'
# Messages sent and not yet acknowledged that a connection remembers; past this (a client that never
# answers pings), its position stops advancing, which costs its session repeats, never losses.
MAX_UNACKED = 4096
REQUEST_CHANNELS = frozenset({"shell", "control"})
HAND_BACK_TIMEOUT = 2.0  # at a worker's stop, for replies on their way back to the supervisor



class KernelConnection:
    """One websocket on one kernel: its share of the kernel's iopub feed, its own shell, control and
    stdin sockets (opened when the client first uses them, so an idle websocket costs no ZMQ socket),
    and the session that signs what the client sends."""

    def __init__(self, context: zmq.asyncio.Context, kernel_id: str, info: dict[str, Any],
                 ws: web.WebSocketResponse, outbox_limit: int, max_message: int, relayed: RelayCounts,
                 supervisor: SupervisorClient, session_id: str):
        self.kernel_id = kernel_id
        self.session_id = session_id
        self.id = uuid.uuid4().hex  # this connection, as the supervisor knows it
        self.ws = ws
        self.supervisor = supervisor
        self.outbox = Outbox(outbox_limit, max_message, kernel_id)
        self.relayed = relayed
        self._context = context
        self._use(info)
        # shell and stdin share an identity, so that input_request finds its way back to this websocket;
        # a fresh one per websocket, so that two connections of one session never collide; the
        # connection's id, so that the supervisor can collect its replies should this worker die.
        self._identity = self.id.encode()
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._readers: dict[str, asyncio.Task] = {}
        self.last_iopub_header: bytes | None = None  # the last kernel iopub message the client has read
        self.progress: tuple[ProgressMap, int] | None = None  # where that is published for the supervisor
        self._pings = 0
        self._since_ping = 0
        self._acked_ping = 0  # the last of our pings the client answered
        # Sent and not yet acknowledged: (the ping that will acknowledge it, channel, iopub header or body).
        self._unacked: deque[tuple[int, str, Any]] = deque()
        self._requests = 0  # shell and control requests that the kernel has not answered to this client
        self._joining = False  # a returning session's replay is not yet joined to the live output
        self._replayed: set[str] = set()  # msg_ids sent from the replay, not to be sent twice
        self._overlapping = False
        self._skip_through: str | None = None
        self._grace_over = asyncio.Event()
        # Client frames that arrive while the kernel restarts wait here for the new process.
        self._held: list[str | bytes] | None = None
        self._releasing: asyncio.Task | None = None  # sends the held frames once the kernel is back
        self._retired: set[asyncio.Task] = set()  # readers of closed sockets, cancelled: close() awaits them
        self._unanswered: set[str] = set()  # msg_ids of shell requests sent, their replies not yet here
        self._answered = asyncio.Event()
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
        def received(parts: list[bytes]) -> None:
            body = message_body(parts)
            if body is None:
                log.warning("Kernel %s: malformed message on %s dropped", self.kernel_id, channel)
            else:
                self.deliver(channel, body)

        await receive(sock, received)

    def deliver(self, channel: str, body: list[bytes]) -> None:
        """A kernel message for this websocket; it waits in the outbox, never for the websocket."""
        if channel == "shell" and self._unanswered:
            msg_id = _json_object(body[1]).get("msg_id")
            if isinstance(msg_id, str):
                self._unanswered.discard(msg_id)
                self._answered.set()
        self.outbox.put(channel, body)

    def _forget_requests(self) -> None:
        """A restarted or dead kernel will answer nothing that was sent before."""
        self._unanswered.clear()
        self._answered.set()

    def hold(self) -> None:
        """Keep the client's frames for the process that is about to replace the kernel's."""
        if self._held is None:
            self._held = []

    def kernel_state(self, state: str) -> None:
        """A state the supervisor reported, relayed as an iopub status message as Jupyter Server does.
        While the kernel restarts, the client's frames are held for the new process."""
        if state in ("restarting", "dead"):
            self._forget_requests()
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
        self._forget_requests()
        if self._held is not None and self._releasing is None:
            self._releasing = asyncio.create_task(self._release(), name="release-held")

    async def _release(self) -> None:
        """Send the held frames in order; frames that arrive meanwhile join the end of the line."""
        try:
            while self._held:
                await self._forward(self._held.pop(0))
        except OutOfFiles:
            out_of_files.warning(*files_in_use(), f"{len(self._held) + 1} frames held for kernel {self.kernel_id} dropped")
        finally:
            self._held = self._releasing = None

    async def replay(self, missed: list[tuple[str, list[bytes]]], returning: bool) -> None:
        """Send what the client's session missed while away, before anything live: iopub output (a
        notice first if the replay limits dropped some), then replies that reached its departed
        connection. The live output then joins it exactly where the replay ends."""
        self._joining = returning
        for number, (channel, parts) in enumerate(missed, 1):
            if channel == "iopub":
                self._replayed.add(json.loads(parts[0]).get("msg_id"))
            await self._send_acked(channel, parts, more=number < len(missed))

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

    async def _send_acked(self, channel: str, body: list[bytes], more: bool = False) -> None:
        """Send, and remember the message until the client acknowledges it by answering a ping;
        `more`: others follow at once."""
        if len(self._unacked) < MAX_UNACKED:  # before sending: a send that fails leaves it unread
            self._unacked.append((self._pings + 1, channel, body[0] if channel == "iopub" else body))
        await self._send(channel, body)
        self._since_ping += 1
        if self._since_ping >= ACK_EVERY or not more or channel != "iopub" or STREAM not in body[0]:
            self._pings += 1
            self._since_ping = 0
            await self.ws.ping(b"%d" % self._pings)

    def _acknowledged(self, data: bytes) -> None:
        """A pong: everything sent before that ping has been read. Our own pings carry a number;
        aiohttp's keepalive pings carry none."""
        try:
            number = int(data)
        except ValueError:
            return
        self._acked_ping = max(self._acked_ping, number)
        headers = []
        while self._unacked and self._unacked[0][0] <= number:
            _, channel, sent = self._unacked.popleft()
            if channel == "iopub":
                headers.append(sent)
        self._read_up_to(headers)

    def _read_up_to(self, headers: list[bytes]) -> None:
        """The client has read these iopub messages: its position is the last that came from the
        kernel (the supervisor never heard the gateway's own), published for the supervisor."""
        for header in reversed(headers):
            if not self._ours(json.loads(header)):
                self.last_iopub_header = header
                self._publish()
                return

    def _requested(self, channel: str) -> None:
        if channel in REQUEST_CHANNELS:
            self._requests += 1
            self._publish()

    def _publish(self) -> None:
        """Where the supervisor finds this connection's progress should this worker die: a memory write."""
        if self.progress:
            self.progress[0].write(self.progress[1], self.last_delivered_msg_id() or "", self._requests)

    async def _to_client(self) -> None:
        with contextlib.suppress(ConnectionResetError):  # the client went: the relay ends
            await self._relay_to_client()

    async def _relay_to_client(self) -> None:
        while True:
            channel, body = await self.outbox.get()
            if self.ws.closed:
                return  # what was not sent before the client's close stays replayable
            if channel in REQUEST_CHANNELS:
                self._requests = max(0, self._requests - 1)
                self._publish()
            elif channel == "iopub" and self._joining and not await self._join(body):
                continue
            await self._send_acked(channel, body, more=not self.outbox.empty())

    async def _join(self, body: list[bytes]) -> bool:
        """Whether a live iopub message of a returning session is new to it. The live output may
        repeat the replay's end, or begin after it; where exactly, only the supervisor can say."""
        header = json.loads(body[0])
        if self._ours(header):
            return True  # nothing the replay has
        msg_id = header.get("msg_id")
        if self._skip_through is None and msg_id not in self._replayed and not self._overlapping:
            try:
                between, self._skip_through = await self.supervisor.replay_join(self.kernel_id, self.session_id, msg_id)
            except GatewayError as e:
                log.warning("Kernel %s: could not join a replay to the live output: %s", self.kernel_id, e)
                between = []
            for parts in between:
                await self._send_acked("iopub", parts, more=True)
        if self._skip_through is not None:  # the live output is behind: it repeats up to here
            if msg_id == self._skip_through:
                self._skip_through = None
                self._joined()
            return False
        if msg_id in self._replayed:
            self._overlapping = True
            return False
        return self._joined()

    def _ours(self, header: dict) -> bool:
        """Whether a message is the gateway's own (a kernel state as status, a notice), which the
        supervisor never hears."""
        return header.get("session") in ("", self.session.session)

    def _joined(self) -> bool:
        self._joining, self._replayed, self._overlapping = False, set(), False
        return True

    async def _from_client(self) -> None:
        # A frame that is already buffered is returned without yielding: a client sending without pause
        # must not keep the event loop to itself, so its frames are bulk work.
        pace = Pace()
        try:
            while True:
                pace.done()
                message = await self.ws.receive()
                await pace.turn()
                if message.type is WSMsgType.PONG:
                    self._acknowledged(message.data)
                elif message.type is WSMsgType.PING:  # answered here, since pongs are read here too
                    await self.ws.pong(message.data)
                elif message.type is WSMsgType.CLOSE:
                    self._closed_by_client()
                    return
                elif message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    return  # closing, closed or broken
                elif self._held is None:
                    await self._forward(message.data)
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

    def _closed_by_client(self) -> None:
        """A client that closes has read the message after the last one it acknowledged, if that was
        sent before its close arrived: a client that answers pings as it takes messages (aiohttp,
        or Node's ws closing from a message handler) answered the ping before that message, then took
        it, then closed, and never answers the ping after it. One that never answered a ping on this
        connection may have read nothing at all."""
        if self._acked_ping and self._unacked and self._unacked[0][0] == self._acked_ping + 1:
            _, channel, sent = self._unacked.popleft()
            if channel == "iopub":
                self._read_up_to([sent])

    async def _forward(self, data: str | bytes) -> None:
        """Send a client's frame to the kernel. The send never blocks the worker: while the kernel's
        queue is full (it reads nothing, as during a long cell), this waits, and so stops reading this
        websocket, which pushes back on this client alone.

        A frame that is not a kernel message is dropped with a log line, as Jupyter Server does: the
        protocol has no message to tell the client, and the websocket stays up for the frames that are fine."""
        try:
            channel, frames = self._to_kernel(data)
        except (TypeError, ValueError, KeyError, RecursionError) as e:  # FrameError is a ValueError
            self._drop(str(e))
            return
        if channel == "shell":
            await self._await_slot(frames[2])
        try:
            await self._socket(channel).send_multipart(frames)
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
            # pyzmq cancels the sends of a socket it closes: a warm kernel replaced the dead one
            self._drop("the kernel was replaced before it read the frame")
            return
        self.relayed.count(TO_KERNEL, channel, len(data))
        self._requested(channel)

    async def _await_slot(self, header: bytes) -> None:
        """Count a shell request in (comms on shell get no reply, so only *_request), once fewer than
        MAX_UNANSWERED wait for their replies."""
        fields = _json_object(header)
        msg_id = fields.get("msg_id")
        if not isinstance(msg_id, str) or not str(fields.get("msg_type")).endswith("_request"):
            return  # a header the kernel cannot read either: it drops the message
        while len(self._unanswered) >= MAX_UNANSWERED:
            self._answered.clear()
            await self._answered.wait()
        self._unanswered.add(msg_id)

    def _drop(self, reason: str) -> None:
        self._dropped += 1
        level = logging.WARNING if self._dropped <= LOGGED_DROPS else logging.DEBUG
        log.log(level, "Kernel %s: websocket frame dropped: %s", self.kernel_id, reason)

    def _to_kernel(self, data: str | bytes) -> tuple[str, list[bytes]]:
        """A client's frame as (channel, the signed ZMQ frames for the kernel)."""
        if self.ws.ws_protocol == V1_PROTOCOL:
            if isinstance(data, str):
                raise FrameError("text frame on the v1 protocol")
            channel, parts = decode_v1(data)
        else:
            channel, message = decode_legacy(data)
        if channel == "iopub":
            raise FrameError("clients cannot publish on iopub")
        if self.ws.ws_protocol == V1_PROTOCOL:
            return channel, [DELIMITER, self.session.sign(parts[:4]), *parts]
        return channel, signed(self.session, message)

    def last_delivered_msg_id(self) -> str | None:
        return json.loads(self.last_iopub_header).get("msg_id") if self.last_iopub_header else None

    def _close_sockets(self) -> None:
        """Close the kernel's sockets (a restart may do so from a callback: their cancelled readers
        end on their own, and close() awaits any that have not)."""
        for reader in self._readers.values():
            reader.cancel()
            self._retired.add(reader)
            reader.add_done_callback(self._retired.discard)
        for sock in self._sockets.values():
            sock.close()
        self._readers, self._sockets = {}, {}

    async def depart(self, grace: float) -> None:
        """The websocket is gone; replies meant for it are not. Those sent but not acknowledged, those
        waiting here, and those the kernel sends until every request is answered (or `grace` runs
        out) go to the supervisor, which keeps them for the session's return, through any worker."""
        for _, channel, body in self._unacked:
            if channel != "iopub":
                await self._hand_over(channel, body)
        self._unacked.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        ended = asyncio.ensure_future(self._grace_over.wait())
        waits = [ended]
        try:
            while self._requests > 0 and not ended.done():
                got = asyncio.ensure_future(self.outbox.get())
                waits = [ended, got]
                await asyncio.wait(waits, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    break
                channel, body = got.result()
                if channel == "iopub":
                    continue  # the supervisor's replay has it
                self._requests -= channel in REQUEST_CHANNELS
                await self._hand_over(channel, body)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _hand_over(self, channel: str, body: list[bytes]) -> None:
        try:
            await self.supervisor.session_reply(self.kernel_id, self.session_id, channel, body)
        except GatewayError as e:
            log.warning("Kernel %s: a %s reply for a departed websocket was lost: %s", self.kernel_id, channel, e)

    def end_grace(self) -> None:
        self._grace_over.set()

    async def close(self) -> None:
        tasks = [*self._readers.values(), *([self._releasing] if self._releasing else [])]
        if self._releasing:
            self._releasing.cancel()
        self._close_sockets()
        await asyncio.gather(*tasks, *self._retired, return_exceptions=True)


def _json_object(part: bytes) -> dict[str, Any]:
    """A message part that should be a JSON object, or {} if it is no such thing."""
    try:
        value = json.loads(part)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


async def progress_map(app: web.Application) -> AsyncIterator[None]:
    """This worker's progress file, where each websocket's read position outlives the worker."""
    try:
        app[PROGRESS] = ProgressMap(app[CONFIG].runtime_dir / f"progress-{os.getpid()}")
    except OSError as e:
        log.warning("No progress file (%s): sessions of a worker that dies may be replayed from further back", e)
        app[PROGRESS] = None
    app[DEPARTING], app[HANDED_BACK] = set(), set()
    yield
    if app[HANDED_BACK]:
        _, stuck = await asyncio.wait(app[HANDED_BACK], timeout=HAND_BACK_TIMEOUT)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
    if app[PROGRESS]:
        app[PROGRESS].close()


async def channels(request: web.Request) -> web.WebSocketResponse:
    """GET {base}/api/kernels/{kernel_id}/channels?session_id=S: the websocket."""
    kernel_id = request.match_info["kernel_id"]
    session_id = request.query.get("session_id") or uuid.uuid4().hex
    supervisor = request.app[SUPERVISOR]
    config = request.app[CONFIG]
    # aiohttp pings every interval and closes a websocket whose pong (or any frame) does not come within
    # half of it. Client pings are answered by hand: the pongs to our own pings say what it has read.
    ws = web.WebSocketResponse(protocols=(V1_PROTOCOL,), max_msg_size=config.max_message_size,
                               heartbeat=config.ws_ping_interval or None, autoping=False)
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
    connection = KernelConnection(request.app[ZMQ_CONTEXT], kernel_id, feed.info, ws, config.max_output_buffer,
                                  config.max_message_size, request.app[RELAYED], supervisor, session_id)
    progress, slot = request.app[PROGRESS], None
    if progress and (slot := progress.take()) is not None:
        connection.progress = progress, slot
    try:
        # Subscribed at once, so that a websocket on its way out cannot close the feed under this one
        # while it waits for the subscription's proof; before asking for the replay, so nothing falls
        # between the two (the overlap is skipped); and before the upgrade, so that a vanished kernel or
        # supervisor is still plain HTTP.
        feed.subscribers.add(connection)
        await feed.ready()
        missed, returning = await supervisor.connection_opened(
            kernel_id, session_id, connection.id, {"file": progress.path.name, "slot": slot} if slot is not None else None)
        try:
            await ws.prepare(request)
            request.app[RELAYED].opened += 1
            with contextlib.suppress(ConnectionResetError):
                await connection.replay(missed, returning)
            await connection.relay()
        finally:
            await supervisor.connection_closed(kernel_id, session_id, connection.id, connection.last_delivered_msg_id())
            if ws.prepared:
                await ws.close()
        feed.subscribers.discard(connection)
        request.app[DEPARTING].add(connection)
        try:
            await connection.depart(config.replay_age)
        finally:
            request.app[DEPARTING].discard(connection)
    finally:
        feed.subscribers.discard(connection)
        await connection.close()
        if slot is not None:
            progress.release(slot)
        if not feed.subscribers and feeds.get(kernel_id) is feed:
            del feeds[kernel_id]
            await feed.close()
    return ws


def relay_event(app: web.Application, event: dict[str, Any]) -> None:
    """A kernel event the supervisor pushed, for the websockets on that kernel in this worker; or a
    reply (it has `parts`) that reached a departed connection of a session now connected here."""
    feed = app[FEEDS].get(event.get("kernel_id"))
    if "parts" in event:
        body = wire.unpack_parts(event["parts"])
        for connection in feed.subscribers if feed else ():
            if connection.session_id == event.get("session_id"):
                connection.deliver(event.get("channel"), body)
                return
        # The session left this worker meanwhile: the supervisor keeps the reply for its return.
        back = asyncio.create_task(_hand_back(app[SUPERVISOR], event["kernel_id"], event.get("session_id"),
                                              event.get("channel"), body))
        app[HANDED_BACK].add(back)
        back.add_done_callback(app[HANDED_BACK].discard)
    elif feed:
        feed.events.put_nowait(event)


async def _hand_back(supervisor: SupervisorClient, kernel_id: str, session_id: str, channel: str,
                     body: list[bytes]) -> None:
    try:
        await supervisor.session_reply(kernel_id, session_id, channel, body)
    except GatewayError as e:
        log.warning("Kernel %s: a %s reply for a session that left was lost: %s", kernel_id, channel, e)


async def close_all(app: web.Application) -> None:
    """On shutdown, tell every client the server is going away (1001) rather than just dropping it,
    and stop waiting for the replies of websockets already gone."""
    for connection in app[DEPARTING]:
        connection.end_grace()
    for feed in list(app[FEEDS].values()):
        for connection in list(feed.subscribers):
            await connection.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
