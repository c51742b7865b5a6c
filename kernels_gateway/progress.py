"""How far each websocket's client has read, published by its worker where the supervisor can read it
even after that worker died: one memory-mapped file per worker in the runtime directory, a slot per
connection, written without a system call on every acknowledged message.

A slot::

    +-----------------+--------------+-----------------+------------------------------+
    | generation: u32 | length: u16  | requests: u16   | msg_id: UTF-8, `length` bytes |
    +-----------------+--------------+-----------------+------------------------------+

msg_id is the last iopub message the client has read; requests, how many of its shell and control
requests the kernel has not answered yet (their replies are collected for it should the worker die).

The generation is odd while the worker writes (a seqlock): a reader that sees it odd or changed
reads again, so a stalled or live worker is read whole, never torn.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

SLOT = 128
SLOTS = 16384  # a sparse file: pages exist only for slots in use
_HEAD = struct.Struct("<IHH")
MAX_ID = SLOT - _HEAD.size
READ_TRIES = 100


class ProgressMap:
    """The worker's side: a slot per open connection."""

    def __init__(self, path: Path):
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, SLOT * SLOTS)
            self._map = mmap.mmap(fd, SLOT * SLOTS)
        finally:
            os.close(fd)
        self._free = list(range(SLOTS - 1, -1, -1))

    def take(self) -> int | None:
        """A slot for a new connection, or None when all are taken (it then publishes nothing)."""
        if not self._free:
            return None
        slot = self._free.pop()
        self.write(slot, "", 0)
        return slot

    def write(self, slot: int, msg_id: str, requests: int) -> None:
        data = msg_id.encode()
        if len(data) > MAX_ID:
            data = b""  # no kernel's msg_id: better to know nothing than something wrong
        base = slot * SLOT
        (generation,) = struct.unpack_from("<I", self._map, base)
        writing = (generation + 1) | 1
        struct.pack_into("<I", self._map, base, writing)
        struct.pack_into("<HH", self._map, base + 4, len(data), min(requests, 0xFFFF))
        self._map[base + _HEAD.size : base + _HEAD.size + len(data)] = data
        struct.pack_into("<I", self._map, base, writing + 1)

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        self._map.close()
        self.path.unlink(missing_ok=True)


def read(path: str, slot: int) -> tuple[str | None, int]:
    """The supervisor's side: the msg_id last published in a slot (None if none), and the requests
    still unanswered."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            base = slot * SLOT
            if base + SLOT > len(view):
                return None, 0
            for _ in range(READ_TRIES):
                generation, length, requests = _HEAD.unpack_from(view, base)
                data = view[base + _HEAD.size : base + _HEAD.size + min(length, MAX_ID)]
                if generation % 2 == 0 and _HEAD.unpack_from(view, base)[0] == generation:
                    return data.decode(errors="replace") or None, requests
    except (OSError, ValueError):
        pass
    return None, 0
