"""How far each websocket's client has read, published by its worker where the supervisor can read it
even after that worker died: one memory-mapped file per worker in the runtime directory, a slot per
connection, written without a system call on every acknowledged message.

A slot::

    +--------------------+------------------+---------------------------------+
    | generation: u32    | length: u16      | msg_id: UTF-8, `length` bytes    |
    +--------------------+------------------+---------------------------------+

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
_HEAD = struct.Struct("<IH")
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
        self.write(slot, "")
        return slot

    def write(self, slot: int, msg_id: str) -> None:
        data = msg_id.encode()
        if len(data) > MAX_ID:
            return  # not a kernel's msg_id; the last one written stands
        base = slot * SLOT
        (generation,) = struct.unpack_from("<I", self._map, base)
        struct.pack_into("<I", self._map, base, (generation + 1) | 1)
        struct.pack_into("<H", self._map, base + 4, len(data))
        self._map[base + _HEAD.size : base + _HEAD.size + len(data)] = data
        struct.pack_into("<I", self._map, base, ((generation + 1) | 1) + 1)

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def close(self) -> None:
        self._map.close()
        self.path.unlink(missing_ok=True)


def read(path: str, slot: int) -> str | None:
    """The supervisor's side: the msg_id last published in a slot, or None if there is none."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            base = slot * SLOT
            if base + SLOT > len(view):
                return None
            for _ in range(READ_TRIES):
                generation, length = _HEAD.unpack_from(view, base)
                data = view[base + _HEAD.size : base + _HEAD.size + min(length, MAX_ID)]
                if generation % 2 == 0 and _HEAD.unpack_from(view, base)[0] == generation:
                    return data.decode(errors="replace") or None
    except (OSError, ValueError):
        return None
    return None
