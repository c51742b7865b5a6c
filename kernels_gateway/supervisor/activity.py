"""What the supervisor hears on a kernel's iopub: execution state, last activity, and recent output kept
for clients that reconnect.

One SUB socket per kernel. The supervisor never relays these messages live (workers have their own
sockets); it hands each to the kernel's replay (`replay.py`), so that a client reconnecting with the
same session_id, through any worker, gets what it missed while away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ..turns import BULK, IN_A_ROW
from .replay import Replay, ReplayLimits
from .wire import KERNEL_RECONNECT_MS, kernel_url

log = logging.getLogger("kernels_gateway.supervisor")

DELIMITER = b"<IDS|MSG>"
# What a kernel with an XPUB iopub socket (ipykernel 7 and later) sends each new subscription.
WELCOME = "iopub_welcome"
# Substrings that a header of these types must contain: tested before any JSON is parsed, so that the
# stream messages of a flood cost no parsing at all.
WELCOME_TYPE = f'"{WELCOME}"'.encode()
STATUS_TYPE = b'"status"'
# How much one socket may hand over in a row at most, beside the share of the turn (`turns.py`).
BATCH_BYTES = 1 << 20
# Requests that clients and the gateway send while a kernel runs a cell (control answers even then):
# the busy/idle they cause says nothing about the kernel's work, as Jupyter Server also decided.
UNTRACKED = frozenset({
    "comm_info_request", "kernel_info_request", "shutdown_request", "interrupt_request", "debug_request",
    "history_request", "usage_request", "inspect_request", "complete_request", "is_complete_request",
})


def subscriber(context: zmq.asyncio.Context, connection_info: dict[str, Any], rcvhwm: int = 1000) -> zmq.asyncio.Socket:
    """A SUB socket for everything on a kernel's iopub, which the kernel greets once it is live.

    A kernel with an XPUB iopub socket greets each subscription it hears of, but XPUB passes on only
    a topic's first subscription, and everyone subscribes to everything (b""): so each socket also
    subscribes to a topic of its own. A kernel that greets nobody is asked for kernel_info instead.
    """
    sub = context.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = rcvhwm
    sub.reconnect_ivl = KERNEL_RECONNECT_MS
    sub.subscribe(b"")
    sub.subscribe(f"kernels-gateway.{uuid.uuid4().hex}".encode())
    sub.connect(kernel_url(connection_info, "iopub"))
    return sub


async def receive(sock: zmq.asyncio.Socket, handle: Callable[[list[bytes]], None]) -> None:
    """Hand every message of `sock` to `handle`, forever, as bulk work (`turns.py`): once messages are
    queued, wait for a turn with room in the process's share, take what is queued up to the batch's
    bound or the share's without waiting, count the time spent, and start over. (An await on a socket
    with messages queued returns without yielding: a kernel printing in a loop would otherwise keep the
    event loop to itself.)"""
    queued = zmq.Socket.shadow(sock.underlying)  # plain non-blocking reads: no future per message
    while True:
        await sock.poll()
        await BULK.turn()
        began = time.perf_counter()
        count = size = 0
        try:
            while count < IN_A_ROW and size < BATCH_BYTES and BULK.room(began):
                parts = queued.recv_multipart(zmq.NOBLOCK)
                count, size = count + 1, size + sum(map(len, parts))
                handle(parts)
        except zmq.Again:
            pass
        BULK.spend(began)
        # The socket's file descriptor is edge-triggered, and reads behind pyzmq's back may have taken
        # the edge that a send or poll waiting on the same socket needed: asking pyzmq for the events wakes it.
        sock.get(zmq.EVENTS)


def message_type(header: bytes, expected: bytes) -> str | None:
    """The msg_type of a header that may be of type `expected` (its quoted name), parsed only then."""
    return json.loads(header).get("msg_type") if expected in header else None


class IOPub:
    def __init__(self, kernel_id: str, limits: ReplayLimits):
        self.kernel_id = kernel_id
        self.replay = Replay(limits)
        self.execution_state = "starting"
        self.last_activity = time.time()
        self.heard = asyncio.Event()  # set by every message: proof that the subscription is live
        # Hears every message first (parts after the signature); the execute API's tracking (executions.py).
        self.observer: Callable[[list[bytes]], None] | None = None

    async def watch(self, sub: zmq.asyncio.Socket) -> None:
        try:
            await receive(sub, self._received)
        finally:
            sub.close()

    def _received(self, parts: list[bytes]) -> None:
        try:
            self._heard(parts[parts.index(DELIMITER) + 2 :])
        except (ValueError, IndexError, KeyError, TypeError, AttributeError):
            log.warning("Kernel %s: unreadable iopub message ignored", self.kernel_id)

    def _heard(self, parts: list[bytes]) -> None:
        """parts: header, parent_header, metadata, content, *buffers. Only status messages and
        welcomes are parsed; everything else is kept as it came."""
        self.heard.set()
        if self.observer is not None:
            self.observer(parts)
        header = parts[0]
        if message_type(header, WELCOME_TYPE) == WELCOME:
            return  # the kernel greeting a subscription: not activity, and for no client
        now = time.time()
        self.last_activity = now
        if message_type(header, STATUS_TYPE) == "status":
            self._status(json.loads(parts[1]).get("msg_type"), json.loads(parts[3])["execution_state"])
        self.replay.heard(parts, now)

    def _status(self, parent_type: str | None, state: str) -> None:
        """A kernel's state follows the requests that do its work. The status of any other request
        still says that a kernel reported as starting (or, once adopted, unknown) is up, as Jupyter
        Server decides: a start's own status can arrive after the kernel_info that proved it ready."""
        if parent_type not in UNTRACKED:
            self.execution_state = state
        elif self.execution_state in ("starting", "unknown") and state != "starting":
            self.execution_state = "idle"
