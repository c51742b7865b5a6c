"""Kernels whose output keeps the gateway busy run nicer than it, for as long as they do.

The gateway's work grows with what kernels print: the supervisor and a worker each take every message.
Kernels printing as fast as they can on every core would outweigh the gateway in the scheduler, and
REST calls, interrupts and websockets would wait behind them; the gateway must be able to outrun them.
A kernel that prints little costs the gateway next to nothing, so it keeps its full priority and runs
as fast as any other program on the machine, starting up included.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from . import liveness
from .process import set_niceness

if TYPE_CHECKING:
    from .kernels import Kernels

LOOK_EVERY = 0.25  # seconds
# Output past either within one look makes a kernel yield: at a few hundred messages a second, relaying
# them takes a good part of a core.
BUSY_MESSAGES = 25
BUSY_BYTES = 256 << 10
CALM_LOOKS = 20  # looks in a row below both before a kernel gets its priority back


class Priority:
    """One local kernel process's priority: lowered the moment its output since the last look crosses
    a threshold (a look may come late when kernels take the CPU, which is the very case), and given
    back after CALM_LOOKS calm looks."""

    def __init__(self, niceness: int, own: int):
        self.niceness, self.own = niceness, own
        self.pid: int | None = None
        self.messages = self.size = 0  # since the last look
        self.calm: int | None = None  # calm looks in a row while it yields; None: it does not

    def heard(self, parts: list[bytes]) -> None:
        self.messages += 1
        self.size += sum(map(len, parts))
        if self.calm != 0 and self.pid and (self.messages > BUSY_MESSAGES or self.size > BUSY_BYTES):
            if self.calm is None:
                set_niceness(self.pid, min(19, self.own + self.niceness), self.niceness)
            self.calm = 0

    def look(self, pid: int | None) -> None:
        if pid != self.pid:  # a new process (a restart) starts at full priority
            self.pid, self.calm = pid, None
        elif self.calm is not None and self.messages <= BUSY_MESSAGES and self.size <= BUSY_BYTES:
            self.calm += 1
            if self.calm >= CALM_LOOKS:
                set_niceness(pid, self.own, 0)
                self.calm = None
        self.messages = self.size = 0


async def yield_to_the_gateway(kernels: Kernels, niceness: int) -> None:
    """Meter every local kernel's output, and look at each meter every LOOK_EVERY."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    while True:
        await asyncio.sleep(LOOK_EVERY)
        for kernel in kernels.list():
            if (pid := liveness.local_pid(kernel.manager.provisioner)) is None:
                continue
            if kernel.iopub.meter is None:
                kernel.iopub.meter = Priority(niceness, own)
            kernel.iopub.meter.look(pid)
