"""A kernel's priority follows its work and its output (supervisor/yielding.py), on a real process
leading a session of its own."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kernels_gateway.supervisor.replay import Replay, ReplayLimits
from kernels_gateway.supervisor.yielding import BUSY_BYTES, BUSY_MESSAGES, CALM_LOOKS, WORK_CALM_LOOKS, Priority

MESSAGE = [b"{}", b"{}", b"{}", b'{"name": "stdout", "text": "x"}']
PRIVILEGED = os.geteuid() == 0  # a thread's niceness comes down only with CAP_SYS_NICE; a session's always does


def priority_of(pid: int) -> tuple[int, int | None]:
    """A process's niceness, and its session's where the scheduler weighs sessions (autogroup)."""
    autogroup = Path(f"/proc/{pid}/autogroup")
    return os.getpriority(os.PRIO_PROCESS, pid), int(autogroup.read_text().split()[-1]) if autogroup.exists() else None


@pytest.fixture
def process():
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def metered() -> Priority:
    """A kernel's priority, 7 nicer when it yields, counting on a replay buffer as the supervisor's does."""
    return Priority(7, 0, Replay(ReplayLimits()))


def hear(priority: Priority, parts: list[bytes]) -> None:
    """A message, in the order the supervisor's iopub intake takes it: the replay counts it, then the meter."""
    priority.output.heard(parts, time.time())
    priority.heard()


def nicer(started: tuple[int, int | None], by: int = 7) -> tuple[int, int | None]:
    return started[0] + by, None if started[1] is None else started[1] + by


def given_back(started: tuple[int, int | None]) -> tuple[int, int | None]:
    return started if PRIVILEGED else (nicer(started)[0], started[1])


def test_a_kernel_runs_at_full_priority_while_starting_and_yields_once_it_waits_for_work(process):
    started = priority_of(process)
    priority = metered()
    priority.look(process, "starting")
    assert priority_of(process) == started
    priority.look(process, "idle")
    assert priority_of(process) == nicer(started)


def test_quiet_work_gets_the_priority_back_and_waiting_for_work_yields_again(process):
    started = priority_of(process)
    priority = metered()
    priority.look(process, "idle")
    for _ in range(WORK_CALM_LOOKS):
        assert priority_of(process) == nicer(started)
        hear(priority, MESSAGE)
        priority.look(process, "busy")
    assert priority_of(process) == given_back(started)
    priority.look(process, "idle")
    assert priority_of(process) == nicer(started)


def test_a_flood_yields_at_once_and_only_five_calm_seconds_of_work_give_the_priority_back(process):
    started = priority_of(process)
    priority = metered()
    priority.look(process, "idle")
    priority.look(process, "busy")
    priority.look(process, "busy")
    assert priority_of(process) == given_back(started)  # quiet work
    for _ in range(BUSY_MESSAGES + 1):
        hear(priority, MESSAGE)
    assert priority_of(process)[1] == nicer(started)[1]  # at once, before the next look
    priority.look(process, "busy")
    hear(priority, [b"x" * (BUSY_BYTES + 1)])  # one large message counts as much
    priority.look(process, "busy")
    for _ in range(CALM_LOOKS - 1):
        priority.look(process, "busy")
        assert priority_of(process)[1] == nicer(started)[1]
    priority.look(process, "busy")
    assert priority_of(process)[1] == started[1]


def test_a_restarted_process_runs_as_it_started(process):
    priority = metered()
    priority.look(12345678, "idle")  # the old process, gone
    started = priority_of(process)
    priority.look(process, "starting")
    assert not priority.yielding and priority_of(process) == started


def test_a_kernel_adopted_while_it_yielded_gets_the_gateways_priority_back(process):
    Path(f"/proc/{process}/autogroup").write_text("19\n")  # as the supervisor before left it
    os.setpriority(os.PRIO_PROCESS, process, 19)
    priority = metered()
    priority.look(process, "unknown")
    for _ in range(WORK_CALM_LOOKS):
        priority.look(process, "busy")
    assert priority_of(process) == ((0 if PRIVILEGED else 19), 0)
