"""A web worker process: startup, serve until SIGTERM or SIGINT, shutdown with a deadline."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl

import sdnotify
from aiohttp import web

from ..config import Config
from .app import make_app

log = logging.getLogger("kernels_gateway.web")

SHUTDOWN_TIMEOUT = 5.0


def serving_url(config: Config) -> str:
    host = f"[{config.ip}]" if ":" in config.ip else config.ip
    scheme = "https" if config.certfile else "http"
    return f"{scheme}://{host}:{config.port}{config.base}/api/kernels"


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
    runner = web.AppRunner(make_app(config), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    if config.fd >= 0:  # a socket inherited from the arbiter, shared with the other workers
        site: web.BaseSite = web.SockSite(runner, socket.socket(fileno=config.fd), ssl_context=tls)
    else:
        site = web.TCPSite(runner, config.ip, config.port, ssl_context=tls)
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
