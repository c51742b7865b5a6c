"""One record per running kernel in the runtime directory, so that a restarted supervisor can adopt it.

A record holds what jupyter_client needs to manage the kernel again (its name, its connection file, its
provisioner's own saved state) plus what only we know: the environment the start request asked for
(to restart it faithfully) and the process start time (so a recycled pid is never mistaken for it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("kernels_gateway.supervisor")


class Records:
    def __init__(self, runtime_dir: Path):
        self.folder = runtime_dir / "kernels"
        self.folder.mkdir(mode=0o700, exist_ok=True)

    def _path(self, kernel_id: str) -> Path:
        return self.folder / f"{kernel_id}.json"

    def save(self, kernel_id: str, record: dict[str, Any]) -> None:
        """Write atomically and privately: the record names the kernel's connection file and key."""
        path = self._path(kernel_id)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(record, file, default=_text)
        os.replace(temporary, path)

    def remove(self, kernel_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(kernel_id).unlink()

    def load_all(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                log.warning("Unreadable kernel record %s removed", path)
                path.unlink(missing_ok=True)
        return records


def _text(value: object) -> str:
    """Provisioner info may hold the session key as bytes; JSON holds it as text."""
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} cannot be saved in a kernel record")
