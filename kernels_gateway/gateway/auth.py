"""Who may call the gateway: the token every request carries, and the origins whose pages may call it.

Kernel Gateway answers 401 to a missing and to a wrong token alike, Jupyter Server 403 to both. Here a
missing token is 401 (with WWW-Authenticate, as RFC 9110 wants) and a wrong one 403, so a client can tell
"say who you are" from "you are refused". CORS preflights carry no credentials by design, so they are
never asked for the token (Kernel Gateway 3 refuses them once a token is set, which locks pages out).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp_cors
from aiohttp import hdrs, web, web_log

from ..config import Config
from .forwarded import client_address

SCHEME = "token"
# Jupyter Server accepts both (case-insensitive); Datalayer's jupyter-kernel-client sends Bearer.
SCHEMES = frozenset({"token", "bearer"})


def public(handler):
    """Mark a handler that needs no token: only what anyone may fetch, never a kernel."""
    handler.public = True
    return handler


def _digest(token: str) -> bytes:
    # Comparing digests keeps the comparison's time independent of the token's length too.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def offered_token(request: web.Request) -> str | None:
    """The token in `?token=` (all a browser's websocket can send) or in `Authorization: token T`
    (or `Bearer T`)."""
    if "token" in request.query:
        return request.query["token"]
    scheme, _, value = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() in SCHEMES and value.strip():
        return value.strip()
    return None


def token_required(token: str):
    expected = _digest(token)

    @web.middleware
    async def require_token(request: web.Request, handler) -> web.StreamResponse:
        if request.method == hdrs.METH_OPTIONS or getattr(request.match_info.handler, "public", False):
            return await handler(request)
        offered = offered_token(request)
        if offered is None:
            raise web.HTTPUnauthorized(
                text="Authentication required: send `Authorization: token T` or ?token=T",
                headers={hdrs.WWW_AUTHENTICATE: SCHEME},
            )
        if not hmac.compare_digest(_digest(offered), expected):
            raise web.HTTPForbidden(text="Invalid token")
        return await handler(request)

    return require_token


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Whether a websocket may open: browsers apply no CORS to websockets, so the route checks itself.

    No Origin header means no browser (scripts, Jupyter Server, Node); the same origin as the gateway's
    own is always fine; any other page must be on the allow-list.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None or "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def local_only(listening: list[str]) -> bool:
    """Whether every address the gateway listens on is a loopback one (or a Unix socket, reached only
    through a local proxy): only then can a Host header tell a page of this machine from a rebound one,
    as Jupyter Server decides for its `allow_remote_access`."""
    def loopback(address: str) -> bool:
        try:
            return ipaddress.ip_address(address.split("%")[0]).is_loopback
        except ValueError:
            return address.startswith("/") or address == "localhost"  # a Unix socket path
    return bool(listening) and all(loopback(address) for address in listening)


def _local_host(host: str) -> bool:
    """localhost and its subdomains (RFC 6761: never sent to DNS) and loopback addresses."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_checked(allowed: tuple[str, ...]):
    """Refuse requests addressed to a name that is not this machine's (DNS rebinding: a page whose name
    now resolves to 127.0.0.1 would otherwise reach the kernels). `request.host` is the host the request
    was made to, as the forwarded-header handling (if any) leaves it."""
    names = {name.lower().rstrip(".") for name in allowed}

    @web.middleware
    async def check_host(request: web.Request, handler) -> web.StreamResponse:
        # A request without a Host header comes from no browser, which always sends one.
        if hdrs.HOST in request.headers:
            host = (urlsplit(f"//{request.host}").hostname or "").rstrip(".")
            if not (_local_host(host) or host in names):
                raise web.HTTPForbidden(text=f"Host {request.host[:200]} is not allowed (--allow-host)")
        return await handler(request)

    return check_host


def setup_cors(app: web.Application, config: Config) -> None:
    """CORS for every route, for the --allow-origin pages; without origins, no CORS at all."""
    if not config.allow_origin:
        return

    def star_or(values: tuple[str, ...]):
        return "*" if "*" in values else values

    options = aiohttp_cors.ResourceOptions(
        allow_credentials=config.allow_credentials,
        allow_headers=star_or(config.allow_headers),
        allow_methods=star_or(config.allow_methods),
        expose_headers=star_or(config.expose_headers),
        max_age=config.max_age or None,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in config.allow_origin})
    for resource in list(app.router.resources()):
        cors.add(resource)


REDACTED = "redacted"


def redact_url(url: str) -> str:
    """A URL with the value of its `token` query parameters replaced, for logs."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name == "token" for name, _ in query):
        return url
    masked = urlencode([(name, REDACTED if name == "token" else value) for name, value in query], safe="/:")
    return parts._replace(query=masked).geturl()


class AccessLogger(web_log.AccessLogger):
    """aiohttp's access log, with the value of a `?token=` query masked, in the request's URL and in the
    page's (Referer), where a browser puts the URL of a page opened with `?token=`; and the client's
    address as a trusted proxy forwarded it (--trust-xheaders)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        super().log(_AsLogged(request), response, time)


class _AsLogged:
    """A finished request as the access log reads it: `token=redacted` in its query and Referer, and the
    client's address."""

    def __init__(self, request: web.BaseRequest):
        self._request = request
        self.path_qs = str(request.rel_url.update_query(token=REDACTED)) if "token" in request.query \
            else request.path_qs
        self.remote = client_address(request)
        self.headers = request.headers
        referer = request.headers.get(hdrs.REFERER)
        if referer and redact_url(referer) != referer:
            self.headers = request.headers.copy()
            self.headers[hdrs.REFERER] = redact_url(referer)

    def __getattr__(self, name: str):
        return getattr(self._request, name)
