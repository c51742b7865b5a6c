"""aiohttp's HTTP layer as the gateway runs it: requests it cannot parse get JSON errors too.

aiohttp answers a request it cannot parse (a bad request line, a header too long, a bad method) in
its protocol, before any route or middleware sees it, with a `text/plain` page quoting the request
and a traceback in the log. Here they get `{"message", "reason"}` with the precise 4xx, quote nothing
of the request (which may carry a token), and take one line of the log.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .errors import error_response

log = logging.getLogger("kernels_gateway.web")


def status_of(exc: BaseException | None, status: int) -> tuple[int, str]:
    """The answer to a request that could not be parsed: (status, message)."""
    if isinstance(exc, LineTooLong):  # aiohttp does not say which line: 400, not 414 or 431
        return 400, "The request line or a request header is too long"
    if isinstance(exc, HttpProcessingError):
        text = str(exc.message).lower()
        if "too many headers" in text:
            return 431, "Too many request headers"
        if "method" in text:
            return 400, "Bad HTTP method"
        return exc.code if 400 <= exc.code < 500 else 400, f"Malformed HTTP request ({type(exc).__name__})"
    return status, "Internal server error" if status >= 500 else "Bad request"


class GatewayRequestHandler(RequestHandler):
    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("Error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, only closing is left
            raise ConnectionError("Response is sent already, cannot send another response")
        status, text = status_of(exc, status)
        # The access log has a line for it already; this says why, for whoever looks closer.
        log.debug("Refused a request from %s that could not be parsed: %d %s", request.remote, status, text)
        response = error_response(status, text)
        response.force_close()
        return response


class GatewayServer(web.Server):
    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are GatewayRequestHandlers; aiohttp has no setting for the class."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GatewayServer(server.request_handler, request_factory=server.request_factory,
                             handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs)
