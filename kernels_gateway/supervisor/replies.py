"""Replies for a websocket whose worker died with requests in flight.

A kernel routes each reply to the socket identity that sent the request, and drops it if no socket of
that identity is connected. A worker's request sockets carry their connection's id as identity, so
once the worker is gone the supervisor connects sockets of that identity and collects what comes, for
the session's return. A reply the kernel sends in the moment between the worker's death and these
sockets' connection finds nobody and is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from ..kernel_protocol import KERNEL_RECONNECT_MS, REPLY_CHANNELS, kernel_url, message_body


async def collect(context: zmq.asyncio.Context, info: dict[str, Any], identity: bytes, requests: int,
                  timeout: float, deliver: Callable[[str, list[bytes]], None]) -> None:
    """deliver(channel, body) each message the kernel sends to `identity`, until `requests` shell and
    control replies have come or `timeout` passed."""
    sockets = {}
    poller = zmq.asyncio.Poller()
    try:
        for channel in REPLY_CHANNELS:
            sock = sockets[channel] = context.socket(zmq.DEALER)
            sock.linger = 0
            sock.identity = identity
            sock.reconnect_ivl = KERNEL_RECONNECT_MS  # refused until the kernel has let the dead one go
            sock.connect(kernel_url(info, channel))
            poller.register(sock, zmq.POLLIN)
        channel_of = {sock: channel for channel, sock in sockets.items()}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while requests > 0:
                    for sock, _ in await poller.poll():
                        parts = await sock.recv_multipart()
                        body = message_body(parts)
                        if body is not None:
                            requests -= channel_of[sock] != "stdin"
                            deliver(channel_of[sock], body)
    finally:
        for sock in sockets.values():
            sock.close()
