"""What waits between a kernel's ZMQ sockets and a websocket: bounded in bytes, never silently lossy.

ZMQ drops whatever exceeds a socket's high-water mark without a word, so the gateway reads its kernel
sockets as fast as they deliver and parks messages here while the websocket drains. A message is
taken while less than the bound waits ahead of it, however large it is, so a client that keeps up gets
all its output. Two things drop iopub output here, counted, and the client is told in-band what and
why, as a `stream` message on stderr, under the parent of the first message it lost, in the place of
what was lost (so before the `idle` that ends the cell):

- a client so slow that the bound is reached: output is dropped until half of the backlog is sent;
- a message larger than the largest websocket message (`--max-message-size`), for every client.

Replies on shell, control and stdin, and iopub status messages, are never dropped: they are small,
and a client waits for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from datetime import datetime, timezone
from uuid import uuid4

from ..kernel_protocol import STATUS_TYPE, message_type
from ..turns import Pace

log = logging.getLogger("kernels_gateway.channels")

NOTICE = "[kernels-gateway] {count} output messages ({size} bytes) were dropped: {reasons}\n"
SLOW = "this connection could not keep up (more than --max-output-buffer, {limit} bytes, waited to be sent)"
TOO_LARGE = "a message of {size} bytes is larger than a websocket message may be (--max-message-size, {limit} bytes)"


class Outbox:
    def __init__(self, limit: int, max_message: int, kernel_id: str = ""):
        self.limit = limit
        self.max_message = max_message
        self.kernel_id = kernel_id
        self._queue: deque[tuple[str, list[bytes], int]] = deque()
        self._bytes = 0
        self._waiting = asyncio.Event()
        self._slow = False  # dropping until the backlog has halved
        self._dropped_count = 0
        self._dropped_bytes = 0
        self._dropped_parent = b"{}"
        self._reasons: dict[str, None] = {}  # in the order they happened
        self._pace = Pace()  # sending what is handed out is bulk work

    def put(self, channel: str, body: list[bytes]) -> None:
        size = sum(map(len, body))
        # Status messages are tiny, and a lost `idle` would leave the client thinking the kernel busy.
        if channel == "iopub" and message_type(body[0], STATUS_TYPE) != "status":
            self._slow = self._bytes >= self.limit or (self._slow and self._bytes > self.limit // 2)
            if size > self.max_message:
                return self._drop(body, size, TOO_LARGE.format(size=size, limit=self.max_message))
            if self._slow:
                return self._drop(body, size, SLOW.format(limit=self.limit))
        if self._dropped_count:
            self._append("iopub", self._notice())  # where the gap is: before this message
        self._append(channel, body)

    def _append(self, channel: str, body: list[bytes]) -> None:
        size = sum(map(len, body))
        self._queue.append((channel, body, size))
        self._bytes += size
        self._waiting.set()

    def _drop(self, body: list[bytes], size: int, reason: str) -> None:
        if not self._dropped_count:
            self._dropped_parent = body[1]
        self._dropped_count += 1
        self._dropped_bytes += size
        self._reasons[reason] = None

    def empty(self) -> bool:
        return not self._queue and not self._dropped_count

    async def get(self) -> tuple[str, list[bytes]]:
        """The next message to send; a drop notice once all that came before the drop is sent. A
        backlog is handed out as bulk work (`turns.py`), since a websocket that takes every frame at
        once would otherwise keep the event loop to itself."""
        self._pace.done()  # sending the last message was bulk work too
        while not self._queue and not self._dropped_count:
            self._waiting.clear()
            await self._waiting.wait()
        await self._pace.turn()
        if not self._queue:
            return "iopub", self._notice()
        channel, body, size = self._queue.popleft()
        self._bytes -= size
        return channel, body

    def _notice(self) -> list[bytes]:
        reasons = "; ".join(self._reasons)
        text = NOTICE.format(count=self._dropped_count, size=self._dropped_bytes, reasons=reasons)
        log.warning("Kernel %s: %d output messages (%d bytes) dropped for one websocket: %s",
                    self.kernel_id, self._dropped_count, self._dropped_bytes, reasons)
        self._dropped_count = self._dropped_bytes = 0
        self._reasons = {}
        header = {
            "msg_id": uuid4().hex, "msg_type": "stream", "username": "kernels-gateway", "session": "",
            "date": datetime.now(timezone.utc).isoformat(), "version": "5.3",
        }
        return [json.dumps(header).encode(), self._dropped_parent, b"{}",
                json.dumps({"name": "stderr", "text": text}).encode()]
