"""One record per kernel in the runtime directory, so that a restarted supervisor can adopt it.

A record holds what jupyter_client needs to manage the kernel again (its name, its connection file, its
provisioner's own saved state) plus what only we know: the environment the start request asked for
(to restart it faithfully), the process start time (so a recycled pid is never mistaken for it), and
its state. A kernel is recorded `starting` before it is launched and `restarting` before a new process
replaces its old one (and after a restart that failed), so a supervisor that dies at any moment leaves
a record of every process it launched; `dead` once its restarts keep failing.

Records are trusted only when they are ours: the runtime directory, its `kernels` folder and each record
must be owned by the gateway's user and not be symbolic links, or a user who can plant a record could
make the supervisor adopt and signal a process of their choosing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import CannotStart, KernelNotFound

log = logging.getLogger("kernels_gateway.supervisor")

# Kernel ids are the canonical form of a random UUID, and nothing else is ever looked up, logged or
# turned into a path: whatever a client puts in a URL stops here.
KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STARTING, RUNNING, RESTARTING, DEAD = "starting", "running", "restarting", "dead"


def valid_kernel_id(kernel_id: Any) -> str:
    if not isinstance(kernel_id, str) or not KERNEL_ID.fullmatch(kernel_id):
        raise KernelNotFound(str(kernel_id)[:100])
    return kernel_id


class UntrustedPath(CannotStart):
    pass


def own_directory(path: Path) -> None:
    """Create `path` (mode 0700) if missing; refuse it unless it is a directory of ours, not a link."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = os.lstat(path)
    if stat.S_ISLNK(found.st_mode):
        raise UntrustedPath(f"{path} is a symbolic link; give the real directory (--runtime-dir)")
    if not stat.S_ISDIR(found.st_mode):
        raise UntrustedPath(f"{path} is not a directory")
    if found.st_uid != os.geteuid():
        raise UntrustedPath(
            f"{path} belongs to user {found.st_uid}, not to this gateway's user {os.geteuid()}: whoever owns "
            f"it could plant kernel records there; choose a --runtime-dir of this user's own"
        )
    os.chmod(path, 0o700)


class Records:
    def __init__(self, runtime_dir: Path):
        own_directory(runtime_dir)
        self.folder = runtime_dir / "kernels"
        own_directory(self.folder)
        # The kernels this supervisor recorded or adopted: the only ones its stop may end. A supervisor
        # that fails to start beside another must not touch the other's kernels.
        self.ours: set[str] = set()

    def _path(self, kernel_id: str) -> Path:
        return self.folder / f"{kernel_id}.json"

    def save(self, kernel_id: str, record: dict[str, Any]) -> None:
        """Write atomically and privately: the record names the kernel's connection file and key.
        OSError (a full disk) leaves the previous record, and no temporary file."""
        path = self._path(kernel_id)
        temporary = path.with_suffix(".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as file:
                json.dump(record, file, default=_text)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.ours.add(kernel_id)

    def remove(self, kernel_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(kernel_id).unlink()
        self.ours.discard(kernel_id)

    def load(self, kernel_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            return self._load(self._path(kernel_id))
        return None

    def load_all(self) -> list[dict[str, Any]]:
        """Every readable record of ours, which this supervisor takes over; others are refused (logged,
        left alone, never acted on). Only for the supervisor that owns the runtime dir."""
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = self._load(path)
            except UntrustedPath as e:
                log.error("Kernel record refused: %s", e)
                continue
            except (OSError, ValueError):
                log.warning("Unreadable kernel record %s removed", path)
                path.unlink(missing_ok=True)
                continue
            if isinstance(record, dict) and record.get("id") == path.stem:
                records.append(record)
                self.ours.add(path.stem)
            else:
                log.warning("Kernel record %s names another kernel; removed", path)
                path.unlink(missing_ok=True)
        for temporary in self.folder.glob("*.tmp"):  # a save cut short by a crash
            temporary.unlink(missing_ok=True)
        return records

    @staticmethod
    def _load(path: Path) -> Any:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a planted FIFO must not block us
        except OSError as e:
            if os.path.islink(path):
                raise UntrustedPath(f"{path} is a symbolic link") from e
            raise
        with os.fdopen(fd) as file:
            found = os.fstat(file.fileno())
            if found.st_uid != os.geteuid() or not stat.S_ISREG(found.st_mode):
                raise UntrustedPath(f"{path} is not a file of this gateway's user")
            return json.load(file)


def _text(value: object) -> str:
    """Provisioner info may hold the session key as bytes; JSON holds it as text."""
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} cannot be saved in a kernel record")
