"""Limits that hold before work is done: request sizes, and the open-file limit.

aiohttp's `client_max_size` refuses a body only once it has buffered that much of it; a declared
Content-Length above the limit is refused here at once, before a single body byte is read. Bodies
without a length (chunked) are still bounded by `client_max_size`, which stops reading at the limit.

Every websocket holds a socket and, once used, a few ZMQ sockets. A process out of file descriptors
can no longer accept a connection, so health checks go unanswered and asyncio logs a traceback per
failed accept; new websockets are therefore refused (503) while fewer than a reserve of descriptors is
left, and the conditions are logged once per interval, not once per event.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import time

from aiohttp import web

from ..errors import OutOfFiles
from .keys import CONFIG

log = logging.getLogger("kernels_gateway.web")

OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)
LOG_INTERVAL = 10.0


@web.middleware
async def body_limit(request: web.Request, handler) -> web.StreamResponse:
    limit = request.app[CONFIG].max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await handler(request)


class Throttled:
    """A warning logged at most once per interval, with the number of times it was left out since."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL):
        self.message, self.interval = message, interval
        self._last = -interval
        self._left_out = 0

    def warning(self, *args) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        more = f" ({self._left_out} more in the last {now - self._last:.0f} s)" if self._left_out else ""
        log.warning(self.message + more, *args)
        self._last, self._left_out = now, 0


out_of_files = Throttled("Out of file descriptors (%d of %d in use): %s")


def files_in_use() -> tuple[int, int]:
    """(descriptors open, the soft limit); all of them when not one more can be opened.

    Listing /proc/self/fd takes about 10 us per descriptor, too much for every websocket. The lowest
    free descriptor (the one the kernel hands out next) is free to learn, and all below it are in use:
    far from the limit, that lower bound decides; nearer, they are counted.
    """
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        lowest_free = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return limit, limit
    os.close(lowest_free)
    if lowest_free < (limit - reserve(limit)) // 2:
        return lowest_free, limit
    try:
        return len(os.listdir("/proc/self/fd")) - 1, limit  # less the listing's own
    except OSError:
        return limit, limit


def reserve(limit: int) -> int:
    """Descriptors kept for accepting and answering plain requests (health checks) and for the ZMQ
    sockets of websockets already open."""
    return max(32, limit // 8)


def check_open_files() -> None:
    """OutOfFiles when a new websocket would eat into the reserve."""
    used, limit = files_in_use()
    if used > limit - reserve(limit):
        out_of_files.warning(used, limit, "refusing new websockets")
        raise OutOfFiles(f"The gateway is out of file descriptors ({used} of {limit} in use); try again later")


def is_out_of_files(error: BaseException | None) -> bool:
    """An OSError or a ZMQError (which carries an errno too) saying that no descriptor is left."""
    return getattr(error, "errno", None) in OUT_OF_FILES


def accept_errors(loop, context: dict) -> None:
    """The event loop's exception handler: asyncio logs a traceback for every accept() that fails for
    want of a descriptor, up to a hundred a second; one line per interval says as much."""
    if is_out_of_files(context.get("exception")):
        out_of_files.warning(*files_in_use(), context.get("message", "accept failed"))
        return
    loop.default_exception_handler(context)
