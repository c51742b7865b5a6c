"""Behind a reverse proxy (--trust-xheaders, Kernel Gateway's KG_TRUST_XHEADERS): the proxy's
`Forwarded` and `X-Forwarded-For`, `-Proto`, `-Host` headers are believed, through aiohttp-remotes, so
that handlers see the client's address and the public scheme and host (the websocket's own-origin
check among them), and so does the access log.

Each header is taken from its last hop only, the one the proxy in front of the gateway wrote, which
is why the option is for gateways that only a proxy can reach. Off, the headers are ignored.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp_remotes import ForwardedRelaxed, XForwardedRelaxed

# The client's address as the proxy forwarded it, for the access log, which sees the request as it
# came off the socket rather than the one the handlers saw.
FORWARDED_REMOTE = web.RequestKey("forwarded_remote", dict)
X_FORWARDED = (hdrs.X_FORWARDED_FOR, hdrs.X_FORWARDED_PROTO, hdrs.X_FORWARDED_HOST)
# Relaxed: each header's last hop, written by the proxy in front. One of the two per request, since
# each rebuilds the request from the one off the socket and would undo what the other applied.
_by_x_forwarded, _by_forwarded = XForwardedRelaxed(), ForwardedRelaxed()


@web.middleware
async def believe_the_proxy(request: web.Request, handler) -> web.StreamResponse:
    """Handlers get the request as the client sent it to the proxy: X-Forwarded-* where the proxy
    sent any, else RFC 7239's Forwarded."""
    noted = request[FORWARDED_REMOTE] = {}

    async def believed(forwarded: web.Request) -> web.StreamResponse:
        noted["remote"] = forwarded.remote
        return await handler(forwarded)

    tool = _by_x_forwarded if any(name in request.headers for name in X_FORWARDED) else _by_forwarded
    return await tool.middleware(request, believed)


def client_address(request: web.BaseRequest) -> str | None:
    """Who sent the request: the proxy's word for it when it is believed, else the socket's peer."""
    return request.get(FORWARDED_REMOTE, {}).get("remote") or request.remote
