"""What a web worker counts, and `{base}/metrics`.

The relay counts messages and bytes in plain integers: no lock, no system call, nothing on the hot path
but two dict updates. The worker hands what changed to the supervisor every few seconds, on its way out,
and before it answers a scrape; the supervisor keeps the one registry (supervisor/metrics.py), so every
worker shows the numbers of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from ..supervisor.client import SupervisorClient
from ..supervisor.errors import GatewayError
from .keys import SUPERVISOR

log = logging.getLogger("kernels_gateway.web")

TO_CLIENT, TO_KERNEL = "to_client", "to_kernel"
REPORT_INTERVAL = 5.0
FINAL_REPORT_TIMEOUT = 2.0


class RelayCounts:
    def __init__(self) -> None:
        self.messages: Counter[tuple[str, str]] = Counter()
        self.bytes: Counter[tuple[str, str]] = Counter()
        self.opened = 0  # websockets
        self._reported: tuple[Counter, Counter, int] = (Counter(), Counter(), 0)
        self._reporting = asyncio.Lock()

    def count(self, direction: str, channel: str, size: int) -> None:
        key = (direction, channel)
        self.messages[key] += 1
        self.bytes[key] += size

    async def report(self, supervisor: SupervisorClient) -> None:
        """Send what changed since the last report that arrived; after a failure, the next one sends it."""
        async with self._reporting:
            messages, sizes, opened = self.messages.copy(), self.bytes.copy(), self.opened
            sent_messages, sent_sizes, sent_opened = self._reported
            counts = [
                [*key, messages[key] - sent_messages[key], sizes[key] - sent_sizes[key]]
                for key in messages if messages[key] != sent_messages[key]
            ]
            if counts or opened != sent_opened:
                await supervisor.relayed(counts, opened - sent_opened)
            self._reported = (messages, sizes, opened)


RELAYED = web.AppKey("relayed", RelayCounts)


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
