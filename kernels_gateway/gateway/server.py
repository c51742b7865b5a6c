"""A web worker process: startup, serve until SIGTERM or SIGINT, shutdown with a deadline."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import ssl

from aiohttp import web

from ..config import Config
from ..systemd import Notifier, listen_sockets
from .app import make_app
from .auth import AccessLogger
from .limits import accept_errors
from .protocol import GatewayRunner

log = logging.getLogger("kernels_gateway.web")

SHUTDOWN_TIMEOUT = 5.0
# aiohttp's default without the start time, which every log line carries already, and with the duration.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs "%{Referer}i" "%{User-Agent}i"'


def serving_url(config: Config, host: str | None = None, port: int | None = None, path: str = "/api/kernels") -> str:
    """The URL of `path` on this gateway, at --ip and --port unless told another address."""
    host = config.ip if host is None else host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if config.certfile else "http"
    return f"{scheme}://{host}:{config.port if port is None else port}{config.base}{path}"


def address_in_use(config: Config) -> RuntimeError:
    return RuntimeError(f"Cannot listen on {config.ip}:{config.port}: address already in use")


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS settings of --certfile, --keyfile and --client-ca; None to serve plain HTTP."""
    if not config.certfile:
        if config.keyfile or config.client_ca:
            raise RuntimeError("--keyfile and --client-ca need --certfile")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2 or later
    try:
        context.load_cert_chain(config.certfile, config.keyfile or None)
    except OSError as e:  # ssl's own errors do not name the file
        key = config.keyfile or "in it"
        raise RuntimeError(f"Cannot load TLS certificate {config.certfile} (key {key}): {e}") from None
    if config.client_ca:
        try:
            context.load_verify_locations(config.client_ca)
        except OSError as e:
            raise RuntimeError(f"Cannot load client CA certificates {config.client_ca}: {e}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def serve(config: Config) -> None:
    tls = ssl_context(config)
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
                    if e.errno == errno.EADDRINUSE:
                        raise address_in_use(config) from None
                    raise
            if config.fd < 0:  # the arbiter logs the address of the socket it shares
                for address in inherited or [None]:
                    log.info("Serving at %s", _site_url(config, address))
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
        return serving_url(config)
    if sock.family == socket.AF_UNIX:
        return f"unix:{_address(sock)}{config.base}/api/kernels"
    host, port = sock.getsockname()[:2]
    return serving_url(config, host, port)
