"""Warm kernels: started and answering before anyone asks, so a start request costs a dictionary pop.

The pool keeps `size` ready kernels per kernelspec and refills in the background, a moment after a
kernel was taken and then one start at a time per kernelspec, so that refilling never competes with
requests for more than one kernel's start-up.
Pooled kernels are not listed and do not count against the kernel limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .launcher import Kernel, Launcher

log = logging.getLogger("kernels_gateway.supervisor")

RETRY_AFTER = 5.0  # a kernelspec whose kernels fail to start is not retried in a tight loop
# A kernel just taken is about to answer its client's first requests. A start-up beside it burns a core
# on imports for half a second or more, which on a small machine doubles those first round trips; the
# refill waits until they are done.
REFILL_AFTER = 1.0


class WarmPool:
    def __init__(self, sizes: dict[str, int], launcher: Launcher):
        self.sizes = {name: size for name, size in sizes.items() if size > 0}
        self._launcher = launcher
        self._ready: dict[str, list[Kernel]] = {name: [] for name in self.sizes}
        self._wanted: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.sizes}
        self._fillers: list[asyncio.Task] = []

    def start(self) -> None:
        self._fillers = [asyncio.create_task(self._fill(name), name=f"pool-{name}") for name in self.sizes]

    async def take(self, name: str) -> Kernel | None:
        """A ready kernel of this kernelspec, or None when there is none to spare."""
        spares = self._ready.get(name)
        while spares:
            kernel = spares.pop(0)
            self._wanted[name].set()
            if await kernel.manager.is_alive():
                return kernel
            await self._launcher.discard(kernel)
        return None

    async def _fill(self, name: str) -> None:
        while True:
            while len(self._ready[name]) < self.sizes[name]:
                try:
                    kernel = await self._launcher.launch(name, {}, pooled=True)
                    self._ready[name].append(kernel)
                    log.info("Warm kernel ready: %s (%s)", kernel.id, name)
                except Exception as e:
                    log.error("Warm kernel of %s failed to start: %s", name, e)
                    await asyncio.sleep(RETRY_AFTER)
            await self._wanted[name].wait()
            self._wanted[name].clear()
            await asyncio.sleep(REFILL_AFTER)

    async def close(self) -> None:
        for filler in self._fillers:
            filler.cancel()
        await asyncio.gather(*self._fillers, return_exceptions=True)
        spares = [kernel for kernels in self._ready.values() for kernel in kernels]
        self._ready = {name: [] for name in self.sizes}
        await asyncio.gather(*(self._launcher.discard(kernel) for kernel in spares), return_exceptions=True)
