"""Hangs are detected and bounded: a stopped supervisor costs prompt 503s, a stopped worker is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import pytest

from .conftest import eventually
from .kernel_client import KernelSocket
from .test_process import children
from .test_survival import json_of, start_kernel

# Far longer than any deadline of a worker's request to the supervisor: a request that is still
# unanswered after this was waiting for the supervisor to wake up.
PATIENCE = aiohttp.ClientTimeout(total=15)


def child_pids(gw, role: str) -> list[int]:
    return [pid for pid, cmd in children(gw.process.pid).items() if f"kernels_gateway {role}" in cmd]


@contextlib.contextmanager
def stopped(pid: int):
    """SIGSTOP a process for the block; SIGCONT it whatever happens, so that it can be stopped after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have been killed meanwhile
            os.kill(pid, signal.SIGCONT)


async def test_a_stopped_supervisor_costs_prompt_503s_and_then_everything_works_again(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    [supervisor] = child_pids(gw, "supervisor")
    [worker] = child_pids(gw, "web")
    with stopped(supervisor):
        async def websocket_refused():
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                async with asyncio.timeout(PATIENCE.total):
                    await http.ws_connect(f"{gw.ws_url}/api/kernels/{kernel_id}/channels")
            return refused.value.status

        answers = await asyncio.gather(
            json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}", timeout=PATIENCE),
            json_of(http, "GET", f"{gw.url}/api/kernels", timeout=PATIENCE),
            json_of(http, "POST", f"{gw.url}/api/kernels/{kernel_id}/interrupt", timeout=PATIENCE),
            websocket_refused(),
        )
    for status, body in answers[:3]:
        assert status == 503 and "supervisor is not reachable" in body["message"]
    assert answers[3] == 503

    # Awake again: the same worker serves, its connection to the supervisor is the one it had.
    status, model = await eventually(lambda: _ok(http, f"{gw.url}/api/kernels/{kernel_id}"))
    assert model["id"] == kernel_id
    sock = await KernelSocket.open(http, gw, kernel_id)
    _, stdout = await sock.execute("print('awake')")
    assert stdout == "awake\n"
    await sock.close()
    assert child_pids(gw, "web") == [worker] and child_pids(gw, "supervisor") == [supervisor]
    assert await gw.stop() == 0


async def _ok(http, url: str):
    status, body = await json_of(http, "GET", url)
    return (status, body) if status == 200 else None


async def test_a_stopped_worker_is_replaced_and_nothing_else_is(start_gateway, http):
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0", "--watchdog-timeout", "3")
    stuck, other = child_pids(gw, "web")
    [supervisor] = child_pids(gw, "supervisor")

    async def replaced():
        workers = child_pids(gw, "web")
        return stuck not in workers and len(workers) == 2

    with stopped(stuck):
        await eventually(replaced, timeout=60)
    assert "sent no watchdog ping for 3 s" in gw.log()
    # Every new connection is served again, whichever listening socket the kernel hands it to.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(20):
            status, _ = await json_of(fresh, "GET", f"{gw.url}/api", timeout=PATIENCE)
            assert status == 200
    # The live ones kept pinging: neither was taken for hung.
    assert other in child_pids(gw, "web") and child_pids(gw, "supervisor") == [supervisor]
    assert await gw.stop() == 0
