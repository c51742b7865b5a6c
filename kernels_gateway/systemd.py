"""The service manager's side of a process's life, as systemd defines it: notifications (sd_notify:
READY=1, STOPPING=1, watchdog pings) and sockets handed over at activation (sd_listen_fds).

Both work the same under systemd, under `systemd-socket-activate`, and under the one-command arbiter,
which plays the service manager for its children. Without NOTIFY_SOCKET, notifications go nowhere.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import MutableMapping

import sdnotify

from .errors import CannotStart

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first socket handed over is always fd 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def watchdog_interval(environ: MutableMapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings, half the unit's WatchdogSec as sd_watchdog_enabled advises, or
    None when no watchdog is set for this process (WATCHDOG_PID, when present, must be ours)."""
    try:
        usec = int(environ["WATCHDOG_USEC"])
        pid = int(environ.get("WATCHDOG_PID", os.getpid()))
    except (KeyError, ValueError):
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2e6


def listen_sockets(environ: MutableMapping[str, str] = os.environ) -> list[socket.socket]:
    """The listening sockets handed over by the service manager (sd_listen_fds), or [] without any.

    They are ours only when LISTEN_PID names this process. The variables are removed once read, so that
    no child process mistakes them for its own, and the sockets are not inherited by children.
    """
    try:
        pid, count = int(environ["LISTEN_PID"]), int(environ["LISTEN_FDS"])
    except (KeyError, ValueError):
        return []
    if pid != os.getpid():
        return []
    for name in LISTEN_VARIABLES:
        environ.pop(name, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        if sock.type != socket.SOCK_STREAM:
            raise CannotStart(f"the socket passed as fd {fd} is not a stream socket (ListenStream=)")
        sockets.append(sock)
    return sockets


class Notifier:
    """READY=1 and STOPPING=1 on request, and watchdog pings for as long as the `async with` block runs.

    A ping comes from the event loop itself, so a loop that hangs stops pinging and the service manager
    restarts the process.
    """

    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        if self._notifier.socket is not None:  # never let a slow service manager block the event loop
            self._notifier.socket.setblocking(False)
        self._watchdog: asyncio.Task | None = None

    def ready(self) -> None:
        self._notifier.notify("READY=1")

    def stopping(self) -> None:
        self._notifier.notify("STOPPING=1")

    async def __aenter__(self) -> Notifier:
        interval = watchdog_interval()
        if interval is not None:
            self._watchdog = asyncio.create_task(self._ping(interval), name="watchdog")
        return self

    async def __aexit__(self, *exc) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)

    async def _ping(self, interval: float) -> None:
        while True:
            self._notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
