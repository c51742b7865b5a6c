"""Request size limits that hold before a body is read.

aiohttp's `client_max_size` refuses a body only once it has buffered that much of it; a declared
Content-Length above the limit is refused here at once, before a single body byte is read. Bodies
without a length (chunked) are still bounded by `client_max_size`, which stops reading at the limit.
"""

from __future__ import annotations

from aiohttp import web

from .keys import CONFIG


@web.middleware
async def body_limit(request: web.Request, handler) -> web.StreamResponse:
    limit = request.app[CONFIG].max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    return await handler(request)
