"""`kernels-gateway probe`: exit 0 when the gateway that this configuration describes answers, 1 when not.

For health checks that have no HTTP client at hand, such as the Docker image's HEALTHCHECK. It reads the
same flags and variables as the gateway, so it finds the port and base path the gateway was given
through the environment.
"""

from __future__ import annotations

import logging
import ssl

import aiohttp

from .config import Config
from .gateway.server import serving_url

log = logging.getLogger("kernels_gateway")

PATH = "/api/health"  # 200 only while the supervisor answers; needs no token
TIMEOUT = 5.0
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def probe_url(config: Config) -> str:
    return serving_url(config, WILDCARDS.get(config.ip, config.ip), path=PATH)


def tls_context(config: Config) -> ssl.SSLContext | None:
    """Trust exactly the gateway's own certificate (the first of --certfile), whoever issued it, so a
    self-signed one passes and no other does; its name is not checked, since the probe asks the local
    address rather than the name the certificate was issued for. With --client-ca, the probe presents
    the gateway's certificate as its own, which passes if that CA issued it for client use too."""
    if not config.certfile:
        return None
    with open(config.certfile) as f:
        pem = f.read()
    end = "-----END CERTIFICATE-----"
    if end not in pem:
        raise ssl.SSLError(f"no certificate in {config.certfile}")
    leaf = pem[pem.index("-----BEGIN CERTIFICATE-----"):pem.index(end) + len(end)]
    context = ssl.create_default_context(cadata=leaf)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the trust anchor
    if config.client_ca:
        context.load_cert_chain(config.certfile, config.keyfile or None)
    return context


async def probe(config: Config) -> int:
    url = probe_url(config)
    try:
        connector = aiohttp.TCPConnector(ssl=tls_context(config) or True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get(url) as response:
                if response.status == 200:
                    return 0
                problem = f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as e:  # OSError: ssl.SSLError, an unreadable certfile
        problem = str(e) or type(e).__name__
    log.error("%s: %s", url, problem)
    return 1
