"""What waits between a kernel's ZMQ sockets and a websocket: bounded in bytes, never silently lossy.

ZMQ drops whatever exceeds a socket's high-water mark without a word, so the gateway reads its kernel
sockets as fast as they deliver and parks messages here while the websocket drains. If a client is so
slow that the bound is reached, further iopub output is dropped here, counted, and the client is told
in-band how much, as a `stream` message on stderr under the parent of the first message it lost.
Replies on shell, control and stdin, and iopub status messages, are never dropped: they are small,
and a client waits for them.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from datetime import datetime, timezone
from uuid import uuid4

NOTICE = "[kernels-gateway] {count} output messages ({size} bytes) were dropped: this connection could not keep up\n"


class Outbox:
    def __init__(self, limit: int):
        self.limit = limit
        self._queue: deque[tuple[str, list[bytes], int]] = deque()
        self._bytes = 0
        self._waiting = asyncio.Event()
        self._dropped_count = 0
        self._dropped_bytes = 0
        self._dropped_parent = b"{}"

    def put(self, channel: str, body: list[bytes]) -> None:
        size = sum(map(len, body))
        # Status messages are tiny, and a lost `idle` would leave the client thinking the kernel busy.
        if channel == "iopub" and self._bytes + size > self.limit and json.loads(body[0]).get("msg_type") != "status":
            if not self._dropped_count:
                self._dropped_parent = body[1]
            self._dropped_count += 1
            self._dropped_bytes += size
            return
        self._queue.append((channel, body, size))
        self._bytes += size
        self._waiting.set()

    def empty(self) -> bool:
        return not self._queue and not self._dropped_count

    async def get(self) -> tuple[str, list[bytes]]:
        """The next message to send; a drop notice first once the backlog has halved."""
        if self._dropped_count and self._bytes <= self.limit // 2:
            return "iopub", self._notice()
        while not self._queue:
            self._waiting.clear()
            await self._waiting.wait()
        channel, body, size = self._queue.popleft()
        self._bytes -= size
        return channel, body

    def _notice(self) -> list[bytes]:
        text = NOTICE.format(count=self._dropped_count, size=self._dropped_bytes)
        self._dropped_count = self._dropped_bytes = 0
        header = {
            "msg_id": uuid4().hex, "msg_type": "stream", "username": "kernels-gateway", "session": "",
            "date": datetime.now(timezone.utc).isoformat(), "version": "5.3",
        }
        return [json.dumps(header).encode(), self._dropped_parent, b"{}",
                json.dumps({"name": "stderr", "text": text}).encode()]
