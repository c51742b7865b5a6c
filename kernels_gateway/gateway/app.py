"""The aiohttp application: its state, its resources and its one table of routes."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator

import zmq.asyncio
from aiohttp import WSCloseCode, web

from ..config import Config
from ..supervisor.client import SupervisorClient
from . import handlers
from .channels import channels
from .errors import json_errors
from .keys import API_SPEC, CONFIG, SUPERVISOR, WEBSOCKETS, ZMQ_CONTEXT
from .limits import body_limit

KERNEL = "/api/kernels/{kernel_id}"


def routes(base: str) -> list[web.RouteDef]:
    return [
        web.get(f"{base}/api", handlers.api_info),
        web.get(f"{base}/api/health", handlers.health),
        web.get(f"{base}/api/spec.yaml", handlers.api_spec),
        web.get(f"{base}/api/kernelspecs", handlers.list_kernelspecs),
        web.get(f"{base}/api/kernelspecs/{{name}}", handlers.get_kernelspec),
        web.get(f"{base}/kernelspecs/{{name}}/{{path:.+}}", handlers.kernelspec_file),
        web.get(f"{base}/api/kernels", handlers.list_kernels),
        web.post(f"{base}/api/kernels", handlers.start_kernel),
        web.get(f"{base}{KERNEL}", handlers.get_kernel),
        web.delete(f"{base}{KERNEL}", handlers.shutdown_kernel),
        web.post(f"{base}{KERNEL}/interrupt", handlers.interrupt_kernel),
        web.post(f"{base}{KERNEL}/restart", handlers.restart_kernel),
        web.get(f"{base}{KERNEL}/channels", channels, allow_head=False),
    ]


async def supervisor_client(app: web.Application) -> AsyncIterator[None]:
    app[SUPERVISOR] = SupervisorClient(app[CONFIG].socket_path)
    yield
    await app[SUPERVISOR].close()


async def zmq_context(app: web.Application) -> AsyncIterator[None]:
    app[ZMQ_CONTEXT] = zmq.asyncio.Context()
    yield
    app[ZMQ_CONTEXT].destroy(linger=0)


async def close_websockets(app: web.Application) -> None:
    """On shutdown, tell every client the server is going away (1001) rather than just dropping it."""
    for ws in list(app[WEBSOCKETS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


def make_app(config: Config) -> web.Application:
    app = web.Application(middlewares=[json_errors, body_limit], client_max_size=config.max_body_size)
    app[CONFIG] = config
    app[API_SPEC] = handlers.api_description(config.base)
    app[WEBSOCKETS] = weakref.WeakSet()
    app.cleanup_ctx.extend([supervisor_client, zmq_context])
    app.on_shutdown.append(close_websockets)
    app.router.add_routes(routes(config.base))
    return app
