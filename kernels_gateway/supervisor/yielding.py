"""Kernels run nicer than the gateway whenever their output could keep it busy.

The gateway's work grows with what kernels print: the supervisor and a worker each take every message.
Kernels printing as fast as they can on every core would outweigh the gateway in the scheduler, and
REST calls, interrupts and websockets would wait behind them; the gateway must be able to outrun them.
Seeing a flood begin is too late: kernels flooding at full priority starve the supervisor that would
see it, and what they print meanwhile is a backlog the gateway chews through for seconds. So a kernel
waiting for work yields already, and whatever it runs next begins nicer.

A kernel that is not printing much costs the gateway next to nothing: one starting up, and one whose
work has been quiet for half a second, run at full priority, as fast as any other program on the
machine. A flood makes a kernel yield at once, until it has been calm for five seconds.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from . import liveness
from .process import set_niceness

if TYPE_CHECKING:
    from .kernels import Kernels
    from .replay import Replay

LOOK_EVERY = 0.25  # seconds
# Output past either within one look makes a kernel yield: at a few hundred messages a second, relaying
# them takes a good part of a core.
BUSY_MESSAGES = 25
BUSY_BYTES = 256 << 10
CALM_LOOKS = 20  # calm looks in a row before a kernel that flooded gets its priority back
# ... and one that works without printing much: the first look after its work began may have seen
# nothing of it yet.
WORK_CALM_LOOKS = 2


class Priority:
    """One local kernel process's priority: lowered once it is ready and whenever it waits for work,
    or at once when its output since the last look crosses a threshold; given back while it works
    quietly: after WORK_CALM_LOOKS calm looks, or CALM_LOOKS after a flood. Its full priority is the
    gateway's own, which a kernel it started inherits, and which one adopted from another supervisor
    gets back too, though it may have been yielding when that supervisor left."""

    def __init__(self, niceness: int, full: int, output: Replay):
        self.niceness, self.full = niceness, full
        self.output = output  # what counts the kernel's messages and bytes
        self.pid: int | None = None
        self.at_look = output.heard_so_far  # the counts at the last look
        self.yielding = False
        self.flooded = False  # whether its output crossed a threshold since it last had its priority
        self.calm = 0  # calm looks in a row while it works

    def heard(self) -> None:
        """The kernel published one more message."""
        if not self.flooded and self._flooding():
            self.flooded = True
            self._yield()

    def look(self, pid: int | None, state: str) -> None:
        """`state`: the kernel's execution state (activity.py)."""
        if pid != self.pid:  # a new process (a restart) runs as it was started
            self.pid, self.yielding, self.flooded, self.calm = pid, False, False, 0
        if self._flooding():
            self.flooded, self.calm = True, 0
            self._yield()
        else:  # calm looks count while it works
            self.calm = self.calm + 1 if state == "busy" else 0
        if state == "busy":
            if self.yielding and self.calm >= (CALM_LOOKS if self.flooded else WORK_CALM_LOOKS):
                set_niceness(self.pid, self.full, 0)
                self.yielding = self.flooded = False
        elif state != "starting":  # ready, and waiting for work (or unknown, adopted)
            self._yield()
        self.at_look = self.output.heard_so_far

    def _flooding(self) -> bool:
        (messages, size), (before, size_before) = self.output.heard_so_far, self.at_look
        return messages - before > BUSY_MESSAGES or size - size_before > BUSY_BYTES

    def _yield(self) -> None:
        if not self.yielding and self.pid:
            set_niceness(self.pid, min(19, self.full + self.niceness), self.niceness)
            self.yielding = True


async def yield_to_the_gateway(kernels: Kernels, niceness: int) -> None:
    """Meter every local kernel's output, and look at each meter every LOOK_EVERY."""
    full = os.getpriority(os.PRIO_PROCESS, 0)
    while True:
        await asyncio.sleep(LOOK_EVERY)
        for kernel in kernels.list():
            if (pid := liveness.local_pid(kernel.manager.provisioner)) is None:
                continue
            if kernel.iopub.meter is None:
                kernel.iopub.meter = Priority(niceness, full, kernel.iopub.replay)
            kernel.iopub.meter.look(pid, kernel.iopub.execution_state)
