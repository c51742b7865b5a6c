"""A web worker process: startup, serve until SIGTERM or SIGINT, shutdown with a deadline."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket

from aiohttp import web

from ..config import Config
from ..errors import CannotStart
from ..systemd import Notifier, listen_sockets
from ..tls import server_context
from .app import make_app
from .auth import AccessLogger
from .limits import accept_errors
from .protocol import GatewayRunner

log = logging.getLogger("kernels_gateway.web")

SHUTDOWN_TIMEOUT = 5.0
# aiohttp's default without the start time, which every log line carries already, and with the duration.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs "%{Referer}i" "%{User-Agent}i"'


def cannot_listen(config: Config, e: OSError) -> CannotStart:
    """Why --ip and --port cannot be listened on (in use, a privileged port, an address not ours)."""
    why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).lower()
    return CannotStart(f"Cannot listen on {config.ip}:{config.port}: {why}")


async def serve(config: Config) -> None:
    tls = server_context(config)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(accept_errors)
    inherited = _inherited_sockets(config)
    listening = [_address(sock) for sock in inherited] or [config.ip]
    runner = GatewayRunner(make_app(config, listening), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           access_log_class=AccessLogger, access_log_format=ACCESS_LOG_FORMAT,
                           keepalive_timeout=config.idle_connection_timeout)
    await runner.setup()
    sites = [web.SockSite(runner, sock, ssl_context=tls) for sock in inherited] \
        or [web.TCPSite(runner, config.ip, config.port, ssl_context=tls)]
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Notifier() as notifier:
        try:
            for site in sites:
                try:
                    await site.start()
                except OSError as e:
                    raise cannot_listen(config, e) from None
            if config.fd < 0:  # the arbiter logs the address of the socket it shares
                for address in inherited or [None]:
                    log.info("Serving at %s", _site_url(config, address))
            gc.freeze()  # what start-up built lives as long as the process: no full collection walks it
            notifier.ready()
            await stop.wait()
        finally:
            notifier.stopping()
            await runner.cleanup()


def _inherited_sockets(config: Config) -> list[socket.socket]:
    """The socket the arbiter shares with every worker, or the sockets the service manager handed
    over (socket activation); none when the worker listens on --ip and --port itself."""
    if config.fd >= 0:
        return [socket.socket(fileno=config.fd)]
    return listen_sockets()


def _address(sock: socket.socket) -> str:
    """Where a socket listens: an IP address, or a Unix socket's path."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return name if isinstance(name, str) and name else "/"  # abstract and unnamed sockets are local too
    return name[0]


def _site_url(config: Config, sock: socket.socket | None) -> str:
    if sock is None:
        return config.url()
    if sock.family == socket.AF_UNIX:
        return f"unix:{_address(sock)}{config.base}/api/kernels"
    host, port = sock.getsockname()[:2]
    return config.url(host, port)
