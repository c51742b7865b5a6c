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

log = logging.getLogger("kernels_gateway.web")

SHUTDOWN_TIMEOUT = 5.0
# aiohttp's default without the start time, which every log line carries already, and with the duration.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs "%{Referer}i" "%{User-Agent}i"'


def serving_url(config: Config) -> str:
    host = f"[{config.ip}]" if ":" in config.ip else config.ip
    scheme = "https" if config.certfile else "http"
    return f"{scheme}://{host}:{config.port}{config.base}/api/kernels"


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
    runner = web.AppRunner(make_app(config), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           access_log_class=AccessLogger, access_log_format=ACCESS_LOG_FORMAT)
    await runner.setup()
    sites = _sites(runner, config, tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
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
                    log.info("Serving at %s%s/api/kernels", site.name, config.base)
            notifier.ready()
            await stop.wait()
        finally:
            notifier.stopping()
            await runner.cleanup()


def _sites(runner: web.AppRunner, config: Config, tls: ssl.SSLContext | None) -> list[web.BaseSite]:
    """Where to listen: the socket the arbiter shares with every worker, the sockets the service manager
    handed over (socket activation), or else a socket of our own on --ip and --port."""
    if config.fd >= 0:
        return [web.SockSite(runner, socket.socket(fileno=config.fd), ssl_context=tls)]
    activated = listen_sockets()
    if activated:
        return [web.SockSite(runner, sock, ssl_context=tls) for sock in activated]
    return [web.TCPSite(runner, config.ip, config.port, ssl_context=tls)]
