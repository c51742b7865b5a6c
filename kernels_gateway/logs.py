"""Log lines: readable text by default, or one JSON object per line (`--log-format json`) for collectors."""

from __future__ import annotations

import json
import logging
import os
import select
import stat
import sys
import threading
from datetime import datetime, timezone

TEXT_FORMAT = "[%(levelname).1s %(asctime)s %(name)s] %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=` and becomes a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "pid", "message", ...extra, "exception"}` on one line.

    Extras are kept as fields: aiohttp's access log passes each part of the request line that way
    (remote_address, first_request_line, response_status, response_size, request_time_frac, ...).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class SturdyStreamHandler(logging.StreamHandler):
    """A handler that outlives its stream. When a write fails (the reader of a pipe is gone: `| jq`
    ended), the descriptor, and any other standard one on the same pipe, is pointed at /dev/null: this
    process and those it starts later write there from then on, where Python would print a traceback
    per line and exit with 120 for a stream it cannot flush."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            _point_at_devnull(self.stream)
        else:
            super().handleError(record)


def _point_at_devnull(stream) -> None:
    try:
        broken = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                same = os.path.samestat(os.fstat(fd), broken)
            except OSError:
                continue
            if same:
                os.dup2(null, fd)
    finally:
        os.close(null)


def _watch_pipes() -> None:
    """Point stdout and stderr at /dev/null as soon as the reader of their pipe or socket goes away,
    not only once this process next writes: a kernel started meanwhile would inherit the broken pipe
    and die of its first line. poll() reports POLLERR and POLLHUP whatever it is asked for."""
    fds = []
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            fds.append(fd)
    if not fds:
        return

    def watch() -> None:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, 0)
        while fds:
            for fd, _ in poller.poll():
                poller.unregister(fd)
                fds.remove(fd)
                with open(os.devnull, "w") as null:
                    os.dup2(null.fileno(), fd)

    threading.Thread(target=watch, name="log-pipe-watch", daemon=True).start()


def _open_standard_descriptors() -> None:
    """A process started with stdin, stdout or stderr closed would hand those numbers to the next file
    it opens (a socket, a kernel's connection file), and a stray write would land there: /dev/null
    holds the place instead."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _log_uncaught() -> None:
    """What Python would print to stderr by itself goes through logging, so JSON mode stays JSON."""
    log = logging.getLogger("kernels_gateway")
    sys.excepthook = lambda kind, value, tb: log.critical("Uncaught exception", exc_info=(kind, value, tb))
    threading.excepthook = lambda args: log.error(
        "Uncaught exception in thread %s", getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
    sys.unraisablehook = lambda u: log.warning(
        "%s: %r", u.err_msg or "Exception ignored in", u.object,
        exc_info=(u.exc_type, u.exc_value, u.exc_traceback) if u.exc_type else None)
    logging.captureWarnings(True)


def configure(level: str, form: str) -> None:
    _open_standard_descriptors()
    handler = SturdyStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    _log_uncaught()
    _watch_pipes()
