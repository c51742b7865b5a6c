"""The processes: launch kernel, base paths, the two halves, permissions, and a stop that leaves nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from .conftest import HERE, eventually, kernel_pids, write_kernelspec
from .helpers import children, start_kernel, wait_for_status


async def get_json(http, url: str):
    async with http.get(url) as r:
        return r.status, await r.json()


async def test_launch_kernel_from_kernel_name_and_clean_stop(start_gateway, http, tmp_path):
    write_kernelspec(tmp_path, "other-python")
    gw = await start_gateway(env={"JUPYTER_PATH": str(tmp_path), "KERNEL_NAME": "other-python"})
    status, kernels = await get_json(http, f"{gw.url}/api/kernels")
    assert status == 200
    assert [k["name"] for k in kernels] == ["other-python"]
    assert f"Kernel started: {kernels[0]['id']}" in gw.log()
    assert f"Serving at http://127.0.0.1:{gw.port}/api/kernels" in gw.log()

    # The supervisor is its own process, and the kernels are its children, not the web worker's.
    tree = children(gw.process.pid)
    roles = {cmd.split("kernels_gateway ")[1].split()[0]: pid for pid, cmd in tree.items()}
    assert set(roles) == {"supervisor", "web"}
    assert len(kernel_pids(gw.runtime_dir)) == 1
    kernel_children = {pid for pid, cmd in children(roles["supervisor"]).items() if "forkserver" not in cmd}
    assert set(kernel_pids(gw.runtime_dir)) == kernel_children  # forked or not; the template is its own

    async with http.post(f"{gw.url}/api/kernels", json={}) as r:
        second = (await r.json())["id"]
    assert len(kernel_pids(gw.runtime_dir)) == 2
    assert await gw.stop(signal.SIGTERM) == 0
    assert kernel_pids(gw.runtime_dir) == []
    assert f"Kernel shutdown: {kernels[0]['id']}" in gw.log()
    assert f"Kernel shutdown: {second}" in gw.log()
    assert not any(Path(pid_dir).exists() for pid_dir in (f"/proc/{p}" for p in tree))


async def test_ctrl_c_stops_everything(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "2")
    assert len(kernel_pids(gw.runtime_dir)) == 2
    assert await gw.stop(signal.SIGINT) == 0
    assert kernel_pids(gw.runtime_dir) == []


async def test_stop_kills_a_kernel_that_ignores_shutdown(start_gateway, http, tmp_path):
    write_kernelspec(tmp_path, "stubborn", [sys.executable, str(HERE / "kernels" / "stubborn.py"), "-f", "{connection_file}"])
    gw = await start_gateway("--shutdown-wait", "2", "--kernel-name", "stubborn", env={"JUPYTER_PATH": str(tmp_path)})
    [pid] = kernel_pids(gw.runtime_dir)
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == []
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("base, prefix", [("jupyter", "/jupyter"), ("/krn/", "/krn"), ("/", ""), ("/a/b", "/a/b")])
async def test_base_path_variants(start_gateway, http, base, prefix):
    gw = await start_gateway("--base-path", base, "--initial-kernels", "0")
    root = f"http://127.0.0.1:{gw.port}"
    assert f"Serving at {root}{prefix}/api/kernels" in gw.log()
    status, _ = await get_json(http, f"{root}{prefix}/api/kernels")
    assert status == 200
    status, specs = await get_json(http, f"{root}{prefix}/api/kernelspecs")
    assert specs["kernelspecs"]["python3"]["resources"]["logo-64x64"].startswith(f"{prefix}/kernelspecs/")
    if prefix:
        status, _ = await get_json(http, f"{root}/api/kernels")
        assert status == 404


async def test_halves_run_separately_and_web_answers_503_without_supervisor(start_gateway, http):
    web = await start_gateway(command=("web",))
    status, body = await get_json(http, f"{web.url}/api/kernels")
    assert status == 503
    assert "supervisor" in body["message"]

    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    supervisor_sock = supervisor.runtime_dir / "supervisor.sock"
    web2 = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    status, kernels = await get_json(http, f"{web2.url}/api/kernels")
    assert status == 200 and len(kernels) == 1

    # Permissions: only the owner reaches the socket, the connection files, the IPC sockets.
    assert stat.S_IMODE(os.stat(supervisor.runtime_dir).st_mode) & 0o777 == 0o700  # jupyter_client may add the sticky bit
    assert stat.S_IMODE(os.stat(supervisor_sock).st_mode) == 0o600
    connection_files = list(supervisor.runtime_dir.glob("kernel-*.json"))
    assert connection_files and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in connection_files)

    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == []
    assert not supervisor_sock.exists()
    status, body = await get_json(http, f"{web2.url}/api/kernels")
    assert status == 503
    assert await web2.stop() == 0


async def test_kernels_use_ipc_not_tcp(gateway, http):
    status, kernels = await get_json(http, f"{gateway.url}/api/kernels")
    connection_file = next(gateway.runtime_dir.glob(f"kernel-{kernels[0]['id']}.json"))
    assert '"transport": "ipc"' in connection_file.read_text()
    assert list(gateway.runtime_dir.glob(f"k-{kernels[0]['id'][:8]}-*"))


async def test_second_supervisor_on_the_same_socket_is_refused(start_gateway):
    first = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    second = await start_gateway("--runtime-dir", str(first.runtime_dir), command=("supervisor",),
                                 wait_for="own --runtime-dir")
    assert second.process.wait(timeout=10) == 1
    assert (first.runtime_dir / "supervisor.sock").exists()  # the refused one removed nothing of ours
    assert await first.stop() == 0


async def test_runtime_dir_too_deep_for_ipc_fails_clearly(start_gateway, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(RuntimeError, match="too deep"):
        await start_gateway("--runtime-dir", str(deep), wait_for="never logged")


AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")


def thread_niceness(pid: int) -> set[int]:
    """The niceness of every thread of a process (field 19 of each thread's stat)."""
    return {int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            for task in Path(f"/proc/{pid}/task").iterdir()}


SESSIONS_WEIGHED = AUTOGROUP.exists() and AUTOGROUP.read_text().strip() == "1"


def niceness_of(pid: int) -> tuple[set[int], int | None]:
    """A kernel's threads' niceness, and its session's where the scheduler weighs sessions (autogroup)."""
    return thread_niceness(pid), int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1]) if SESSIONS_WEIGHED else None


@pytest.mark.parametrize("nice", ["10", "0"])
async def test_a_kernel_runs_nicer_than_the_gateway_unless_it_works_quietly(start_gateway, http, nice):
    """Kernels printing on every core must leave the gateway its turns, and a flood starves the gateway
    that would see it begin: so a kernel waiting for work runs --kernel-nice nicer, every thread of it
    (those ipykernel starts later included) and its session, else a niceness is void. One working
    quietly gets its priority back and runs as fast as any program; a flooding one does not; a
    restarted kernel's new process is treated the same."""
    from .kernel_client import KernelSocket

    assert os.nice(0) == 0  # the test runs at the gateway's priority
    gw = await start_gateway("--initial-kernels", "0", "--kernel-nice", nice)
    kernel_id = await start_kernel(http, gw)
    full = ({0}, 0 if SESSIONS_WEIGHED else None)
    nicer = ({int(nice)}, int(nice) if SESSIONS_WEIGHED else None)
    # A thread's niceness comes down only with CAP_SYS_NICE, as root has; a session's always does.
    back = full if os.geteuid() == 0 else (nicer[0], full[1])
    for _ in range(2):
        sock = await KernelSocket.open(http, gw, kernel_id)
        try:
            _, stdout = await sock.execute("import os, threading; print(os.getpid(), threading.active_count())")
            pid, threads = map(int, stdout.split())
            assert threads > 1
            await eventually(lambda: _niceness_is(pid, nicer))  # waiting for work
            for code, working in (("import time; time.sleep(60)", back),
                                  ("while True: print('x' * 100, flush=True)", nicer)):
                await sock.send(sock.message("execute_request", {"code": code, "silent": False, "stop_on_error": False}))
                await wait_for_status(sock, "busy")
                await asyncio.sleep(2)
                assert niceness_of(pid) == working
                async with http.post(f"{gw.url}/api/kernels/{kernel_id}/interrupt") as r:
                    assert r.status == 204
                await eventually(lambda: _niceness_is(pid, nicer))
        finally:
            await sock.close()
        async with http.post(f"{gw.url}/api/kernels/{kernel_id}/restart") as r:
            assert r.status == 200


async def _niceness_is(pid: int, expected: tuple[set[int], int | None]) -> bool:
    return niceness_of(pid) == expected
