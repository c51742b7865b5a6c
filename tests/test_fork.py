"""Python kernels forked from a template: indistinguishable from launched ones, sharing nothing, launched
the ordinary way when a fork would not do, and surviving what launched kernels survive.

The rest of the suite (execute, output, stdin, comms, interrupt, restart, crash, shutdown, adoption) runs
on forked kernels, forking being the default; these tests check what is particular to forking. With
`--preload numpy`, numpy already imported when a kernel starts is the proof that it was forked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from .conftest import eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import children, json_of, wait_for_status

PROBE = r"""
import json, os, random, sys
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        pass
print(json.dumps({
    "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
    "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "executable": sys.executable,
    "x": os.environ.get("KERNEL_X"), "forktest": os.environ.get("PYTHONFORKTEST"),
    "preloaded": "numpy" in sys.modules, "random": random.random(),
    "numpy_random": __import__("numpy").random.random(), "fds": fds,
    "cmdline": open("/proc/self/cmdline").read().replace("\0", " ").strip(),
}))
"""


async def start(http, gw, env: dict | None = None) -> str:
    status, model = await json_of(http, "POST", f"{gw.url}/api/kernels", json={"env": env or {}})
    assert status == 201, model
    return model["id"]


async def probe(http, gw, kernel_id: str) -> dict:
    sock = await KernelSocket.open(http, gw, kernel_id)
    try:
        reply, stdout = await sock.execute(PROBE)
        assert reply["content"]["status"] == "ok", reply["content"]
        return json.loads(stdout)
    finally:
        await sock.close()


def template_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"Template of python3 ready \(pid (\d+)", log)]


def sockets(fds: dict) -> set[str]:
    return {target for target in fds.values() if target.startswith("socket:")}


def supervisor_pid(gw) -> int:
    return next(pid for pid, cmdline in children(gw.process.pid).items() if "kernels_gateway supervisor" in cmdline)


async def test_forked_kernels_share_nothing_and_see_what_a_launched_kernel_sees(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--fork", "python", "--preload", "numpy", "--env-allow", "PYTHONFORKTEST")
    [template] = template_pids(gw.log())
    first, second = await start(http, gw, {"KERNEL_X": "a"}), await start(http, gw, {"KERNEL_X": "b"})
    # PYTHON* changes what imports see: that kernel is launched, and the log says why.
    launched_id = await start(http, gw, {"KERNEL_X": "c", "PYTHONFORKTEST": "1"})
    assert f"Kernel {launched_id} launched, not forked: its environment changes what imports see: PYTHONFORKTEST" in gw.log()
    a, b, launched = [await probe(http, gw, k) for k in (first, second, launched_id)]

    assert a["preloaded"] and b["preloaded"] and not launched["preloaded"]
    supervisor = supervisor_pid(gw)
    for kernel, kernel_id, x in ((a, first, "a"), (b, second, "b"), (launched, launched_id, "c")):
        connection_file = f"{gw.runtime_dir}/kernel-{kernel_id}.json"
        assert kernel["x"] == x
        assert kernel["ppid"] == supervisor  # the supervisor's child, as a launched kernel is, not the template's
        assert kernel["sid"] == kernel["pgid"] == kernel["pid"]  # a session of its own
        assert kernel["argv"][1:] == ["-f", connection_file]
        assert kernel["cmdline"] == f"{sys.executable} -m ipykernel_launcher -f {connection_file}"
        for same in ("cwd", "path0", "executable"):
            assert kernel[same] == launched[same]
        assert Path(kernel["argv"][0]).name == "ipykernel_launcher.py"
    assert a["argv"][0] == launched["argv"][0]
    assert a["forktest"] is None and launched["forktest"] == "1"

    # No random state, socket or descriptor in common, none from the template, no pidfd of another kernel.
    assert a["random"] != b["random"] and a["numpy_random"] != b["numpy_random"]
    assert not sockets(a["fds"]) & sockets(b["fds"])
    template_fds = {os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")}
    for kernel in (a, b):
        assert not sockets(kernel["fds"]) & sockets({fd: t for fd, t in enumerate(template_fds)})
        assert "anon_inode:[pidfd]" not in kernel["fds"].values()
        assert kernel["fds"]["0"] == "/dev/null"
    assert len(a["fds"]) == len(b["fds"])


async def test_forked_kernel_is_reaped_and_restarted_from_the_template(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--fork", "python", "--preload", "numpy")
    kernel_id = await start(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    await sock.execute("x = 1")
    [pid] = kernel_pids(gw.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    await wait_for_status(sock, "restarting")
    await eventually(lambda: _gone(pid))  # reaped by its parent: no zombie left behind
    reply, _ = await eventually(lambda: sock.execute("print(x)"))
    assert reply["content"]["ename"] == "NameError"
    _, stdout = await sock.execute("import sys; print('numpy' in sys.modules)")
    assert stdout == "True\n"  # forked again
    await sock.close()
    assert "not forked" not in gw.log()


async def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "RSDTtZ"
    except OSError:
        return True


async def test_a_dead_template_means_a_launched_kernel_then_a_new_template(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--fork", "python", "--preload", "numpy")
    [template] = template_pids(gw.log())
    os.kill(template, signal.SIGKILL)
    await eventually(lambda: _logged(gw, "Template of python3 exited (code -9)"))
    assert await _gone(template)  # reaped
    kernel_id = await start(http, gw)
    assert f"Kernel {kernel_id} launched, not forked: the template of python3 is not running" in gw.log()
    assert not (await probe(http, gw, kernel_id))["preloaded"]
    await eventually(lambda: _templates_started(gw, 2))
    assert (await probe(http, gw, await start(http, gw)))["preloaded"]


async def _templates_started(gw, count: int) -> bool:
    return len(template_pids(gw.log())) >= count


async def test_forked_kernels_outlive_a_supervisor_crash_and_its_template(start_gateway, http):
    supervisor = await start_gateway("--fork", "python", "--preload", "numpy", command=("supervisor",), wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    [template] = template_pids(supervisor.log())
    [model] = (await json_of(http, "GET", f"{web.url}/api/kernels"))[1]
    sock = await KernelSocket.open(http, web, model["id"])
    await sock.execute("x = 42")
    [pid] = kernel_pids(supervisor.runtime_dir)

    supervisor.process.kill()
    supervisor.process.wait()
    await eventually(lambda: _gone(template))  # its channel closed: the template exits, its kernel does not
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n" and kernel_pids(supervisor.runtime_dir) == [pid]

    supervisor.process = None
    supervisor.log_file.close()
    await supervisor.start(wait_for="Kernel adopted")
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    # A restart of the adopted kernel forks from the new supervisor's template.
    status, _ = await json_of(http, "POST", f"{web.url}/api/kernels/{model['id']}/restart")
    assert status == 200
    _, stdout = await eventually(lambda: sock.execute("import sys; print('numpy' in sys.modules)"))
    assert stdout == "True\n"
    await sock.close()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == []


async def test_warm_pool_refills_from_the_template(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--fork", "python", "--pool", "python3=1", "--preload", "numpy")
    for refilled in (1, 2):
        await eventually(lambda: _logged(gw, "Warm kernel ready", refilled))
        assert (await probe(http, gw, await start(http, gw)))["preloaded"]
    assert "not forked" not in gw.log()


async def _logged(gw, line: str, count: int = 1) -> bool:
    return gw.log().count(line) >= count


async def test_fork_none_launches_every_kernel(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--fork", "none")
    kernel = await probe(http, gw, await start(http, gw))
    assert not kernel["preloaded"] and kernel["ppid"] == supervisor_pid(gw)
    assert "Template of" not in gw.log() and "not forked" not in gw.log()


async def test_what_a_template_prints_is_logged_as_lines_of_the_template(start_gateway, tmp_path):
    (tmp_path / "noisy_on_import.py").write_text(
        "import sys\nprint('printed on import', flush=True)\nsys.stderr.write('warned on import\\n')\n")
    gw = await start_gateway("--initial-kernels", "0", "--log-format", "json", "--preload", "noisy_on_import",
                             env={"PYTHONPATH": str(tmp_path)})
    await eventually(lambda: _logged(gw, "warned on import"))
    assert await gw.stop() == 0
    entries = [json.loads(line) for line in gw.log().splitlines()]  # every line JSON, the template's too
    printed = {(e["stream"], e["level"], e["message"]) for e in entries if e["logger"] == "kernels_gateway.kernel"}
    assert ("stdout", "INFO", "Template of python3 stdout: printed on import") in printed
    assert ("stderr", "WARNING", "Template of python3 stderr: warned on import") in printed


async def test_preload_of_a_missing_module_stops_the_start_clearly(start_gateway):
    with pytest.raises(RuntimeError, match="cannot import no_such_module_here: ModuleNotFoundError"):
        await start_gateway("--fork", "python", "--preload", "no_such_module_here")


async def test_a_template_that_has_a_thread_refuses_to_fork(start_gateway, http, tmp_path):
    (tmp_path / "threaded.py").write_text("import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    gw = await start_gateway("--initial-kernels", "0", "--fork", "python", "--preload", "threaded",
                             env={"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"})
    kernel_id = await start(http, gw)
    assert (f"Kernel {kernel_id} launched, not forked: the template of python3 failed to fork: "
            "the template has more than one thread") in gw.log()
    sock = await KernelSocket.open(http, gw, kernel_id)
    _, stdout = await sock.execute("print(1 + 1)")
    assert stdout == "2\n"
    await sock.close()
