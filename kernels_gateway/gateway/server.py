"""A web worker process: startup, serve until SIGTERM or SIGINT, shutdown with a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import sdnotify
from aiohttp import web

from ..config import Config
from .app import make_app
from .auth import AccessLogger

log = logging.getLogger("kernels_gateway.web")

SHUTDOWN_TIMEOUT = 5.0


def serving_url(config: Config) -> str:
    host = f"[{config.ip}]" if ":" in config.ip else config.ip
    return f"http://{host}:{config.port}{config.base}/api/kernels"


async def serve(config: Config) -> None:
    runner = web.AppRunner(make_app(config), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           access_log_class=AccessLogger)
    await runner.setup()
    if config.fd >= 0:  # a socket inherited from the arbiter, shared with the other workers
        site: web.BaseSite = web.SockSite(runner, socket.socket(fileno=config.fd))
    else:
        site = web.TCPSite(runner, config.ip, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    notifier = sdnotify.SystemdNotifier()
    try:
        await site.start()
        if config.fd < 0:
            log.info("Serving at %s", serving_url(config))
        notifier.notify("READY=1")
        await stop.wait()
    finally:
        notifier.notify("STOPPING=1")
        await runner.cleanup()
