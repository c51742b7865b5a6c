"""The replay buffer and session positions (supervisor/replay.py), and the progress file they read."""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import time

from kernels_gateway import progress
from kernels_gateway.supervisor.replay import Replay, ReplayLimits, memory_cost


def message(number: int, size: int = 0) -> list[bytes]:
    header = {"msg_id": f"k_1_{number}", "msg_type": "stream", "session": "k"}
    return [json.dumps(header).encode(), json.dumps({"msg_id": "cell"}).encode(), b"{}", b"x" * size]


def numbers(messages) -> list:
    return [json.loads(parts[0])["msg_id"].rsplit("_", 1)[1] if json.loads(parts[0])["session"] else "notice"
            for _, parts in messages]


def hear(replay: Replay, first: int, last: int, age: float = 0, size: int = 0) -> None:
    for number in range(first, last + 1):
        replay.heard(message(number, size), time.time() - age)


async def test_a_new_session_gets_nothing_and_a_returning_one_what_follows_its_position():
    replay = Replay(ReplayLimits())
    hear(replay, 1, 3)
    missed = await replay.opened("s", "c1")
    assert missed.messages == [] and not missed.returning
    hear(replay, 4, 6)
    replay.closed("s", "c1", "k_1_5")  # read up to 5
    hear(replay, 7, 8)
    missed = await replay.opened("s", "c2")
    assert missed.returning and numbers(missed.messages) == ["6", "7", "8"]
    replay.closed("s", "c2", None)  # nothing read on c2: the position stands
    assert numbers((await replay.opened("s", "c3")).messages) == ["6", "7", "8"]


async def test_what_the_limits_dropped_is_announced_first_with_its_count_and_size():
    replay = Replay(ReplayLimits(max_bytes=sum(memory_cost(message(n, 100)) for n in range(21, 31))))
    hear(replay, 1, 2, size=100)
    await replay.opened("s", "c1")
    replay.closed("s", "c1", "k_1_2")
    hear(replay, 3, 30, size=100)  # only the last ten fit
    missed = await replay.opened("s", "c2")
    assert numbers(missed.messages) == ["notice"] + [str(n) for n in range(21, 31)]
    text = json.loads(missed.messages[0][1][3])["text"]
    size = sum(len(b"".join(message(n, 100))) for n in range(3, 21))
    assert f"18 output messages ({size} bytes) were dropped" in text
    assert json.loads(missed.messages[0][1][1]) == {"msg_id": "cell"}  # under the kept output's parent


async def test_age_drops_too_and_an_empty_buffer_still_says_so():
    replay = Replay(ReplayLimits(max_age=10))
    hear(replay, 1, 1, age=100)
    await replay.opened("s", "c1")
    replay.closed("s", "c1", "k_1_1")
    hear(replay, 2, 4, age=100)
    hear(replay, 5, 5)  # everything older than 10 s goes
    missed = await replay.opened("s", "c2")
    assert numbers(missed.messages) == ["notice", "5"]
    assert "3 output messages" in json.loads(missed.messages[0][1][3])["text"]


async def test_a_position_not_heard_yet_is_waited_for():
    replay = Replay(ReplayLimits())
    await replay.opened("s", "c1")
    hear(replay, 1, 2)
    replay.closed("s", "c1", "k_1_4")  # the worker's feed was ahead of this one
    returning = asyncio.create_task(replay.opened("s", "c2"))
    await asyncio.sleep(0)
    hear(replay, 3, 6)
    assert numbers((await returning).messages) == ["5", "6"]



async def test_a_position_heard_late_counts_though_the_limits_dropped_it_before_the_return():
    """A client read message 4 before this socket heard it; a flood then pushed 4 out of the buffer
    before the session came back. The position is still 4, so the notice counts only 5 to 20."""
    replay = Replay(ReplayLimits(max_bytes=sum(memory_cost(message(n, 100)) for n in range(21, 31))))
    await replay.opened("s", "c1")
    hear(replay, 1, 2, size=100)
    replay.closed("s", "c1", "k_1_4")
    hear(replay, 3, 30, size=100)
    missed = await asyncio.wait_for(replay.opened("s", "c2"), 1)  # nothing left to wait for
    assert numbers(missed.messages) == ["notice"] + [str(n) for n in range(21, 31)]
    assert "16 output messages" in json.loads(missed.messages[0][1][3])["text"]

async def test_a_session_back_before_its_old_connection_closed_takes_over_from_its_progress():
    replay = Replay(ReplayLimits())
    await replay.opened("s", "c1", progress=lambda: "k_1_3")
    hear(replay, 1, 5)
    missed = await replay.opened("s", "c2")  # c1's worker stalled or died, unknown yet
    assert numbers(missed.messages) == ["4", "5"]
    replay.closed("s", "c1", "k_1_1")  # superseded: it no longer moves the session
    replay.closed("s", "c2", "k_1_5")
    hear(replay, 6, 6)
    assert numbers((await replay.opened("s", "c3")).messages) == ["6"]


async def test_join_fills_a_gap_or_says_where_the_repeats_end():
    replay = Replay(ReplayLimits())
    await replay.opened("s", "c1")
    hear(replay, 1, 5)
    replay.closed("s", "c1", "k_1_2")
    assert numbers((await replay.opened("s", "c2")).messages) == ["3", "4", "5"]
    hear(replay, 6, 9)
    # The live feed begins at 8: 6 and 7 fell between the replay and it.
    assert await replay.join("s", "k_1_8") == ([message(6), message(7)], None)
    # The live feed begins at 4, behind the replay's end: it repeats up to 5.
    assert await replay.join("s", "k_1_4") == ([], "k_1_5")
    # Right after the replay's end: nothing to do.
    assert await replay.join("s", "k_1_6") == ([], None)


async def test_replies_wait_for_the_session_and_come_after_its_output():
    replay = Replay(ReplayLimits())
    await replay.opened("s", "c1")
    hear(replay, 1, 1)
    assert replay.reply("s", "shell", [b"reply"]) is False  # connected: the caller hands it over
    replay.closed("s", "c1", "k_1_1")
    hear(replay, 2, 2)
    assert replay.reply("s", "shell", [b"reply"]) is True
    missed = await replay.opened("s", "c2")
    assert missed.messages[-1] == ("shell", [b"reply"]) and numbers(missed.messages[:-1]) == ["2"]
    replay.closed("s", "c2", "k_1_2")
    assert (await replay.opened("s", "c3")).messages == []  # given once


def test_progress_round_trip_and_a_torn_slot_is_never_read(tmp_path):
    path = tmp_path / "progress-1"
    published = progress.ProgressMap(path)
    slot = published.take()
    assert progress.read(str(path), slot) == (None, 0)
    published.write(slot, "k_1_42", 3)
    assert progress.read(str(path), slot) == ("k_1_42", 3)
    published.write(slot, "x" * 500, 1)  # no kernel's msg_id: nothing rather than something wrong
    assert progress.read(str(path), slot) == (None, 1)
    struct.pack_into("<I", published._map, slot * progress.SLOT, 7)  # a write in progress, forever
    assert progress.read(str(path), slot) == (None, 0)
    assert progress.read(str(path), progress.SLOTS) == (None, 0)
    assert progress.read(str(tmp_path / "missing"), 0) == (None, 0)
    published.close()
    assert not path.exists()


def test_buffered_messages_are_no_work_for_the_garbage_collector():
    """A flood buffers a hundred thousand messages; a full collection walked every one of them."""
    replay = Replay(ReplayLimits())
    hear(replay, 1, 1000)
    gc.collect()
    assert not any(map(gc.is_tracked, replay._buffer))
