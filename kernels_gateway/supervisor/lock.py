"""One supervisor per runtime directory: an flock on `supervisor.lock` there, held for the supervisor's
whole life. The kernel releases it when the process ends, however it ends, so a lock is never stale; the
file itself stays, since removing a lock file lets two processes each lock a different one."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

RETRY_EVERY = 0.05


class RuntimeLock:
    def __init__(self, runtime_dir: Path):
        self.path = runtime_dir / "supervisor.lock"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free, and write our pid in it for whoever finds it taken."""
        # Not inherited by the kernels (os.open's default), which would otherwise hold it after us.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the holder to let go."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.try_acquire():
                    await asyncio.sleep(RETRY_EVERY)
                return True
        return False

    def holder(self) -> str:
        """The pid of the process holding the lock, as it wrote it (or '?')."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
