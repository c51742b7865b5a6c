"""The one place where errors become HTTP answers: JSON `{"message", "reason"}`, never HTML or a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus

from aiohttp import web

from ..errors import (
    BadRequest,
    ExecutionNotFound,
    GatewayError,
    InputNotPending,
    KernelBusy,
    KernelLimit,
    KernelNotFound,
    KernelSpecNotFound,
    KernelStartFailed,
    OutOfFiles,
    SessionNotFound,
    SupervisorUnavailable,
)
from .limits import files_in_use, is_out_of_files, out_of_files

log = logging.getLogger("kernels_gateway.web")

STATUS: dict[type[GatewayError], int] = {
    BadRequest: 400,
    KernelLimit: 403,
    KernelNotFound: 404,
    KernelSpecNotFound: 404,
    SessionNotFound: 404,
    ExecutionNotFound: 404,
    InputNotPending: 409,
    KernelBusy: 409,
    KernelStartFailed: 500,
    SupervisorUnavailable: 503,
    OutOfFiles: 503,
}


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    reason = HTTPStatus(status).phrase
    return web.json_response({"message": message, "reason": reason}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as e:
        response = error_response(STATUS.get(type(e), 500), e.message)
        if isinstance(e, OutOfFiles):
            response.force_close()  # a connection kept alive would hold the descriptor it lacks
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
        message = e.text if e.text and e.text != f"{e.status}: {e.reason}" else e.reason
        return error_response(e.status, message, headers)
    except Exception as e:
        if is_out_of_files(e):  # a ZMQ socket that could not be created
            out_of_files.warning(*files_in_use(), f"{request.method} {request.path} refused")
            response = error_response(503, "The gateway is out of file descriptors; try again later")
            response.force_close()
            return response
        log.exception("Unhandled error in %s %s", request.method, request.path)
        return error_response(500, "Internal server error")
