"""Kernels a previous supervisor left behind: which processes are provably theirs, a jupyter_client
manager to drive an adopted one, their adoption into the registry, and the end of those nobody will adopt.

What a record says is checked against the process itself before anything signals it: a running
kernel's pid must have the recorded start time, run as our user, lead its own session and name the
record's connection file (which must be `kernel-ID.json` right in the runtime directory) on its command
line. A kernel recorded while starting or restarting has no trustworthy pid yet; its processes are
found by the same test. Process groups are those of the proven processes, never the record's.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner

from . import liveness, remote
from .process import AdoptedProcess, kernel_process, kill_group, processes_naming
from .records import KERNEL_ID, RESTARTING, RUNNING, Records, valid_kernel_id

if TYPE_CHECKING:
    from .kernels import Kernel, Kernels

log = logging.getLogger("kernels_gateway.supervisor")

CONNECTION_FILE = re.compile(rf"kernel-({KERNEL_ID.pattern})\.json")


def connection_file_of(record: dict[str, Any], runtime_dir: Path) -> Path | None:
    """The record's connection file when it is one of ours (kernel-ID.json in the runtime dir)."""
    path = Path(str(record.get("connection_file", "")))
    return path if path.parent == runtime_dir and CONNECTION_FILE.fullmatch(path.name) else None


def remove_files(connection_file: Path) -> None:
    """A kernel's connection file (it holds the key) and its IPC sockets, named after its first id."""
    found = CONNECTION_FILE.fullmatch(connection_file.name)
    connection_file.unlink(missing_ok=True)
    if found:
        for ipc in connection_file.parent.glob(f"k-{found.group(1)[:8]}-*"):
            ipc.unlink(missing_ok=True)


def live_processes(record: dict[str, Any], runtime_dir: Path) -> list[int] | None:
    """The processes that are provably this record's kernel; None for a kernel with no local process
    (a provisioner's), which only its provisioner can find."""
    connection_file = connection_file_of(record, runtime_dir)
    if connection_file is None:
        return []
    if record.get("state", RUNNING) != RUNNING:
        return processes_naming(str(connection_file))
    pid = (record.get("provisioner") or {}).get("pid")
    if pid is None:
        return None
    return [pid] if isinstance(pid, int) and kernel_process(pid, record.get("start_time"), str(connection_file)) else []


def end_kernel(records: Records, record: dict[str, Any], runtime_dir: Path) -> None:
    """Kill what is provably the record's kernel, remove its files and its record."""
    for pid in live_processes(record, runtime_dir) or []:
        kill_group(pid)
        log.warning("Kernel %s (pid %d) killed", record.get("id"), pid)
    connection_file = connection_file_of(record, runtime_dir)
    if connection_file:
        remove_files(connection_file)
    records.remove(str(record.get("id")))


def end_recorded_kernels(runtime_dir: Path) -> None:
    """Kill every kernel the records name and remove their files: for whoever stops a supervisor that
    could not stop its kernels itself (it was killed, or ran out of time)."""
    records = Records(runtime_dir)
    for record in records.load_all():
        end_kernel(records, record, runtime_dir)


async def adopted_manager(record: dict[str, Any], pid: int | None, specs: KernelSpecManager,
                          shutdown_wait: float, launch_args: dict[str, Any]) -> AsyncKernelManager:
    """A manager for a kernel another supervisor started, as if this one had: `pid` is its proven process."""
    manager = AsyncKernelManager(
        kernel_name=record["name"], kernel_id=record["id"], kernel_spec_manager=specs,
        connection_file=record["connection_file"], shutdown_wait_time=shutdown_wait,
    )
    manager.load_connection_file()
    provisioner = KernelProvisionerFactory.instance().create_provisioner_instance(
        record["id"], manager.kernel_spec, parent=manager
    )
    info = dict(record.get("provisioner") or {})
    if isinstance(provisioner, LocalProvisioner):
        if pid is None:
            raise ValueError("no process of its own")
        info.update(pid=pid, pgid=pid)  # the process's own group: it leads its session
        info.setdefault("ip", None)
    await provisioner.load_provisioner_info(info)
    if isinstance(provisioner, LocalProvisioner):
        provisioner.process = AdoptedProcess(pid)
    # What start_kernel would have set, had this manager started the kernel: restart needs them.
    manager.provisioner = provisioner
    manager._launch_args = launch_args
    manager._attempted_start = True
    manager._connect_control_socket()
    return manager


def keep_connection_file(manager: AsyncKernelManager) -> None:
    """jupyter_client removes the connection file it wrote when the manager goes; a kernel handed over
    to the next supervisor needs it."""
    manager._connection_file_written = False


async def adopt_all(kernels: Kernels) -> int:
    """Take over the kernels a previous supervisor left running, stop those it was still starting,
    start again those it was restarting, and forget those that died meanwhile."""
    records = kernels.records.load_all()
    # A warm kernel that took over a dead kernel's id just before a crash is named by both records.
    claimed = {r.get("connection_file") for r in records if not r.get("pooled")}
    adopted = 0
    for record in records:
        if record.get("pooled") and record.get("connection_file") in claimed:
            kernels.records.remove(str(record.get("id")))
            continue
        try:
            kernel = await _adopt(kernels, record)
        except Exception as e:
            log.warning("Kernel %s cannot be adopted (%s); forgetting it", record.get("id"), e)
            kernel = None
        if kernel is None and record.get("id") not in kernels.launcher.unended:
            end_kernel(kernels.records, record, kernels.config.runtime_dir)
        elif record.get("pooled"):
            await kernels.shutdown(kernel.id, why="shutdown (unused warm kernel)")
        else:
            adopted += 1
            log.info("Kernel adopted: %s", kernel.id)
    log.info("Kernel records read: %d kernel(s) adopted", adopted)
    return adopted


async def _adopt(kernels: Kernels, record: dict[str, Any]) -> Kernel | None:
    """The record's kernel, registered and watched; None when there is nothing to adopt."""
    runtime_dir, launcher = kernels.config.runtime_dir, kernels.launcher
    kernel_id, state = valid_kernel_id(record["id"]), record.get("state", RUNNING)
    manager = await remote.adopted_manager(record, kernels.specs, kernels.config.shutdown_wait,
                                           launcher.launch_args(record["env"]))
    if manager is not None:  # a kernel on another host: only its provisioner can find it
        if state == RUNNING and await liveness.alive(manager):
            return _adopted(kernels, record, manager)
        log.warning("Kernel %s on %s, recorded %s, is not running; ending what is left of it",
                    kernel_id, remote.host_of(manager), state)
        if await remote.end(record, kernels.specs) is False:  # it may run on: never a second one beside it
            kernels.launcher.end_later(record)
            return None
        return await _start_again(kernels, record) if state == RESTARTING and not record.get("pooled") else None
    pids = live_processes(record, runtime_dir)
    if state not in (RUNNING, RESTARTING) or (pids is not None and len(pids) != 1):
        if state != RESTARTING or record.get("pooled"):
            return None  # never started, or exited (its pid may now name another process): ended
        for pid in pids or []:
            kill_group(pid)
        return await _start_again(kernels, record)
    manager = await adopted_manager(record, pids[0] if pids else None, kernels.specs,
                                    kernels.config.shutdown_wait, launcher.launch_args(record["env"]))
    if not await manager.is_alive():
        return None
    return _adopted(kernels, record, manager)


def _adopted(kernels: Kernels, record: dict[str, Any], manager: AsyncKernelManager) -> Kernel:
    kernel = kernels.launcher.kernel(record["id"], record["name"], manager, record["env"])
    kernels.launcher.watch(kernel)
    kernels.register(kernel, adopted=True)
    return kernel


async def _start_again(kernels: Kernels, record: dict[str, Any]) -> Kernel:
    """A kernel whose restart a crash interrupted before its new process ran: started anew, same id."""
    connection_file = connection_file_of(record, kernels.config.runtime_dir)
    if connection_file:
        remove_files(connection_file)
    kernel = await kernels.launcher.launch(record["name"], record["env"], kernel_id=record["id"])
    kernels.register(kernel)
    return kernel
