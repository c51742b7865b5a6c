"""Kernels a previous supervisor left behind: which processes are provably theirs, a jupyter_client
manager to drive an adopted one, and the end of those nobody will adopt.

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
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner

from .process import AdoptedProcess, kernel_process, kill_group, processes_naming
from .records import KERNEL_ID, RUNNING, Records

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
