"""`kernels-gateway probe`: exit 0 when the gateway that this configuration describes answers, 1 when not.

For health checks that have no HTTP client at hand, such as the Docker image's HEALTHCHECK. It reads the
same flags and variables as the gateway, so it finds the port and base path the gateway was given
through the environment.
"""

from __future__ import annotations

import logging

import aiohttp

from .config import Config

log = logging.getLogger("kernels_gateway")

PATH = "/api/health"  # 200 only while the supervisor answers; needs no token
TIMEOUT = 5.0
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def probe_url(config: Config) -> str:
    host = WILDCARDS.get(config.ip, config.ip)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}{config.base}{PATH}"


async def probe(config: Config) -> int:
    url = probe_url(config)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(url) as response:
                if response.status == 200:
                    return 0
                problem = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        problem = str(e) or type(e).__name__
    log.error("%s: %s", url, problem)
    return 1
