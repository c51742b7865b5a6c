"""TLS, both ways: the gateway's own context (--certfile, --keyfile, --client-ca), and the probe's, which
trusts exactly that certificate."""

from __future__ import annotations

import ssl

from .config import Config
from .errors import CannotStart


def server_context(config: Config) -> ssl.SSLContext | None:
    """The TLS settings of --certfile, --keyfile and --client-ca; None to serve plain HTTP."""
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # TLS 1.2 or later
    try:
        context.load_cert_chain(config.certfile, config.keyfile or None)
    except OSError as e:  # ssl's own errors do not name the file
        key = config.keyfile or "in it"
        raise CannotStart(f"Cannot load TLS certificate {config.certfile} (key {key}): {e}") from None
    if config.client_ca:
        try:
            context.load_verify_locations(config.client_ca)
        except OSError as e:
            raise CannotStart(f"Cannot load client CA certificates {config.client_ca}: {e}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def probe_context(config: Config) -> ssl.SSLContext | None:
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
