"""The share of each event-loop turn that bulk work may take: however many sockets flood, whatever else
is ready runs after a bounded amount of their work, and every flooding socket still gets its turns."""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

from kernels_gateway.kernel_protocol import receive
from kernels_gateway.turns import BULK, SHARE_SECONDS

SOCKETS = 20
QUEUED = 400  # messages waiting on each socket before the loops start
WORK = SHARE_SECONDS / 10  # what handling one message costs here


def busy(seconds: float) -> None:
    ends = time.perf_counter() + seconds
    while time.perf_counter() < ends:
        pass


async def test_flooding_sockets_leave_every_turn_to_the_rest_after_a_bounded_share():
    context = zmq.asyncio.Context()
    pairs = []
    for number in range(SOCKETS):
        inbound, outbound = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
        inbound.rcvhwm = outbound.sndhwm = 0
        inbound.bind(f"inproc://turns-{number}")
        outbound.connect(f"inproc://turns-{number}")
        pairs.append((inbound, outbound))
    handled = [0] * SOCKETS
    loops = []
    try:
        for number, (inbound, outbound) in enumerate(pairs):
            for _ in range(QUEUED):
                await outbound.send_multipart([b"x" * 100])

            def handle(parts, number=number):
                handled[number] += 1
                busy(WORK)

            loops.append(asyncio.create_task(receive(inbound, handle)))
        per_turn = []
        while sum(handled) < SOCKETS * QUEUED // 2:
            before = sum(handled)
            await asyncio.sleep(0)  # what a REST request's next step does: it waits one turn
            per_turn.append(sum(handled) - before)
        # Two shares at most (the share renews once per turn, wherever the renewal falls in it), plus
        # the one message each socket may take when its turn comes; without the share, a turn held a
        # whole batch of every socket (16 each: 320 messages).
        assert max(per_turn) <= 2 * SHARE_SECONDS / WORK + SOCKETS, max(per_turn)
        # Every flooding socket gets its turns: none waits while the others take theirs again and again.
        # (A turn's size is its share of time, so a preempted process hands out uneven turns: half the mean
        # at least, where sockets served out of line got none at all.)
        assert min(handled) >= sum(handled) / SOCKETS / 2, handled
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for inbound, outbound in pairs:
            inbound.close()
            outbound.close()
        context.term()
    assert BULK.seconds == SHARE_SECONDS
    # The loops were cancelled while they waited in line: the line forgets them, or every bulk task after
    # them would wait a turn for nothing, for as long as the process runs (a websocket closing mid-flood).
    await asyncio.sleep(0)
    assert await _turns_to_a_share() == 1


async def _turns_to_a_share() -> int:
    """How many turns of the event loop bulk work waits for its share when nobody else wants it."""
    turns, stop = 0, False

    async def tick() -> None:
        nonlocal turns
        while not stop:
            turns += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = turns
    await BULK.turn()
    taken = turns - before
    stop = True
    await ticker
    return taken
