"""REST handlers: the kernels and kernelspecs APIs. Each asks the supervisor and shapes its answer."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import __version__
from ..errors import BadRequest, KernelSpecNotFound, SupervisorUnavailable
from .auth import public
from .keys import API_SPEC, CONFIG, SUPERVISOR

HEALTH_TIMEOUT = 5.0
SPEC_SERVERS = "servers:\n  - url: /\n"
SPEC_SCHEMAS = "# components/schemas:\n"

CLIENT_JS = Path(__file__).parent / "static" / "client.js"


async def api_info(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


@public
async def client_js(request: web.Request) -> web.FileResponse:
    """The browser client: public, since a page imports it with <script type="module">, which can send
    no token, and it holds nothing but code."""
    return web.FileResponse(CLIENT_JS, headers={"Content-Type": "text/javascript; charset=utf-8"})


@public
async def health(request: web.Request) -> web.Response:
    """200 while the supervisor answers a ping; a hung supervisor is as unready as an absent one.
    Public, so that load balancers and orchestrators need no secret: it tells only that it is up."""
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT):
            await request.app[SUPERVISOR].ping()
    except TimeoutError:
        raise SupervisorUnavailable(f"The kernel supervisor did not answer within {HEALTH_TIMEOUT:g} s") from None
    return web.json_response({"status": "ok", "version": __version__})


def api_description(base: str, with_sessions: bool = False) -> str:
    """The packaged OpenAPI document, with the base path as its server URL (and the sessions API when
    it is served)."""
    text = (resources.files(__package__) / "spec.yaml").read_text()
    assert SPEC_SERVERS in text, "spec.yaml must keep its placeholder server URL"
    if with_sessions:
        paths, schemas = (resources.files(__package__) / "spec_sessions.yaml").read_text().split(SPEC_SCHEMAS)
        text = text.replace("\npaths:\n", f"\npaths:\n{paths.split(chr(10), 1)[1]}", 1)
        text = text.replace("\n  schemas:\n", f"\n  schemas:\n{schemas}", 1)
    return text.replace(SPEC_SERVERS, f"servers:\n  - url: {json.dumps(base or '/')}\n", 1)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def api_status(request: web.Request) -> web.Response:
    """Jupyter Server's /api/status (Thebe asks it first): since when the gateway runs, its last
    kernel activity, its kernels and their websockets."""
    status = await request.app[SUPERVISOR].status()
    return web.json_response({**status, "started": _iso(status["started"]),
                              "last_activity": _iso(status["last_activity"])})


async def unknown_route(request: web.Request) -> web.Response:
    """What no other route serves: 405 where a route has the path but not the method, else 404. A route
    of its own, rather than the router's answer, so that CORS headers reach the page here too."""
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            _, allowed = await resource.resolve(request)
            if allowed:
                raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def api_spec(request: web.Request) -> web.Response:
    return web.Response(text=request.app[API_SPEC], content_type="application/yaml")


# -- kernelspecs ---------------------------------------------------------------------------------


def _spec_model(base: str, spec: dict[str, Any]) -> dict[str, Any]:
    name = spec["name"]
    resources = {}
    for file in spec["resources"]:
        key = file if file in ("kernel.js", "kernel.css") else file.rsplit(".", 1)[0]
        resources[key] = f"{base}/kernelspecs/{name}/{file}"
    return {"name": name, "spec": spec["spec"], "resources": resources}


async def list_kernelspecs(request: web.Request) -> web.Response:
    found = await request.app[SUPERVISOR].kernelspecs()
    base = request.app[CONFIG].base
    specs = {name: _spec_model(base, spec) for name, spec in found["kernelspecs"].items()}
    return web.json_response({"default": found["default"], "kernelspecs": specs})


async def _kernelspec(request: web.Request) -> dict[str, Any]:
    # Kernelspec names are case-insensitive: jupyter_client lists and finds them in lower case. A `+`
    # is a space, as Jupyter Server and Kernel Gateway decode it: Jupyter Server's gateway client
    # sends "sample 2" as sample+2 (and `+` is no character of a valid kernelspec name).
    name = request.match_info["name"].replace("+", " ").lower()
    found = await request.app[SUPERVISOR].kernelspecs()
    try:
        return found["kernelspecs"][name]
    except KeyError:
        raise KernelSpecNotFound(name) from None


async def get_kernelspec(request: web.Request) -> web.Response:
    spec = await _kernelspec(request)
    return web.json_response(_spec_model(request.app[CONFIG].base, spec))


async def kernelspec_file(request: web.Request) -> web.FileResponse:
    """A file from the kernelspec's own folder (logos, kernel.js); nothing outside it."""
    spec = await _kernelspec(request)
    folder = Path(spec["resource_dir"]).resolve()
    try:
        # resolve() follows symlinks, so a link inside the folder to a file outside it is refused too.
        path = (folder / request.match_info["path"]).resolve()
        found = path.is_relative_to(folder) and path.is_file()
    except (ValueError, OSError):  # a NUL byte, a name too long for the file system
        found = False
    if not found:
        raise web.HTTPNotFound(text=f"No such file in kernelspec {spec['name']}")
    return web.FileResponse(path)


# -- kernels -------------------------------------------------------------------------------------


async def list_kernels(request: web.Request) -> web.Response:
    if not request.app[CONFIG].list_kernels:
        raise web.HTTPForbidden(text="Listing kernels is disabled on this gateway (--list-kernels)")
    return web.json_response(await request.app[SUPERVISOR].list())


async def start_kernel(request: web.Request) -> web.Response:
    body = await json_body(request)
    model = await request.app[SUPERVISOR].start(body.get("name"), body.get("env"))  # checked by the client
    location = f"{request.app[CONFIG].base}/api/kernels/{model['id']}"
    return web.json_response(model, status=201, headers={"Location": location})


async def get_kernel(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SUPERVISOR].get(request.match_info["kernel_id"]))


async def shutdown_kernel(request: web.Request) -> web.Response:
    await request.app[SUPERVISOR].shutdown(request.match_info["kernel_id"])
    return web.Response(status=204)


async def interrupt_kernel(request: web.Request) -> web.Response:
    await request.app[SUPERVISOR].interrupt(request.match_info["kernel_id"])
    return web.Response(status=204)


async def restart_kernel(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SUPERVISOR].restart(request.match_info["kernel_id"]))


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; an empty body counts as {}."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"Request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    return body
