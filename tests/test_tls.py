"""HTTPS and WSS served directly, client certificates, and certificates that cannot be loaded."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import aiohttp
import pytest

from .certificates import Authority
from .conftest import kernel_pids
from .kernel_client import KernelSocket


@pytest.fixture
def authority(tmp_path) -> Authority:
    return Authority(tmp_path)


def client_context(authority: Authority, cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=authority.cert_path)
    if cert:
        context.load_cert_chain(*cert)
    return context


async def test_https_and_wss(start_gateway, authority):
    cert, key = authority.issue("server", server=True)
    gw = await start_gateway("--certfile", str(cert), "--keyfile", str(key))
    assert f"Serving at https://127.0.0.1:{gw.port}/api/kernels" in gw.log()
    connector = aiohttp.TCPConnector(ssl=client_context(authority))
    async with aiohttp.ClientSession(connector=connector) as https:
        async with https.get(f"{gw.url}/api/kernels") as r:
            assert r.status == 200
            [kernel] = await r.json()
        sock = await KernelSocket.open(https, gw, kernel["id"])
        _, stdout = await sock.execute("print(6 * 7)")
        assert stdout == "42\n"
        await sock.close()
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port gets no answer
            async with plain.get(f"http://127.0.0.1:{gw.port}/api/kernels") as r:
                await r.read()
    assert gw.process.poll() is None


async def test_a_client_ca_requires_client_certificates(start_gateway, authority, tmp_path):
    cert, key = authority.issue("server", server=True)
    bundle = tmp_path / "server-bundle.pem"  # certificate and key in one file: --keyfile is optional
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    gw = await start_gateway("--certfile", str(bundle), "--client-ca", str(authority.cert_path),
                             "--initial-kernels", "0")
    client = authority.issue("client", server=False)
    connector = aiohttp.TCPConnector(ssl=client_context(authority, client))
    async with aiohttp.ClientSession(connector=connector) as https:
        async with https.get(f"{gw.url}/api/kernels") as r:
            assert r.status == 200
    connector = aiohttp.TCPConnector(ssl=client_context(authority))
    async with aiohttp.ClientSession(connector=connector) as anonymous:
        with pytest.raises(aiohttp.ClientError):
            async with anonymous.get(f"{gw.url}/api/kernels") as r:
                await r.read()


@pytest.mark.parametrize("args, message", [
    (["--certfile", "/nonexistent/cert.pem"], "Cannot load TLS certificate /nonexistent/cert.pem"),
    (["--certfile", "{ca}", "--keyfile", "{ca}"], "Cannot load TLS certificate"),
    (["--keyfile", "{ca}"], "--keyfile and --client-ca need --certfile"),
])
async def test_a_certificate_that_cannot_be_loaded_stops_the_start(start_gateway, authority, args, message):
    args = [arg.format(ca=authority.cert_path) for arg in args]
    gw = await start_gateway(*args, wait_for=message)
    assert gw.process.wait(timeout=30) == 1
    assert "Kernel started" not in gw.log()  # refused before any kernel was started
    assert kernel_pids(gw.runtime_dir) == []


async def test_probe_speaks_tls_and_trusts_only_the_gateways_certificate(start_gateway, authority, tmp_path):
    """The image's HEALTHCHECK: `kernels-gateway probe` with the same variables as the gateway."""
    cert, key = authority.issue("server", server=True)
    gw = await start_gateway("--certfile", str(cert), "--keyfile", str(key), "--initial-kernels", "0")
    env = {**os.environ, "KERNELS_GATEWAY_PORT": str(gw.port), "KERNELS_GATEWAY_CERTFILE": str(cert),
           "KERNELS_GATEWAY_KEYFILE": str(key)}
    assert await probe(env) == 0
    # Another certificate for the same name is not the gateway's.
    (tmp_path / "other").mkdir()
    impostor, _ = Authority(tmp_path / "other").issue("server", server=True)
    assert await probe({**env, "KERNELS_GATEWAY_CERTFILE": str(impostor)}) == 1


async def probe(env: dict[str, str]) -> int:
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "kernels_gateway", "probe", env=env,
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(process.wait(), 30)
