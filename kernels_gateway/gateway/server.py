"""A web worker process: startup, serve until SIGTERM or SIGINT, shutdown with a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

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
    return f"http://{host}:{config.port}{config.base}/api/kernels"


async def serve(config: Config) -> None:
    runner = web.AppRunner(make_app(config), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           access_log_class=AccessLogger, access_log_format=ACCESS_LOG_FORMAT)
    await runner.setup()
    sites = _sites(runner, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Notifier() as notifier:
        try:
            for site in sites:
                await site.start()
                if config.fd < 0:  # the arbiter logs the address of the socket it shares
                    log.info("Serving at %s%s/api/kernels", site.name, config.base)
            notifier.ready()
            await stop.wait()
        finally:
            notifier.stopping()
            await runner.cleanup()


def _sites(runner: web.AppRunner, config: Config) -> list[web.BaseSite]:
    """Where to listen: the socket the arbiter shares with every worker, the sockets the service manager
    handed over (socket activation), or else a socket of our own on --ip and --port."""
    if config.fd >= 0:
        return [web.SockSite(runner, socket.socket(fileno=config.fd))]
    activated = listen_sockets()
    if activated:
        return [web.SockSite(runner, sock) for sock in activated]
    return [web.TCPSite(runner, config.ip, config.port)]
