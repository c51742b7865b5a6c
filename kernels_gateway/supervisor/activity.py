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
from collections.abc import Callable

import zmq.asyncio

from ..kernel_protocol import STATUS_TYPE, is_welcome, message_body, message_type, receive
from .replay import Replay, ReplayLimits
from .yielding import Priority

log = logging.getLogger("kernels_gateway.supervisor")

# Requests that clients and the gateway send while a kernel runs a cell (control answers even then):
# the busy/idle they cause says nothing about the kernel's work, as Jupyter Server also decided.
UNTRACKED = frozenset({
    "comm_info_request", "kernel_info_request", "shutdown_request", "interrupt_request", "debug_request",
    "history_request", "usage_request", "inspect_request", "complete_request", "is_complete_request",
})


class IOPub:
    def __init__(self, kernel_id: str, limits: ReplayLimits):
        self.kernel_id = kernel_id
        self.replay = Replay(limits)
        self.execution_state = "starting"
        self.last_activity = time.time()
        self.heard = asyncio.Event()  # set by every message: proof that the subscription is live
        # Hears every message first (parts after the signature); the execute API's tracking (executions.py).
        self.observer: Callable[[list[bytes]], None] | None = None
        self.meter: Priority | None = None  # told of every message the replay counts; see yielding.py

    async def watch(self, sub: zmq.asyncio.Socket) -> None:
        try:
            await receive(sub, self._received)
        finally:
            sub.close()

    def _received(self, parts: list[bytes]) -> None:
        body = message_body(parts)
        try:
            if body is None:
                raise ValueError("no message body")
            self._heard(body)
        except (ValueError, IndexError, KeyError, TypeError, AttributeError):
            log.warning("Kernel %s: unreadable iopub message ignored", self.kernel_id)

    def _heard(self, parts: list[bytes]) -> None:
        """parts: header, parent_header, metadata, content, *buffers. Only status messages and
        welcomes are parsed; everything else is kept as it came."""
        self.heard.set()
        if self.observer is not None:
            self.observer(parts)
        header = parts[0]
        if is_welcome(header):
            return  # the kernel greeting a subscription: not activity, and for no client
        now = time.time()
        self.last_activity = now
        if message_type(header, STATUS_TYPE) == "status":
            self._status(json.loads(parts[1]).get("msg_type"), json.loads(parts[3])["execution_state"])
        self.replay.heard(parts, now)
        if self.meter is not None:
            self.meter.heard()

    def _status(self, parent_type: str | None, state: str) -> None:
        """A kernel's state follows the requests that do its work. The status of any other request
        still says that a kernel reported as starting (or, once adopted, unknown) is up, as Jupyter
        Server decides: a start's own status can arrive after the kernel_info that proved it ready."""
        if parent_type not in UNTRACKED:
            self.execution_state = state
        elif self.execution_state in ("starting", "unknown") and state != "starting":
            self.execution_state = "idle"
