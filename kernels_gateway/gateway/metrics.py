"""What a web worker counts, and `{base}/metrics`.

The relay counts messages and bytes in plain integers: no lock, no system call, nothing on the hot path
but two additions. The worker hands what changed to the supervisor every few seconds, on its way out,
and before it answers a scrape; the supervisor keeps the one registry (supervisor/metrics.py), so every
worker shows the numbers of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from ..supervisor.client import SupervisorClient
from ..errors import GatewayError
from .frames import CHANNELS
from .keys import RELAYED, SUPERVISOR

log = logging.getLogger("kernels_gateway.web")

TO_CLIENT, TO_KERNEL = "to_client", "to_kernel"
REPORT_INTERVAL = 5.0
FINAL_REPORT_TIMEOUT = 2.0


class RelayCounts:
    def __init__(self) -> None:
        # [messages, bytes] for each direction and channel, made up front: counting only adds to them.
        self.cells = {direction: {channel: [0, 0] for channel in CHANNELS} for direction in (TO_CLIENT, TO_KERNEL)}
        self.opened = 0  # websockets
        self._reported, self._reported_opened = self._totals(), 0
        self._reporting = asyncio.Lock()

    def count(self, direction: str, channel: str, size: int) -> None:
        cell = self.cells[direction][channel]
        cell[0] += 1
        cell[1] += size

    def _totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {
            (direction, channel): (cell[0], cell[1])
            for direction, cells in self.cells.items() for channel, cell in cells.items()
        }

    async def report(self, supervisor: SupervisorClient) -> None:
        """Send what changed since the last report that arrived; after a failure, the next one sends it."""
        async with self._reporting:
            totals, opened = self._totals(), self.opened
            counts = [
                [*key, messages - self._reported[key][0], size - self._reported[key][1]]
                for key, (messages, size) in totals.items() if (messages, size) != self._reported[key]
            ]
            if counts or opened != self._reported_opened:
                await supervisor.relayed(counts, opened - self._reported_opened)
            self._reported, self._reported_opened = totals, opened


async def relay_counts(app: web.Application) -> AsyncIterator[None]:
    """The counts, their periodic report, and a last report when the worker stops."""
    app[RELAYED] = counts = RelayCounts()
    task = asyncio.create_task(_report_every(counts, app[SUPERVISOR]), name="relay-reports")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with contextlib.suppress(GatewayError, TimeoutError):
        await asyncio.wait_for(counts.report(app[SUPERVISOR]), FINAL_REPORT_TIMEOUT)


async def _report_every(counts: RelayCounts, supervisor: SupervisorClient) -> None:
    while True:
        await asyncio.sleep(REPORT_INTERVAL)
        try:
            await counts.report(supervisor)
        except GatewayError as e:
            log.debug("Relay counts not reported: %s", e.message)


async def metrics(request: web.Request) -> web.Response:
    """GET {base}/metrics: the whole gateway's metrics in Prometheus's text format."""
    supervisor = request.app[SUPERVISOR]
    await request.app[RELAYED].report(supervisor)
    found = await supervisor.metrics()
    return web.Response(body=found["text"].encode(), headers={"Content-Type": found["content_type"]})
