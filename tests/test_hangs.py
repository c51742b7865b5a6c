"""Hangs are detected and bounded: a stopped supervisor costs prompt 503s, a stopped child is replaced;
and a worker hears what a new supervisor says of the websockets it announces again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import aiohttp
import pytest

from .conftest import eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import child_pids, json_of, start_kernel

# Far longer than any deadline of a worker's request to the supervisor: a request that is still
# unanswered after this was waiting for the supervisor to wake up.
PATIENCE = aiohttp.ClientTimeout(total=15)


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
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0", "--watchdog-timeout", "5")
    stuck, other = child_pids(gw, "web")
    [supervisor] = child_pids(gw, "supervisor")

    async def replaced():
        workers = child_pids(gw, "web")
        return stuck not in workers and len(workers) == 2

    with stopped(stuck):
        await eventually(replaced, timeout=60)
    assert "sent no watchdog ping for 5 s" in gw.log()
    # Every new connection is served again, whichever listening socket the kernel hands it to.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(20):
            status, _ = await json_of(fresh, "GET", f"{gw.url}/api", timeout=PATIENCE)
            assert status == 200
    # The live ones kept pinging: neither was taken for hung.
    assert other in child_pids(gw, "web") and child_pids(gw, "supervisor") == [supervisor]
    assert await gw.stop() == 0


async def test_a_stopped_supervisor_is_replaced_and_its_successor_adopts_the_kernels(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--watchdog-timeout", "5")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    await sock.execute("x = 42")
    [supervisor] = child_pids(gw, "supervisor")

    async def replaced():
        return child_pids(gw, "supervisor") not in ([], [supervisor])

    with stopped(supervisor):
        await eventually(replaced, timeout=60)
    status, model = await eventually(lambda: _ok(http, f"{gw.url}/api/kernels/{kernel_id}"))
    assert "supervisor (pid %d) sent no watchdog ping" % supervisor in gw.log()
    _, stdout = await sock.execute("print(x)")  # the same kernel process, adopted
    assert stdout == "42\n"
    await sock.close()
    assert await gw.stop() == 0


async def test_websockets_counted_in_again_on_a_new_supervisor_report_what_failed(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    status, [model] = await json_of(http, "GET", f"{web.url}/api/kernels")
    sock = await KernelSocket.open(http, web, model["id"])
    supervisor.process.kill()
    supervisor.process.wait()
    # The kernel dies while nobody watches: the next supervisor forgets it, and the worker hears so when
    # it announces its websocket on it again.
    for pid in kernel_pids(supervisor.runtime_dir):
        os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _no_kernels(supervisor))
    supervisor.process = None
    supervisor.log_file.close()
    await supervisor.start(wait_for="Kernel started")
    status, kernels = await eventually(lambda: _ok(http, f"{web.url}/api/kernels"))
    assert model["id"] not in [k["id"] for k in kernels]
    assert f"A websocket on kernel {model['id']} could not be counted in again" in web.log()
    await sock.close()


async def _no_kernels(gw) -> bool:
    return not kernel_pids(gw.runtime_dir)


async def test_restarts_that_keep_failing_never_end_the_gateway(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    [supervisor] = child_pids(gw, "supervisor")
    with stopped(gw.process.pid):  # the arbiter restarts nothing until another supervisor holds the directory
        os.kill(supervisor, signal.SIGKILL)
        squatter = await start_gateway("--runtime-dir", str(gw.runtime_dir), "--initial-kernels", "0",
                                       command=("supervisor",), wait_for="Supervisor listening")

    async def failed_restarts():
        return gw.log().count("Restarting supervisor failed") >= 5  # where it used to give up

    await eventually(failed_restarts, timeout=100)
    assert gw.process.poll() is None
    status, _ = await json_of(http, "GET", f"{gw.url}/api", timeout=PATIENCE)  # the workers serve on
    assert status == 200
    assert await squatter.stop() == 0
    assert await gw.stop() == 0
