"""Stops and crashes leave no kernel behind: kill -9 of the supervisor mid-start and mid-restart, SIGTERM
during an output flood, a supervisor that misses its stop deadline, forged records, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kernels_gateway.supervisor.process import start_time

from .conftest import eventually, kernel_pids, write_kernelspec
from .kernel_client import KernelSocket
from .helpers import children, json_of, kernel_ids_by_pid, start_kernel, wait_for_status

FLOOD = "while True: print('x' * 100, flush=True)"  # a message per line
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs, chown)")


def slow_kernelspec(folder: Path) -> None:
    """An ipykernel that takes 2 s to start: a wide window for a crash mid-start or mid-restart."""
    write_kernelspec(folder, "slow", ["sh", "-c", f'sleep 2; exec {sys.executable} -m ipykernel_launcher -f "$0"',
                                      "{connection_file}"])


async def restart_supervisor(supervisor) -> None:
    supervisor.process = None
    supervisor.log_file.close()
    await supervisor.start(wait_for="Kernel records read")


async def listed_ids(http, web) -> set[str]:
    """The ids the gateway lists, once its supervisor answers."""
    async def listing():
        status, kernels = await json_of(http, "GET", f"{web.url}/api/kernels")
        return ({k["id"] for k in kernels},) if status == 200 else None
    [ids] = await eventually(listing)
    return ids


def leftovers(runtime_dir: Path) -> list[str]:
    """Kernel files in the runtime dir: connection files (with their keys), IPC sockets, records."""
    return sorted(p.name for p in [*runtime_dir.glob("kernel-*"), *runtime_dir.glob("k-*"),
                                   *(runtime_dir / "kernels").glob("*")])


async def test_kill_9_of_the_supervisor_during_concurrent_starts_leaves_no_stray_kernel(start_gateway, http):
    supervisor = await start_gateway("--initial-kernels", "0", command=("supervisor",), wait_for="Kernel records read")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    starts = [asyncio.create_task(json_of(http, "POST", f"{web.url}/api/kernels", json={})) for _ in range(10)]
    # Killed once the first kernel is ready and recorded, while the others are still starting.
    await asyncio.wait(starts, return_when=asyncio.FIRST_COMPLETED)
    supervisor.process.kill()
    supervisor.process.wait()
    await asyncio.gather(*starts, return_exceptions=True)  # 503s, or 201s that came just before the crash
    assert kernel_pids(supervisor.runtime_dir), "every kernel had died with the supervisor"

    await restart_supervisor(supervisor)
    listed = await listed_ids(http, web)
    assert listed, "the kernel that was ready was not adopted"
    running = await eventually(lambda: _settled(supervisor.runtime_dir))
    assert set(running.values()) == listed  # each process left is a listed kernel, and each one runs
    for kernel_id in listed:  # and works
        sock = await KernelSocket.open(http, web, kernel_id)
        _, stdout = await sock.execute("print('adopted')")
        assert stdout == "adopted\n"
        await sock.close()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == [] and leftovers(supervisor.runtime_dir) == []


async def _settled(runtime_dir: Path) -> dict[int, str] | None:
    """Kernel processes with their ids, once none is dying any more (killed ones take a moment)."""
    first = kernel_ids_by_pid(runtime_dir)
    await asyncio.sleep(0.5)
    return first if first == kernel_ids_by_pid(runtime_dir) else None


async def test_kill_9_of_the_supervisor_during_an_automatic_restart_keeps_the_kernel(start_gateway, http, tmp_path):
    slow_kernelspec(tmp_path)
    env = {"JUPYTER_PATH": str(tmp_path)}
    supervisor = await start_gateway("--kernel-name", "slow", command=("supervisor",), env=env, wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",), env=env)
    [kernel_id] = await listed_ids(http, web)
    [pid] = kernel_pids(supervisor.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    [new_pid] = await eventually(lambda: _other_than(supervisor.runtime_dir, pid), every=0.02)
    supervisor.process.kill()  # the new process is still in its 2 s of start-up
    supervisor.process.wait()

    await restart_supervisor(supervisor)
    assert await listed_ids(http, web) == {kernel_id}
    assert kernel_pids(supervisor.runtime_dir) == [new_pid]  # adopted, not orphaned nor started twice
    sock = await KernelSocket.open(http, web, kernel_id)
    _, stdout = await sock.execute("print('same kernel')")
    assert stdout == "same kernel\n"
    await sock.close()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == [] and leftovers(supervisor.runtime_dir) == []


async def _other_than(runtime_dir: Path, pid: int) -> list[int] | None:
    """The one kernel process once it is not `pid` (a shell's fork names the file too, for an instant)."""
    pids = kernel_pids(runtime_dir)
    return pids if len(pids) == 1 and pid not in pids else None


async def test_a_failed_restart_leaves_a_record_the_next_supervisor_starts_again(start_gateway, http, tmp_path):
    broken = tmp_path / "broken"
    write_kernelspec(tmp_path, "breakable", ["sh", "-c", f'test -e {broken} && exit 1; '
                                             f'exec {sys.executable} -m ipykernel_launcher -f "$0"', "{connection_file}"])
    env = {"JUPYTER_PATH": str(tmp_path)}
    supervisor = await start_gateway("--kernel-name", "breakable", "--restart-limit", "1000", command=("supervisor",),
                                     env=env, wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",), env=env)
    [kernel_id] = await listed_ids(http, web)
    broken.touch()
    os.kill(kernel_pids(supervisor.runtime_dir)[0], signal.SIGKILL)
    await eventually(lambda: _logged(supervisor, "failed to restart"))
    supervisor.process.kill()
    supervisor.process.wait()
    broken.unlink()

    await restart_supervisor(supervisor)
    assert await listed_ids(http, web) == {kernel_id}
    sock = await KernelSocket.open(http, web, kernel_id)
    _, stdout = await sock.execute("print('started again')")
    assert stdout == "started again\n"
    await sock.close()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == [] and leftovers(supervisor.runtime_dir) == []


async def _logged(gw, text: str) -> bool:
    return text in gw.log()


@pytest.mark.timeout(300)
async def test_sigterm_during_an_output_flood_of_20_kernels_leaves_no_kernel(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--kernel-start-timeout", "120")
    ids = []
    for _ in range(4):  # in bursts of five: twenty at once would only queue behind each other
        ids += await asyncio.gather(*(start_kernel(http, gw) for _ in range(5)))
    sockets = [await KernelSocket.open(http, gw, kernel_id) for kernel_id in ids]
    for sock in sockets:  # and then never read: the outboxes overflow, as with slow clients
        await sock.send(sock.message("execute_request", {"code": FLOOD, "silent": False}))
    await asyncio.sleep(3)
    assert len(kernel_pids(gw.runtime_dir)) == 20
    # The documented deadline: workers 10 s, then the supervisor 15 s plus --shutdown-wait (5 s).
    assert await gw.stop(timeout=45) == 0
    assert kernel_pids(gw.runtime_dir) == []
    assert leftovers(gw.runtime_dir) == []
    for sock in sockets:
        with contextlib.suppress(Exception):
            await sock.close()


async def test_a_supervisor_killed_after_its_grace_has_its_kernels_ended_by_the_arbiter(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "2", "--shutdown-wait", "1")
    assert len(kernel_pids(gw.runtime_dir)) == 2
    [supervisor] = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway supervisor" in cmd]
    os.kill(supervisor, signal.SIGSTOP)  # it cannot stop anything: the arbiter kills it after 16 s
    assert await gw.stop(timeout=45) == 0
    assert "supervisor did not stop within" in gw.log()
    assert kernel_pids(gw.runtime_dir) == []
    assert leftovers(gw.runtime_dir) == []


async def test_a_supervisor_that_cannot_start_beside_another_leaves_its_kernels_alone(start_gateway):
    first = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    pids = kernel_pids(first.runtime_dir)
    second = await start_gateway("--runtime-dir", str(first.runtime_dir), command=("supervisor",),
                                 wait_for="in use by another kernels-gateway")
    assert second.process.wait(timeout=30) == 1
    assert kernel_pids(first.runtime_dir) == pids and list((first.runtime_dir / "kernels").glob("*.json"))
    assert await first.stop() == 0
    assert kernel_pids(first.runtime_dir) == []


async def test_adoption_then_clean_stop_leaves_no_connection_file(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    assert list(supervisor.runtime_dir.glob("kernel-*.json"))
    supervisor.process.kill()
    supervisor.process.wait()
    await restart_supervisor(supervisor)
    assert "Kernel adopted" in supervisor.log()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == []
    assert leftovers(supervisor.runtime_dir) == []


async def test_websockets_sending_during_an_in_place_restart_get_replies_again(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sockets = [await KernelSocket.open(http, gw, kernel_id) for _ in range(3)]
    for sock in sockets:
        await sock.execute("1")

    async def keep_sending(sock: KernelSocket) -> None:
        while True:
            await sock.send(sock.message("execute_request", {"code": "1", "silent": False}))
            await asyncio.sleep(0.05)

    senders = [asyncio.create_task(keep_sending(sock)) for sock in sockets]
    try:
        await asyncio.sleep(0.3)
        [pid] = kernel_pids(gw.runtime_dir)
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: _other_than(gw.runtime_dir, pid))
        await asyncio.sleep(1)  # still sending while the new process starts
    finally:
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    for sock in sockets:
        reply, stdout = await sock.execute("print('back')", timeout=60)  # after the requests sent meanwhile
        assert stdout == "back\n" and reply["content"]["status"] == "ok"
        await sock.close()


async def test_a_forged_record_cannot_make_the_gateway_signal_another_process(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    [kernel_id] = await listed_ids(http, web)
    supervisor.process.kill()
    supervisor.process.wait()
    sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a group of its own, like a kernel's
    try:
        records = supervisor.runtime_dir / "kernels"
        real = json.loads((records / f"{kernel_id}.json").read_text())
        # A record of a kernel of its own that is the sleeper, with its true pid and start time ...
        forged_id = str(uuid.uuid4())
        forged_file = supervisor.runtime_dir / f"kernel-{forged_id}.json"
        forged_file.write_text(Path(real["connection_file"]).read_text())
        sleeper_info = {"pid": sleeper.pid, "pgid": sleeper.pid}
        _write_record(records, {**real, "id": forged_id, "connection_file": str(forged_file),
                                "provisioner": {**real["provisioner"], **sleeper_info},
                                "start_time": start_time(sleeper.pid)})
        # ... and the real kernel's record, its process group swapped for the sleeper's.
        real["provisioner"]["pgid"] = sleeper.pid
        _write_record(records, real)

        await restart_supervisor(supervisor)
        assert await listed_ids(http, web) == {kernel_id}
        status, _ = await json_of(http, "POST", f"{web.url}/api/kernels/{kernel_id}/interrupt")
        assert status == 204
        status, _ = await json_of(http, "DELETE", f"{web.url}/api/kernels/{kernel_id}")
        assert status == 204
        assert await supervisor.stop() == 0
        assert sleeper.poll() is None, "the gateway signalled a process that is not its kernel"
        assert kernel_pids(supervisor.runtime_dir) == []
    finally:
        sleeper.kill()
        sleeper.wait()


def _write_record(folder: Path, record: dict) -> None:
    path = folder / f"{record['id']}.json"
    path.write_text(json.dumps(record))
    path.chmod(0o600)


@as_root
@pytest.mark.parametrize("case", ["symlink", "other user's", "other user's records"])
async def test_a_runtime_dir_that_is_not_ours_is_refused(start_gateway, tmp_path, case):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    runtime_dir = real
    if case == "symlink":
        runtime_dir = tmp_path / "link"
        runtime_dir.symlink_to(real)
    elif case == "other user's":
        os.chown(real, 65534, 65534)
    else:
        (real / "kernels").mkdir(mode=0o700)
        os.chown(real / "kernels", 65534, 65534)
    with pytest.raises(RuntimeError, match="exited with 1") as failed:
        await start_gateway("--runtime-dir", str(runtime_dir), command=("supervisor",), wait_for="never logged")
    assert "symbolic link" in str(failed.value) if case == "symlink" else "belongs to user 65534" in str(failed.value)
    assert kernel_pids(runtime_dir) == kernel_pids(real) == []  # a kernel's connection file names the real folder


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def on_disk(start_gateway, disk: Path):
    """A gateway whose runtime dir is on that disk (torn down before it is unmounted)."""
    gw = await start_gateway("--initial-kernels", "0", "--runtime-dir", str(disk / "rt"))
    gw.runtime_dir = disk / "rt"
    return gw


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the file system, then free `leave` bytes (tmpfs counts whole pages)."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 4096)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@as_root
@pytest.mark.parametrize("room", [0, 4096])  # none, or room for one file (the connection file, or a record)
async def test_a_start_on_a_full_disk_succeeds_or_leaves_nothing(small_disk, start_gateway, http, room):
    gw = await on_disk(start_gateway, small_disk)
    filler = fill(small_disk, room)
    status, body = await json_of(http, "POST", f"{gw.url}/api/kernels", json={})
    assert status == 500 and "No space left on device" in body["message"]
    assert await listed_ids(http, gw) == set()
    assert kernel_pids(gw.runtime_dir) == [] and leftovers(gw.runtime_dir) == []
    filler.unlink()
    assert await start_kernel(http, gw)
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == [] and leftovers(gw.runtime_dir) == []


@as_root
async def test_a_record_that_cannot_be_written_during_a_restart_does_not_end_the_watch(small_disk, start_gateway, http):
    gw = await on_disk(start_gateway, small_disk)
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    filler = fill(small_disk)
    for _ in range(2):  # the second death is noticed too
        [pid] = kernel_pids(gw.runtime_dir)
        os.kill(pid, signal.SIGKILL)
        await wait_for_status(sock, "restarting")
        await eventually(lambda: _other_than(gw.runtime_dir, pid))
        reply, _ = await eventually(lambda: sock.execute("print('back')"))
        assert reply["content"]["status"] == "ok"
    assert "its record could not be written" in gw.log()
    # The supervisor hears the kernel's idle a moment after the client does.
    assert await eventually(lambda: _state_is(http, gw, kernel_id, "idle"))
    await sock.close()
    filler.unlink()
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == [] and leftovers(gw.runtime_dir) == []


async def _state_is(http, gw, kernel_id: str, state: str) -> bool:
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    return status == 200 and model["execution_state"] == state
