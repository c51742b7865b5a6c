"""What both halves say to kernels over ZMQ: endpoints, the iopub subscription and its proof, and the
parts of a message. The supervisor (its own iopub watch, readiness, seeding, replies) and the web
workers (their feeds and websockets) import it; nothing here belongs to either half.

No first output is lost: a SUB socket misses what a kernel publishes before the subscription has
reached it, so nothing is handed out (a started kernel, an accepted websocket) before a message has
come through the subscription (`prove_live`). A kernel with an XPUB iopub socket (ipykernel 7 and
later) greets each new subscription (`iopub_welcome`); every socket subscribes to a topic of its own
too, so that the kernel greets each, not only the first. Other kernels prove it with the status
messages of a kernel_info request. Greetings are for the gateway: clients never see them, and they
are no kernel activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from .turns import BULK, IN_A_ROW

DELIMITER = b"<IDS|MSG>"
CHANNELS = frozenset({"shell", "control", "stdin", "iopub"})
REPLY_CHANNELS = frozenset({"shell", "control", "stdin"})  # the channels that answer a client's requests
# What a kernel with an XPUB iopub socket sends each new subscription.
WELCOME = "iopub_welcome"
# Substrings that a header of these types must contain: tested before any JSON is parsed, so that the
# stream messages of a flood cost no parsing at all.
WELCOME_TYPE = f'"{WELCOME}"'.encode()
STATUS_TYPE = b'"status"'
# How much one socket may hand over in a row at most, beside the share of the turn (`turns.py`).
BATCH_BYTES = 1 << 20
# How often a socket retries a kernel endpoint not yet (or no longer) bound, in ms: ZMQ's 100 would add
# up to that to each kernel start and restart.
KERNEL_RECONNECT_MS = 10


def kernel_url(connection_info: dict[str, Any], channel: str) -> str:
    """The ZMQ endpoint of one of a kernel's channels, from its connection info."""
    port = connection_info[f"{channel}_port"]
    if connection_info["transport"] == "tcp":
        return f"tcp://{connection_info['ip']}:{port}"
    return f"{connection_info['transport']}://{connection_info['ip']}-{port}"


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


async def prove_live(heard: asyncio.Event, ask: Callable[[], Awaitable[None]], wait: float) -> None:
    """Return once a subscription has heard its kernel: `ask` (a kernel_info request, whose status
    messages the kernel publishes), then give iopub `wait` seconds to bring a message (`heard`, set by
    each), and again until one came. The caller clears `heard` for a new socket and bounds the proof."""
    while True:
        await ask()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heard.wait(), wait)
            return


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


def message_body(parts: list[bytes]) -> list[bytes] | None:
    """header, parent_header, metadata, content, *buffers: what follows the delimiter and signature."""
    try:
        body = parts[parts.index(DELIMITER) + 2 :]
    except ValueError:
        return None
    return body if len(body) >= 4 else None


def message_type(header: bytes, expected: bytes) -> str | None:
    """The msg_type of a header that may be of type `expected` (its quoted name), parsed only then."""
    return json.loads(header).get("msg_type") if expected in header else None


def is_welcome(header: bytes) -> bool:
    """Whether a header is an iopub_welcome's; the substring test keeps JSON off the hot path."""
    return message_type(header, WELCOME_TYPE) == WELCOME
