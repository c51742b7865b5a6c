"""Bulk work gets a bounded share of each turn of the event loop, whatever number of sockets it comes from.

Bulk work is relaying kernel messages and client frames: the iopub intake of the supervisor and of each
worker, each websocket's outbox and its reader. Everything else that is ready (a REST request, a
request on the supervisor's socket, an interrupt) then waits at most that share per turn.

A task per socket that yields after each batch does not bound a turn: a turn of the event loop runs
every ready task once, so with twenty flooding sockets it lasts twenty batches, and a request that
needs several turns (accept, read, ask the supervisor, answer) waits that long at each. With the
share, a turn holds at most SHARE_SECONDS of bulk work; the tasks that find it spent step aside until
the next turn, in their order, so that every socket still gets its turn.
"""

from __future__ import annotations

import asyncio
import time

SHARE_SECONDS = 0.001
# How many units of work one bulk task may do in a row before it steps aside, share or not: so that each
# flooding socket takes its turn in the share.
IN_A_ROW = 16


class Share:
    def __init__(self, seconds: float = SHARE_SECONDS):
        self.seconds = seconds
        self._left = seconds
        self._renewal: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def has_room(self) -> bool:
        return self._left > 0

    def room(self, began: float) -> bool:
        """Whether this turn's share has room for more after bulk work that began at `began`
        (time.perf_counter()) and is not yet counted."""
        return self._left > time.perf_counter() - began

    def spend(self, began: float) -> None:
        """Count bulk work that began at `began` (time.perf_counter()) against this turn's share."""
        self._left -= time.perf_counter() - began
        loop = asyncio.get_running_loop()
        if self._renewal is None or self._loop is not loop:
            # Runs in the next turn: callbacks scheduled during a turn never run in the same one.
            self._loop, self._renewal = loop, loop.call_soon(self._renew)

    def _renew(self) -> None:
        self._left, self._renewal = self.seconds, None

    async def turn(self) -> None:
        """Yield to everything else that is ready, then wait for a turn with room in the share."""
        await asyncio.sleep(0)
        # A share spent on another event loop (a test's) is renewed by the next spend on this one.
        while self._left <= 0 and self._loop is asyncio.get_running_loop():
            await asyncio.sleep(0)


class Pace:
    """How one bulk task that takes a unit of work at a time (a frame, a message) spends from the share:
    `await pace.next()` before waiting for the next unit, `pace.begin()` once it has come."""

    def __init__(self, share: Share):
        self._share = share
        self._in_a_row = 0
        self._began = 0.0

    async def next(self) -> None:
        if self._began:
            self._share.spend(self._began)
            self._began = 0.0
        self._in_a_row += 1
        if self._in_a_row >= IN_A_ROW or not self._share.has_room():
            await self._share.turn()
            self._in_a_row = 0

    def begin(self) -> None:
        self._began = time.perf_counter()


# One per process: the share bounds a turn only if every bulk task spends from the same one.
BULK = Share()
