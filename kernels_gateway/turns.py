"""Bulk work gets a bounded share of each turn of the event loop, whatever number of sockets it comes from.

Bulk work is relaying kernel messages and client frames: the iopub intake of the supervisor and of each
worker, each websocket's outbox and its reader. Everything else that is ready (a REST request, a
request on the supervisor's socket, an interrupt) then waits at most about that share per turn.

A task per socket that yields after each batch does not bound a turn: a turn of the event loop runs
every ready task once, so with twenty flooding sockets it lasts twenty batches, and a request that
needs several turns (accept, read, ask the supervisor, answer) waits that long at each. With the share,
a turn holds about SHARE_SECONDS of bulk work; the tasks that find it spent wait in line for the next
turn, and get theirs before the tasks that had work in this one, so that every socket gets its turns.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

SHARE_SECONDS = 0.001
# How many units of work one bulk task may do in a row, share or not.
IN_A_ROW = 16


class Share:
    def __init__(self, seconds: float = SHARE_SECONDS):
        self.seconds = seconds
        self._left = seconds
        self._waiting: deque[asyncio.Future] = deque()  # in line for the next turn
        self._woken = 0  # woken for this turn, not yet running: ahead of anyone who comes now
        self._next_turn: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def room(self, began: float) -> bool:
        """Whether this turn's share has room for more after bulk work that began at `began`
        (time.perf_counter()) and is not counted yet."""
        return self._left > time.perf_counter() - began

    def spend(self, began: float) -> None:
        """Count bulk work that began at `began` against this turn's share."""
        self._left -= time.perf_counter() - began
        self._renew_next_turn()

    async def turn(self) -> None:
        """Yield to everything else that is ready, then wait in line for a turn with room in the share."""
        await asyncio.sleep(0)
        loop = self._here()
        while self._waiting or self._woken or self._left <= 0:
            waiter = loop.create_future()
            self._waiting.append(waiter)
            self._renew_next_turn()
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif not waiter.cancelled():  # woken, and counted so, before the cancellation came
                    self._woken -= 1
                raise
            self._woken -= 1
            if self._left > 0:
                return

    def _here(self) -> asyncio.AbstractEventLoop:
        """The running event loop; on a new one (a test's), nothing is in line and the share is whole."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._next_turn = loop, None
            self._left, self._waiting, self._woken = self.seconds, deque(), 0
        return loop

    def _renew_next_turn(self) -> None:
        loop = self._here()
        if self._next_turn is None:  # callbacks scheduled during a turn run in the next one, never in the same
            self._next_turn = loop.call_soon(self._renew)

    def _renew(self) -> None:
        """A new turn: the share is whole again, and everyone in line may try it, in their order."""
        self._left, self._next_turn = self.seconds, None
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                self._woken += 1
                waiter.set_result(None)


class Pace:
    """How a bulk task that takes one unit of work at a time (a frame, a message) spends from the share:
    `await pace.turn()` once a unit is at hand, `pace.done()` once it is handled."""

    def __init__(self):
        self._share = BULK
        self._in_a_row = 0
        self._began = 0.0

    async def turn(self) -> None:
        self._in_a_row += 1
        if self._in_a_row >= IN_A_ROW or not self._share.room(time.perf_counter()):
            await self._share.turn()
            self._in_a_row = 0
        self._began = time.perf_counter()

    def done(self) -> None:
        if self._began:
            self._share.spend(self._began)
            self._began = 0.0


# One per process: the share bounds a turn only if every bulk task spends from the same one.
BULK = Share()
