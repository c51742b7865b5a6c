"""After a kernel dies and is restarted, clients end on a state they believe: `idle`.

JupyterLab takes a kernel's state from iopub `status` messages, but ignores those whose parent is one
of Jupyter Server's untracked message types (kernel_info_request, debug_request, ...). A restarted
process's own `starting`, then only those, would leave it showing "Starting"; Jupyter Server does
exactly that. Here the last state a client tracks after a restart is `idle`, whether its websocket
stays open or it reconnects with its session as JupyterLab does, and whether the kernel restarts in
place or a warm spare takes over.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

from .conftest import eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import start_kernel

# What Jupyter Server tells JupyterLab to ignore (its page config's untracked_message_types).
UNTRACKED = frozenset(MappingKernelManager.class_traits()["untracked_message_types"].default())


async def tracked_states_until_idle(sock: KernelSocket, first: str | None = None) -> list[str]:
    """The states a client that ignores untracked parents goes through, up to a tracked `idle` (after
    `first`, when given)."""
    states: list[str] = []
    async with asyncio.timeout(30):
        while not states or states[-1] != "idle" or (first and first not in states):
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "status" and msg["parent_header"].get("msg_type") not in UNTRACKED:
                states.append(msg["content"]["execution_state"])
    return states


async def kernel_pid(sock: KernelSocket) -> int:
    _, stdout = await sock.execute("import os; print(os.getpid())")
    return int(stdout)


@pytest.mark.parametrize("pool, workers", [("none", "1"), ("python3=1", "1"), ("none", "2")],
                         ids=["in place", "warm spare", "two workers"])
async def test_clients_track_idle_after_an_automatic_restart(start_gateway, http, pool, workers):
    gw = await start_gateway("--initial-kernels", "0", "--pool", pool, "--workers", workers)
    if pool != "none":  # the gateway serves before its first spare is ready: a start then launches its own
        await eventually(lambda: asyncio.sleep(0, "Warm kernel ready" in gw.log()))
    kernel_id = await start_kernel(http, gw)
    staying = await KernelSocket.open(http, gw, kernel_id)
    leaving = await KernelSocket.open(http, gw, kernel_id, v1=True)
    pid = await kernel_pid(staying)
    spare = None
    if pool != "none":  # the spare taken by the start is replaced a second later
        await eventually(lambda: asyncio.sleep(0, gw.log().count("Warm kernel ready") == 2))
        [spare] = set(kernel_pids(gw.runtime_dir)) - {pid}
    os.kill(pid, signal.SIGKILL)

    # JupyterLab closes its websocket on `restarting` and opens another with the same session.
    async with asyncio.timeout(30):
        while (await leaving.receive())["content"].get("execution_state") != "restarting":
            pass
    await leaving.close()
    returned = await KernelSocket.open(http, gw, kernel_id, v1=True, session_id=leaving.session_id)
    await returned.send(returned.message("kernel_info_request", {}))

    states = await tracked_states_until_idle(staying, first="restarting")
    assert states[0] == "restarting", states
    await tracked_states_until_idle(returned)  # from the replay of what its session missed, or live

    for sock in (staying, returned):
        _, stdout = await sock.execute("print('back')")
        assert stdout == "back\n"
    new_pid = await kernel_pid(staying)
    assert new_pid != pid and (spare is None or new_pid == spare)  # the warm spare took over
    assert f"Kernel {kernel_id} died; restarting it" in gw.log()
    for sock in (staying, returned):
        await sock.close()


async def test_a_kernel_killed_while_flooding_output_comes_back_idle(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id, max_msg_size=0)
    pid = await kernel_pid(sock)
    flood = "import sys\nwhile True: sys.stdout.write('x' * 65536); sys.stdout.flush()"
    await sock.send(sock.message("execute_request", {"code": flood, "silent": False}))
    async with asyncio.timeout(30):
        while (await sock.receive())["header"]["msg_type"] != "stream":
            pass
    os.kill(pid, signal.SIGKILL)

    states = await tracked_states_until_idle(sock, first="restarting")
    assert states[0] == "restarting" and states[-1] == "idle", states
    _, stdout = await sock.execute("print('back')")
    assert stdout == "back\n"
    await sock.close()
