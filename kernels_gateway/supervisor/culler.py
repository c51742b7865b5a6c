"""Culling: kernels idle for longer than --cull-idle-timeout, and dead ones, are shut down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from . import metrics
from ..errors import KernelNotFound

if TYPE_CHECKING:
    from .kernels import Kernels

log = logging.getLogger("kernels_gateway.supervisor")


async def cull(kernels: Kernels) -> None:
    """Every cull interval, shut down kernels idle for longer than the timeout, and dead ones.
    `connected` and `busy` kernels count as idle only when the options say so."""
    config = kernels.config
    while True:
        await asyncio.sleep(config.cull_interval)
        now = time.time()
        for kernel in kernels.list():
            state = kernel.iopub.execution_state
            idle = now - kernel.iopub.last_activity > config.cull_idle_timeout
            if state == "dead" or (
                idle
                and (config.cull_busy or state != "busy")
                and (config.cull_connected or kernel.connections == 0)
            ):
                log.warning("Culling kernel %s (%s, %d connections, idle %.0f s)", kernel.id, state,
                            kernel.connections, now - kernel.iopub.last_activity)
                with contextlib.suppress(KernelNotFound):
                    await kernels.shutdown(kernel.id, why="culled")
                    metrics.KERNEL_CULLS.labels(kernel.name).inc()
