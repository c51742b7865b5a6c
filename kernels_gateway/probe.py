"""`kernels-gateway probe`: exit 0 when the gateway that this configuration describes answers, 1 when not.

For health checks that have no HTTP client at hand, such as the Docker image's HEALTHCHECK. It reads the
same flags and variables as the gateway, so it finds the port and base path the gateway was given
through the environment.
"""

from __future__ import annotations

import logging

import aiohttp

from .config import Config
from .tls import probe_context

log = logging.getLogger("kernels_gateway")

PATH = "/api/health"  # 200 only while the supervisor answers; needs no token
TIMEOUT = 5.0
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def probe_url(config: Config) -> str:
    return config.url(WILDCARDS.get(config.ip, config.ip), path=PATH)


async def probe(config: Config) -> int:
    url = probe_url(config)
    try:
        connector = aiohttp.TCPConnector(ssl=probe_context(config) or True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(url) as response:
                if response.status == 200:
                    return 0
                problem = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as e:  # OSError: ssl.SSLError, an unreadable certfile
        problem = str(e) or type(e).__name__
    log.error("%s: %s", url, problem)
    return 1
