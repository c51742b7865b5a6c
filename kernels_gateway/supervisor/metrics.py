"""The one registry behind `{base}/metrics`, kept by the supervisor for the whole gateway.

Every web worker answers `/metrics` with what the supervisor renders here, so whichever worker a scrape
reaches, it sees the same numbers:

- the supervisor's own counters and histograms (kernel starts, restarts, culls, start latency, request
  latency), updated where the events happen;
- the kernels by state and kernelspec, and the websockets open, read from the registry of kernels at
  scrape time (no upkeep between scrapes);
- what the workers relayed, which they count in plain integers and report every few seconds and
  before each scrape (gateway/metrics.py).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Container, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric

from ..errors import BadRequest, KernelStartFailed
from ..kernel_protocol import CHANNELS
from .remote import host_of

disable_created_metrics()  # a `_created` series per counter would double the output for little use
REGISTRY = CollectorRegistry()

KERNEL_STARTS = Counter(
    "kernels_gateway_kernel_starts", "Kernels started", ["kernelspec"], registry=REGISTRY
)
KERNEL_START_FAILURES = Counter(
    "kernels_gateway_kernel_start_failures", "Kernels that failed to start", ["kernelspec"], registry=REGISTRY
)
KERNEL_START_SECONDS = Histogram(
    "kernels_gateway_kernel_start_seconds", "Seconds from launching a kernel to its first answer",
    ["kernelspec"], buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120), registry=REGISTRY,
)
KERNEL_RESTARTS = Counter(
    "kernels_gateway_kernel_restarts", "Kernel restarts, asked for by a client (request) or after the "
    "kernel died (automatic)", ["kernelspec", "cause"], registry=REGISTRY,
)
KERNEL_CULLS = Counter(
    "kernels_gateway_kernel_culls", "Idle kernels shut down by the culler", ["kernelspec"], registry=REGISTRY
)
REQUEST_SECONDS = Histogram(
    "kernels_gateway_supervisor_request_seconds", "Seconds the supervisor took to answer a worker's request",
    ["op", "outcome"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
EXECUTIONS = Counter(
    "kernels_gateway_executions", "Code run through the execute API, by how it ended", ["status"], registry=REGISTRY
)
EXECUTION_SECONDS = Histogram(
    "kernels_gateway_execution_seconds", "Seconds from sending an execution to the kernel to its end",
    ["status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
    registry=REGISTRY,
)
WEBSOCKETS_OPENED = Counter(
    "kernels_gateway_websockets_opened", "Websockets opened to kernels", registry=REGISTRY
)
MESSAGES_RELAYED = Counter(
    "kernels_gateway_websocket_messages", "Kernel messages relayed between websockets and kernels",
    ["direction", "channel"], registry=REGISTRY,
)
BYTES_RELAYED = Counter(
    "kernels_gateway_websocket_bytes", "Websocket payload bytes relayed (characters for text frames)",
    ["direction", "channel"], registry=REGISTRY,
)
DIRECTIONS = frozenset({"to_client", "to_kernel"})


class KernelsCollector:
    """Gauges read from the registry of kernels when scraped."""

    def __init__(self) -> None:
        self.kernels = None  # the supervisor's Kernels, once it has them

    def collect(self) -> Iterator[Metric]:
        kernels = self.kernels.list() if self.kernels is not None else []
        by_state = GaugeMetricFamily(
            "kernels_gateway_kernels", "Kernels by execution state and kernelspec", labels=["state", "kernelspec"]
        )
        for (state, name), count in sorted(Tally((k.iopub.execution_state, k.name) for k in kernels).items()):
            by_state.add_metric([state, name], count)
        yield by_state
        by_host = GaugeMetricFamily(
            "kernels_gateway_kernels_by_host", "Kernels by the host they run on (local: this machine)", labels=["host"]
        )
        for host, count in sorted(Tally(host_of(k.manager) for k in kernels).items()):
            by_host.add_metric([host], count)
        yield by_host
        yield GaugeMetricFamily(
            "kernels_gateway_websocket_connections", "Websockets open to kernels",
            value=sum(k.connections for k in kernels),
        )


KERNELS = KernelsCollector()
REGISTRY.register(KERNELS)


@contextlib.contextmanager
def kernel_start(kernelspec: str) -> Iterator[None]:
    """Count a kernel's launch and time it, or count its failure."""
    started = time.monotonic()
    try:
        yield
    except KernelStartFailed:
        KERNEL_START_FAILURES.labels(kernelspec).inc()
        raise
    KERNEL_STARTS.labels(kernelspec).inc()
    KERNEL_START_SECONDS.labels(kernelspec).observe(time.monotonic() - started)


def request_done(op: Any, known: Container[str], ok: bool, seconds: float) -> None:
    label = op if isinstance(op, str) and op in known else "unknown"  # labels only from the table of ops
    REQUEST_SECONDS.labels(label, "ok" if ok else "error").observe(seconds)


def execution_done(status: str, seconds: float) -> None:
    EXECUTIONS.labels(status).inc()
    EXECUTION_SECONDS.labels(status).observe(seconds)


def watch(kernels) -> None:
    KERNELS.kernels = kernels


def render() -> dict[str, str]:
    return {"text": generate_latest(REGISTRY).decode(), "content_type": CONTENT_TYPE_LATEST}


def add_relayed(counts: Any, opened: Any) -> None:
    """Add what a worker relayed since its last report: [[direction, channel, messages, bytes], ...]."""
    if not isinstance(counts, list) or not _count(opened):
        raise BadRequest("relayed wants counts (a list) and opened (a count)")
    for entry in counts:
        if not (isinstance(entry, list) and len(entry) == 4 and entry[0] in DIRECTIONS and entry[1] in CHANNELS
                and _count(entry[2]) and _count(entry[3])):
            raise BadRequest("each count is [direction, channel, messages, bytes]")
    for direction, channel, messages, size in counts:
        MESSAGES_RELAYED.labels(direction, channel).inc(messages)
        BYTES_RELAYED.labels(direction, channel).inc(size)
    WEBSOCKETS_OPENED.inc(opened)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
