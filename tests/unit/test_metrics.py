"""Relay counts: a worker reports what changed, and again after a report that failed; the supervisor takes
only well-formed reports."""

from __future__ import annotations

import pytest

from kernels_gateway.gateway.metrics import TO_CLIENT, TO_KERNEL, RelayCounts
from kernels_gateway.supervisor import metrics
from kernels_gateway.errors import BadRequest, SupervisorUnavailable


class Supervisor:
    def __init__(self):
        self.reports, self.down = [], False

    async def relayed(self, counts, opened):
        if self.down:
            raise SupervisorUnavailable("down")
        self.reports.append((sorted(counts), opened))


async def test_reports_carry_what_changed_since_the_last_one_that_arrived():
    counts, supervisor = RelayCounts(), Supervisor()
    counts.count(TO_CLIENT, "iopub", 10)
    counts.count(TO_CLIENT, "iopub", 5)
    counts.opened += 1
    await counts.report(supervisor)
    await counts.report(supervisor)  # nothing new: nothing sent
    counts.count(TO_KERNEL, "shell", 7)
    supervisor.down = True
    with pytest.raises(SupervisorUnavailable):
        await counts.report(supervisor)
    supervisor.down = False
    counts.count(TO_KERNEL, "shell", 1)
    await counts.report(supervisor)
    assert supervisor.reports == [
        ([["to_client", "iopub", 2, 15]], 1),
        ([["to_kernel", "shell", 2, 8]], 0),
    ]


def test_supervisor_adds_reports_and_refuses_malformed_ones():
    def total(name, **labels):
        return metrics.REGISTRY.get_sample_value(name, labels) or 0

    before = total("kernels_gateway_websocket_bytes_total", direction="to_kernel", channel="stdin")
    metrics.add_relayed([["to_kernel", "stdin", 1, 40]], 0)
    assert total("kernels_gateway_websocket_bytes_total", direction="to_kernel", channel="stdin") == before + 40
    for counts, opened in [
        ("many", 0), ([["sideways", "shell", 1, 1]], 0), ([["to_kernel", "nope", 1, 1]], 0),
        ([["to_kernel", "shell", -1, 1]], 0), ([["to_kernel", "shell", 1]], 0), ([], -1), ([], True),
        ([["to_kernel", "shell", 1.5, 1]], 0),
    ]:
        with pytest.raises(BadRequest):
            metrics.add_relayed(counts, opened)
    assert total("kernels_gateway_websocket_bytes_total", direction="to_kernel", channel="stdin") == before + 40
