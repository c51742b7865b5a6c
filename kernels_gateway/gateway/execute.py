"""The execute API: run code with one HTTP request, in jupyter-server-nbmodel's shapes, or streamed as
newline-delimited JSON. The executions themselves live in the supervisor (supervisor/executions.py), so
a caller that disconnects, or whose worker dies, fetches the result later through any worker.

nbmodel's clients decode `outputs` from a JSON string, and so it is one here; the streaming form
carries plain JSON. Every `Location` and `request_url` includes the base path.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from ..errors import BadRequest, GatewayError
from ..supervisor.wire import WireError
from .errors import error_response
from .handlers import json_body
from .keys import CONFIG, SUPERVISOR

KERNEL = "/api/kernels/{kernel_id}"
NDJSON = "application/x-ndjson"
RUNNING = {"queued", "running", "input"}


def routes(base: str) -> list[web.RouteDef]:
    return [
        web.post(f"{base}{KERNEL}/execute", execute),
        web.get(f"{base}{KERNEL}/execute", pending),
        web.get(f"{base}{KERNEL}/requests/{{request_id}}", result),
        web.post(f"{base}{KERNEL}/input", answer_input),
    ]


def _kernel_url(request: web.Request, kernel_id: str) -> str:
    return f"{request.app[CONFIG].base}/api/kernels/{kernel_id}"


def _shaped(request: web.Request, model: dict[str, Any]) -> dict[str, Any]:
    """A model from the supervisor in nbmodel's shape: outputs as a JSON string, pending and
    request_status, the URL to poll."""
    status = model["status"]
    shaped = {
        **model,
        "request_url": f"{_kernel_url(request, model['kernel_id'])}/requests/{model['request_id']}",
        "outputs": json.dumps(model["outputs"]),
        "pending": status in RUNNING,
        "request_status": status if status in RUNNING else "complete",
    }
    if status in RUNNING:
        del shaped["status"], shaped["execution_count"]
    return shaped


async def _arguments(request: web.Request) -> dict[str, Any]:
    """The body's code, metadata and timeout, which the supervisor checks."""
    body = await json_body(request)
    if body.get("server") is not None:
        raise BadRequest("server: this gateway runs code on its own kernels only")
    return {key: body.get(key) for key in ("code", "metadata", "timeout")}


async def execute(request: web.Request) -> web.StreamResponse:
    """POST .../execute: 202 and where to poll; with `Accept: application/x-ndjson`, 200 and a stream
    of one line per output, then the result."""
    kernel_id = request.match_info["kernel_id"]
    arguments = await _arguments(request)
    streamed = NDJSON in request.headers.get("Accept", "")
    try:
        model = await request.app[SUPERVISOR].execution("submit", kernel_id=kernel_id, stream=streamed, **arguments)
    except WireError:
        return error_response(413, "The code is too large to be run")
    shaped = _shaped(request, model)
    headers = {"Location": shaped["request_url"]}
    if not streamed:
        return web.json_response(shaped, status=202, headers=headers)
    return await _stream(request, model, headers)


async def _stream(request: web.Request, model: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse:
    """Lines as the kernel produces them, fetched from the supervisor in batches (one request per
    batch, however many outputs it holds), so a flood costs no request per output. A caller that goes
    away ends only this loop: the execution goes on."""
    response = web.StreamResponse(status=200, headers={**headers, "Content-Type": NDJSON})
    await response.prepare(request)
    supervisor, after = request.app[SUPERVISOR], 0
    ids = {"kernel_id": model["kernel_id"], "request_id": model["request_id"]}
    with contextlib.suppress(ConnectionResetError):
        while True:
            try:
                found = await supervisor.execution("wait", after=after, **ids)
            except GatewayError as e:  # the supervisor went away, or the result with it: say so, and end
                await response.write(_line({"error": {"message": e.message}}))
                break
            lines = found["lines"]
            if found["missed"]:
                lines.insert(0, {"dropped": {"lines": found["missed"]}})
            after = found["last"]
            if "result" in found:
                lines.append({**_shaped(request, found["result"]), "outputs": found["result"]["outputs"]})
            if lines:
                await response.write(b"".join(map(_line, lines)))
            if "result" in found:
                break
        await response.write_eof()
    return response


def _line(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


async def result(request: web.Request) -> web.Response:
    """GET .../requests/{id}: 202 while it runs, 300 while it waits for input, 200 once it is over."""
    model = await request.app[SUPERVISOR].execution("get", **request.match_info)
    shaped = _shaped(request, model)
    if model["status"] == "input":
        location = f"{_kernel_url(request, model['kernel_id'])}/input"
        return web.json_response(shaped, status=300, headers={"Location": location})
    return web.json_response(shaped, status=202 if shaped["pending"] else 200)


async def pending(request: web.Request) -> web.Response:
    """GET .../execute: the kernel's executions that are not over, as nbmodel lists them."""
    kernel_id = request.match_info["kernel_id"]
    models = await request.app[SUPERVISOR].execution("list", kernel_id=kernel_id)
    return web.json_response({"kernel_id": kernel_id, "requests": [_shaped(request, m) for m in models]})


async def answer_input(request: web.Request) -> web.Response:
    """POST .../input: the answer to the pending input() of the kernel's running execution; 201."""
    body = await json_body(request)
    await request.app[SUPERVISOR].execution("input", kernel_id=request.match_info["kernel_id"], value=body.get("input"))
    return web.Response(status=201)
