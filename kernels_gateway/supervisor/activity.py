"""What the supervisor hears on a kernel's iopub: execution state, last activity, and recent output kept
for clients that reconnect.

One SUB socket per kernel. The supervisor never relays these messages live (workers have their own
sockets); it keeps a bounded buffer so that a client reconnecting with the same session_id, through any
worker, gets what it missed while away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from .wire import KERNEL_RECONNECT_MS, kernel_url

log = logging.getLogger("kernels_gateway.supervisor")

DELIMITER = b"<IDS|MSG>"
# What a kernel with an XPUB iopub socket (ipykernel 7 and later) sends each new subscription.
WELCOME = "iopub_welcome"
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


@dataclass(frozen=True)
class ReplayLimits:
    max_bytes: int = 8 << 20
    max_age: float = 120.0


class IOPub:
    def __init__(self, kernel_id: str, limits: ReplayLimits):
        self.kernel_id = kernel_id
        self.limits = limits
        self.execution_state = "starting"
        self.last_activity = time.time()
        self.heard = asyncio.Event()  # set by every message: proof that the subscription is live
        self._seq = 0
        self._buffer: deque[tuple[int, float, list[bytes]]] = deque()
        self._buffered_bytes = 0
        self._departed: dict[str, tuple[str | None, int, float]] = {}
        # Hears every message first (parts after the signature); the execute API's tracking (executions.py).
        self.observer: Callable[[list[bytes]], None] | None = None

    async def watch(self, sub: zmq.asyncio.Socket) -> None:
        try:
            while True:
                parts = await sub.recv_multipart()
                try:
                    self._heard(parts[parts.index(DELIMITER) + 2 :])
                except (ValueError, IndexError, KeyError, TypeError):
                    log.warning("Kernel %s: unreadable iopub message ignored", self.kernel_id)
        finally:
            sub.close()

    def _heard(self, parts: list[bytes]) -> None:
        """parts: header, parent_header, metadata, content, *buffers."""
        self.heard.set()
        if self.observer is not None:
            self.observer(parts)
        msg_type = json.loads(parts[0]).get("msg_type")
        if msg_type == WELCOME:
            return  # the kernel greeting a subscription: not activity, and for no client
        now = time.time()
        self.last_activity = now
        if msg_type == "status" and json.loads(parts[1]).get("msg_type") not in UNTRACKED:
            self.execution_state = json.loads(parts[3])["execution_state"]
        self._seq += 1
        self._buffer.append((self._seq, now, parts))
        self._buffered_bytes += sum(map(len, parts))
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = now - self.limits.max_age
        while self._buffer and (self._buffered_bytes > self.limits.max_bytes or self._buffer[0][1] < oldest):
            _, _, parts = self._buffer.popleft()
            self._buffered_bytes -= sum(map(len, parts))

    # -- replay --------------------------------------------------------------------------------

    def depart(self, session_id: str, last_msg_id: str | None) -> None:
        """A client of this session went away, having last seen `last_msg_id` (None: unknown, as when
        its worker died). Where that message sits is looked up on return: this SUB socket may not
        have received it yet."""
        self._departed[session_id] = (last_msg_id, self._seq, time.time())

    def missed(self, session_id: str) -> list[list[bytes]]:
        """What the session missed since it departed; each message is returned once."""
        now = time.time()
        self._trim(now)
        self._departed = {s: d for s, d in self._departed.items() if d[2] > now - self.limits.max_age}
        departed = self._departed.pop(session_id, None)
        if departed is None:
            return []
        last_msg_id, after, _ = departed
        if last_msg_id:
            for number, _, parts in reversed(self._buffer):
                if json.loads(parts[0]).get("msg_id") == last_msg_id:
                    after = number
                    break
        return [parts for number, _, parts in self._buffer if number > after]
