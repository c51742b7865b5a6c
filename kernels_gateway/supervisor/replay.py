"""One kernel's recent iopub output, kept for the sessions that reconnect, and where each session is.

Every message the supervisor hears gets a number and its place (in bytes) in the kernel's whole output.
A session's position is the last message its client is known to have read: the gateway counts a
message as read only once the client's websocket answered a ping sent after it (see
`gateway/channels.py`), so a position errs early, never late. A session that comes back, through any
worker, gets what follows its position: first a notice if `--replay-bytes` or `--replay-age` dropped
some of it, then the messages, then the replies that reached its departed connection.

Positions arrive as msg_ids (the workers' feeds and this one hear the same stream, numbered nowhere):
a msg_id is looked up here; one this socket has not heard yet is watched for in what it hears next,
for the message may be gone from the buffer by the time its session returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import uuid4

from .wire import FIND_TIMEOUT

log = logging.getLogger("kernels_gateway.supervisor")

NOTICE = ("[kernels-gateway] {count} output messages ({size} bytes) were dropped while this session was away:"
          " older than --replay-age or beyond --replay-bytes\n")
# Departed sessions remembered per kernel, and replies kept per session; the oldest go first.
MAX_DEPARTED = 1000
MAX_REPLIES = 1000
# What Python spends on a buffered message besides its bytes (the entry, the list, each part's object
# header): counted against the replay budget, which for small messages would otherwise hold half again
# as much memory as it says.
MESSAGE_OVERHEAD = 200
PART_OVERHEAD = 40
# Seconds a position not heard yet is watched for: a msg_id this socket never hears (a notice the
# gateway wrote, say) must not cost every message a look for ever.
WATCH_FOR = 30.0


def memory_cost(parts: list[bytes]) -> int:
    """The memory a buffered message holds, as the replay budget counts it."""
    return MESSAGE_OVERHEAD + sum(len(part) + PART_OVERHEAD for part in parts)


@dataclass(frozen=True)
class ReplayLimits:
    max_bytes: int = 8 << 20
    max_age: float = 120.0


# A buffered message is one flat tuple: seq, time, end (the bytes of the kernel's output up to and
# including it), then its parts (header, parent_header, metadata, content, *buffers). Python's garbage
# collector stops tracking a tuple of numbers and bytes; a flood buffers a hundred thousand messages, and
# each full collection that walked them held the supervisor's loop for up to half a second.
Entry = tuple
SEQ, TIME, END, HEADER = range(4)
PARTS = slice(HEADER, None)


@dataclass
class Session:
    seq: int  # the last message its client is known to have read
    end: int
    pending: str | None = None  # a msg_id read by the client that this socket had not heard yet
    # Open connections, each with what reads its progress should its worker die without a word.
    connections: dict[str, Callable[[], str | None] | None] = field(default_factory=dict)
    replies: list[tuple[str, list[bytes]]] = field(default_factory=list)
    joined: int = 0  # the last message of the replay its newest connection was sent


@dataclass
class Missed:
    messages: list[tuple[str, list[bytes]]]  # (channel, body), the notice first when there is one
    returning: bool  # whether the worker must join this replay to its live feed


class Replay:
    def __init__(self, limits: ReplayLimits):
        self.limits = limits
        self._buffer: deque[Entry] = deque()
        self._seq = 0
        self._end = 0
        self._buffered = 0
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._waiters: list[asyncio.Future] = []
        self._watched: dict[str, tuple[Session, float]] = {}  # session_id -> its session, watched until

    # -- the buffer ----------------------------------------------------------------------------

    @property
    def heard_so_far(self) -> tuple[int, int]:
        """How many messages, and how many bytes, this kernel has published."""
        return self._seq, self._end

    def heard(self, parts: list[bytes], now: float) -> None:
        size = sum(map(len, parts))
        self._seq += 1
        self._end += size
        entry = (self._seq, now, self._end, *parts)
        self._buffer.append(entry)
        self._buffered += memory_cost(parts)
        self._trim(now)
        if self._watched:
            self._arrived(entry, now)
        if self._waiters:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters = []

    def _trim(self, now: float) -> None:
        oldest = now - self.limits.max_age
        while self._buffer and (self._buffered > self.limits.max_bytes or self._buffer[0][TIME] < oldest):
            self._buffered -= memory_cost(self._buffer.popleft()[PARTS])

    def _arrived(self, entry: Entry, now: float) -> None:
        """The sessions whose client read this message before this socket heard it take their place."""
        for session_id, (session, until) in list(self._watched.items()):
            if session.pending is None or until < now:
                del self._watched[session_id]
            elif session.pending.encode() in entry[HEADER] and _msg_id(entry) == session.pending:
                del self._watched[session_id]
                self._place(session, entry)

    def _find(self, msg_id: str) -> Entry | None:
        """The newest buffered message with this id; the byte test keeps JSON off all but the match."""
        needle = msg_id.encode()
        for entry in reversed(self._buffer):
            if needle in entry[HEADER] and _msg_id(entry) == msg_id:
                return entry
        return None

    async def _find_soon(self, msg_id: str, timeout: float = FIND_TIMEOUT) -> Entry | None:
        """Find a message a client read, which this socket may not have heard yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (entry := self._find(msg_id)) is None and loop.time() < deadline:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, deadline - loop.time())
            except TimeoutError:
                break
        return entry

    # -- sessions ------------------------------------------------------------------------------

    async def opened(self, session_id: str, connection: str, progress: Callable[[], str | None] | None = None,
                     replay: bool = True) -> Missed:
        """A connection of this session opened: what the session missed, if it was here before.

        A session whose earlier connection still looks open (its worker stalled or died and nobody
        has said so yet) takes over from that connection's last published progress."""
        session = self._sessions.get(session_id)
        if session is None or not replay:
            if session is None:
                session = self._sessions[session_id] = Session(self._seq, self._end)
            session.connections[connection] = progress
            session.joined = self._seq
            return Missed([], False)
        self._sessions.move_to_end(session_id)
        for old, read in list(session.connections.items()):
            self._advance(session, session_id, read() if read else None)
            del session.connections[old]  # superseded: what it reports later no longer counts
        session.connections[connection] = progress
        if session.pending:
            entry = await self._find_soon(session.pending)
            if entry is None:  # the one earlier position known stands: repeats, never losses
                log.warning("Session %s read a message this supervisor never heard; replaying from before it", session_id)
                session.pending = None
            else:
                self._place(session, entry)
        self._trim(time.time())
        messages: list[tuple[str, list[bytes]]] = []
        kept = [entry for entry in self._buffer if entry[SEQ] > session.seq]
        first_kept = kept[0] if kept else None
        lost = (first_kept[SEQ] if first_kept else self._seq + 1) - session.seq - 1
        if lost > 0:
            lost_bytes = (first_kept[END] - sum(map(len, first_kept[PARTS])) if first_kept else self._end) - session.end
            parent = first_kept[HEADER + 1] if first_kept else b"{}"
            messages.append(("iopub", notice(NOTICE.format(count=lost, size=lost_bytes), parent)))
        messages += [("iopub", list(entry[PARTS])) for entry in kept]
        messages += session.replies
        session.replies = []
        session.joined = self._seq
        return Missed(messages, True)

    async def join(self, session_id: str, until: str) -> tuple[list[list[bytes]], str | None]:
        """Where a returning connection's live feed begins (`until`, its first live message) against
        what its replay sent: the messages between the two, or else the last replayed message, up to
        which the feed repeats what was sent and must be skipped."""
        session = self._sessions.get(session_id)
        entry = await self._find_soon(until)
        if session is None or entry is None:
            return [], None
        if entry[SEQ] > session.joined + 1:
            return [list(e[PARTS]) for e in self._buffer if session.joined < e[SEQ] < entry[SEQ]], None
        if entry[SEQ] <= session.joined:
            last = next((e for e in reversed(self._buffer) if e[SEQ] == session.joined), None)
            return [], _msg_id(last) if last else None
        return [], None

    def closed(self, session_id: str, connection: str, last_msg_id: str | None) -> None:
        """A connection went away, its client having read up to `last_msg_id` (None: as far as its
        published progress says, for a worker that died)."""
        session = self._sessions.get(session_id)
        if session is None or connection not in session.connections:
            return  # superseded by a newer connection of the same session
        read = session.connections.pop(connection)
        self._advance(session, session_id, last_msg_id or (read() if read else None))
        if not session.connections:
            self._sessions.move_to_end(session_id)
            self._forget()

    def _advance(self, session: Session, session_id: str, msg_id: str | None) -> None:
        if not msg_id:
            return
        entry = self._find(msg_id)
        if entry is None:  # not heard here yet: watched for, and looked up again on return
            session.pending = msg_id
            self._watched[session_id] = (session, time.time() + WATCH_FOR)
        elif entry[SEQ] > session.seq:
            self._place(session, entry)

    @staticmethod
    def _place(session: Session, entry: Entry) -> None:
        """The session's client read this message: its position is there, if that is further on."""
        if entry[SEQ] > session.seq:
            session.seq, session.end = entry[SEQ], entry[END]
        session.pending = None

    def reply(self, session_id: str, channel: str, parts: list[bytes]) -> bool:
        """A reply that reached a departed connection: kept for the session's return, unless the
        session is connected again (False: the caller hands it to that connection)."""
        session = self._sessions.get(session_id)
        if session is None:
            return True  # nobody to give it to; dropped as the kernel would
        if session.connections:
            return False
        session.replies.append((channel, parts))
        del session.replies[:-MAX_REPLIES]
        return True

    def connected_elsewhere(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        return bool(session and session.connections)

    def _forget(self) -> None:
        departed = [s for s, session in self._sessions.items() if not session.connections]
        for session_id in departed[: max(0, len(departed) - MAX_DEPARTED)]:
            del self._sessions[session_id]


def _msg_id(entry: Entry) -> str | None:
    return json.loads(entry[HEADER]).get("msg_id")


def notice(text: str, parent: bytes) -> list[bytes]:
    """A `stream` message on stderr from the gateway itself: how clients are told in-band."""
    header = {
        "msg_id": uuid4().hex, "msg_type": "stream", "username": "kernels-gateway", "session": "",
        "date": datetime.now(timezone.utc).isoformat(), "version": "5.3",
    }
    return [json.dumps(header).encode(), parent, b"{}", json.dumps({"name": "stderr", "text": text}).encode()]
