"""The sessions API (--sessions), with Jupyter Server's shapes and status codes: what Thebe and
JupyterLab's SessionManager ask for. The sessions themselves live in the supervisor
(supervisor/sessions.py), so that every web worker sees the same ones."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import KernelSpecNotFound, KernelStartFailed
from .handlers import json_body
from .keys import CONFIG, SUPERVISOR

SESSION = "/api/sessions/{session_id}"


def routes(base: str) -> list[web.RouteDef]:
    return [
        web.get(f"{base}/api/sessions", list_sessions),
        web.post(f"{base}/api/sessions", create_session),
        web.get(f"{base}{SESSION}", get_session),
        web.patch(f"{base}{SESSION}", update_session),
        web.delete(f"{base}{SESSION}", delete_session),
    ]


def _changes(body: dict[str, Any]) -> dict[str, Any]:
    """A request body as the supervisor's arguments; the deprecated `notebook` object is understood."""
    notebook = body.get("notebook")
    if isinstance(notebook, dict) and notebook.get("path") is not None:
        body = {**body, "path": notebook["path"], "type": "notebook"}
    kernel = body.get("kernel") or {}
    if not isinstance(kernel, dict):
        raise web.HTTPBadRequest(text="kernel must be an object")
    args = {key: body[key] for key in ("path", "name", "type") if key in body}
    return {**args, "kernel_id": kernel.get("id"), "kernel_name": kernel.get("name")}


async def _body(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not body:
        raise web.HTTPBadRequest(text="No JSON data provided")
    return body


async def list_sessions(request: web.Request) -> web.Response:
    if not request.app[CONFIG].list_kernels:
        raise web.HTTPForbidden(text="Listing sessions is disabled on this gateway (--list-kernels)")
    return web.json_response(await request.app[SUPERVISOR].session("list"))


async def create_session(request: web.Request) -> web.Response:
    """201 and the session: a new one, or the one that has this path already."""
    changes = _changes(await _body(request))
    try:
        model = await request.app[SUPERVISOR].session("create", **changes)
    except KernelSpecNotFound as e:  # Jupyter Server answers 501 here
        raise web.HTTPNotImplemented(text=f"The kernel is not available: {e.message}") from None
    location = f"{request.app[CONFIG].base}/api/sessions/{model['id']}"
    return web.json_response(model, status=201, headers={"Location": location})


async def get_session(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SUPERVISOR].session("get", **request.match_info))


async def update_session(request: web.Request) -> web.Response:
    """Rename the session, or give it another kernel (the one it leaves is shut down)."""
    changes = _changes(await _body(request))
    try:
        model = await request.app[SUPERVISOR].session("update", **request.match_info, **changes)
    except (KernelSpecNotFound, KernelStartFailed) as e:  # Jupyter Server answers 501 here too
        raise web.HTTPNotImplemented(text=f"The kernel could not be started: {e.message}") from None
    return web.json_response(model)


async def delete_session(request: web.Request) -> web.Response:
    """Forget the session and shut its kernel down."""
    await request.app[SUPERVISOR].session("delete", **request.match_info)
    return web.Response(status=204)
