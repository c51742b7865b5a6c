"""The aiohttp application: its state, its resources and its one table of routes."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator

import zmq.asyncio
from aiohttp import web

from ..config import Config
from ..supervisor.client import SupervisorClient
from . import execute, handlers, sessions
from .auth import host_checked, local_only, setup_cors, token_required
from .channels import channels, close_all, progress_map, relay_event
from .errors import json_errors
from .forwarded import believe_the_proxy
from .keys import API_SPEC, CONFIG, FEEDS, SUPERVISOR, ZMQ_CONTEXT
from .limits import body_limit
from .metrics import metrics, relay_counts

KERNEL = "/api/kernels/{kernel_id}"
MAX_ZMQ_SOCKETS = 65536
# Methods a page may send to a path nothing serves; OPTIONS is left to CORS, which answers preflights.
UNKNOWN_ROUTE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")  # GET brings HEAD


def routes(base: str, with_sessions: bool = False, with_cors: bool = False) -> list[web.RouteDef]:
    """Every route; the last one answers whatever the others do not (404 or 405, with CORS). OPTIONS
    is CORS's where there is CORS, which answers it on every route."""
    unknown = UNKNOWN_ROUTE_METHODS + (() if with_cors else ("OPTIONS",))
    return [
        web.get(f"{base}/client.js", handlers.client_js),
        web.get(f"{base}/api", handlers.api_info),
        web.get(f"{base}/api/health", handlers.health),
        web.get(f"{base}/api/status", handlers.api_status),
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
        *execute.routes(base),
        web.get(f"{base}/metrics", metrics),
        *(sessions.routes(base) if with_sessions else []),
        *(web.route(method, "/{path:.*}", handlers.unknown_route) for method in unknown),
    ]


async def supervisor_client(app: web.Application) -> AsyncIterator[None]:
    """The connection to the supervisor, and the task that follows its kernel state events."""
    config = app[CONFIG]
    app[SUPERVISOR] = SupervisorClient(config.socket_path, config.kernel_start_timeout, config.shutdown_wait)
    events = asyncio.create_task(app[SUPERVISOR].follow(lambda event: relay_event(app, event)))
    yield
    events.cancel()
    await asyncio.gather(events, return_exceptions=True)
    await app[SUPERVISOR].close()


async def zmq_context(app: web.Application) -> AsyncIterator[None]:
    app[ZMQ_CONTEXT] = zmq.asyncio.Context()
    # ZMQ's default of 1023 sockets would cap a worker at about 250 websockets; the open-file limit
    # (raised to its hard limit at start-up) is the real bound.
    app[ZMQ_CONTEXT].max_sockets = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], MAX_ZMQ_SOCKETS)
    yield
    app[ZMQ_CONTEXT].destroy(linger=0)


def make_app(config: Config, listening: list[str] = ()) -> web.Application:
    """`listening`: the addresses the gateway listens on, which decide whether the Host is checked."""
    # The Host check reads the Host this gateway was sent, whoever sent it: a proxy passes the public name
    # on (README's nginx configuration does). What a trusted proxy forwarded comes before every other
    # check (json_errors only shapes their errors), so that each sees the client's address and the public
    # scheme and host.
    middlewares = [json_errors]
    if "*" not in config.allow_host and local_only(listening):
        middlewares.append(host_checked(config.allow_host))
    if config.trust_xheaders:
        middlewares.append(believe_the_proxy)
    middlewares.append(body_limit)
    if config.auth_token:
        middlewares.append(token_required(config.auth_token))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_size)
    app[CONFIG] = config
    app[API_SPEC] = handlers.api_description(config.base, config.sessions)
    app[FEEDS] = {}
    app.cleanup_ctx.extend([supervisor_client, zmq_context, relay_counts, progress_map])
    app.on_shutdown.append(close_all)
    app.router.add_routes(routes(config.base, config.sessions, bool(config.allow_origin)))
    setup_cors(app, config)
    return app
