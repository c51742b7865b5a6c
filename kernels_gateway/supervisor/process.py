"""Kernel processes seen through pidfds: exit noticed at once, and kernels adopted after a supervisor restart.

A pidfd becomes readable the moment its process exits, whether or not it is our child, so a kernel's
death is an event rather than something a poll finds seconds later.

A pid alone proves nothing: it is recycled, and a record naming it may be forged. A kernel process is
ours when it runs as our user, leads a session of its own (kernels are launched so), and its command
line names the kernel's connection file; with a start time, it is that one process for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process for good."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def gone(pid: int) -> bool:
    """Whether no process has this pid, or only one that has exited and awaits its parent (a zombie)."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def _owned_by_us(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def names_file(pid: int, path: str) -> bool:
    """Whether the process runs as our user, leads its own session and names `path` on its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        leads = os.getsid(pid) == pid
    except OSError:
        return False
    return leads and _owned_by_us(pid) and any(os.fsencode(path) in arg for arg in argv)


def kernel_process(pid: int, started: int | None, connection_file: str) -> bool:
    """Whether `pid` is provably the kernel launched with this connection file at this start time."""
    return started is not None and start_time(pid) == started and names_file(pid, connection_file)


def processes_naming(path: str) -> list[int]:
    """Kernel processes launched with this connection file (by start-up or restart: no pid on record)."""
    return [int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and names_file(int(entry.name), path)]


def kill_group(pid: int) -> None:
    """SIGKILL a kernel and whatever it started in its session (it leads its group, see names_file)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def set_niceness(pid: int, niceness: int, session_niceness: int) -> None:
    """Give every thread of a process this niceness (threads started later inherit it from the main
    thread), and the session it leads that one.

    Where the scheduler groups processes by session (Linux's autogroup, on by default in most
    distributions, for processes outside any CPU cgroup), a niceness counts only within its session,
    and each kernel leads a session of its own: there the session's niceness is the one that counts.
    Going back to a lower niceness takes a privilege (CAP_SYS_NICE) for threads, not for a session; a
    thread's without it stays as it was."""
    with contextlib.suppress(OSError):  # gone already, or not ours to change
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)
    with contextlib.suppress(OSError):  # no autogroup in this kernel, or the session is gone
        if os.getsid(pid) == pid:  # never the gateway's own session
            Path(f"/proc/{pid}/autogroup").write_text(f"{session_niceness}\n")


async def exited(pid: int) -> None:
    """Return once the process has exited (at once if it is already gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(fd, lambda: gone.done() or gone.set_result(None))
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class AdoptedProcess:
    """The part of `subprocess.Popen` that jupyter_client's LocalProvisioner uses, for a kernel that a
    previous supervisor started: we can signal it and see it exit, but not reap it or learn its code."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self.returncode = 0  # the real code went to the process's own parent
            os.close(self._fd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            select.select([self._fd], [], [], timeout)
        code = self.poll()
        if code is None:
            raise TimeoutError(f"process {self.pid} still running")
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._fd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
