"""README's nginx snippet, run for real in front of the shared gateway: TLS terminated by nginx, REST and
the websocket through it, and the gateway's JSON 413 for a body over its limit."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import re
import shutil
import signal
import ssl
import subprocess

import aiohttp
import pytest
from yarl import URL

from .certificates import Authority
from .conftest import HERE, eventually, free_port
from .kernel_client import KernelSocket

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")


def readme_snippet() -> str:
    return re.search(r"```nginx\n(.*?)```", (HERE.parent / "README.md").read_text(), re.DOTALL).group(1)


@contextlib.asynccontextmanager
async def nginx_in_front(gateway, tmp_path, client_address: str = "127.0.0.1"):
    """nginx on a free port with README's configuration, pointed at `gateway`; yields an HTTPS client
    session (connecting from `client_address`, a loopback address) and the proxy's URL."""
    authority = Authority(tmp_path)
    cert, key = authority.issue("server", server=True)
    port = free_port()
    snippet = readme_snippet()
    for placeholder, value in {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/gw/fullchain.pem": str(cert),
        "/etc/ssl/gw/privkey.pem": str(key),
        "http://127.0.0.1:8000": f"http://127.0.0.1:{gateway.port}",
    }.items():
        assert placeholder in snippet
        snippet = snippet.replace(placeholder, value)
    temp = " ".join(f"{kind}_temp_path {tmp_path / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    config = tmp_path / "nginx.conf"
    # Workers as the user running the tests, so they can write their temporary files in tmp_path.
    config.write_text(f"daemon off; user {getpass.getuser()}; pid {tmp_path / 'nginx.pid'}; events {{}}\n"
                      f"http {{ access_log off; {temp}\n{snippet}}}\n")
    log = tmp_path / "error.log"
    nginx = subprocess.Popen([NGINX, "-c", str(config), "-p", str(tmp_path), "-e", str(log)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(30):
            while True:
                assert nginx.poll() is None, log.read_text()
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=authority.cert_path),
                                         local_addr=(client_address, 0))
        async with aiohttp.ClientSession(connector=connector) as https:
            yield https, f"https://127.0.0.1:{port}{gateway.base}"
    finally:
        nginx.send_signal(signal.SIGQUIT)  # graceful stop
        nginx.wait(timeout=10)


@pytest.fixture
async def proxy(gateway, tmp_path):
    """README's nginx in front of the shared gateway."""
    async with nginx_in_front(gateway, tmp_path) as proxied:
        yield proxied


async def test_rest_and_websocket_through_nginx(proxy, kernel):
    https, url = proxy
    async with https.get(f"{url}/api/kernels/{kernel['id']}") as r:
        assert r.status == 200
        assert (await r.json())["id"] == kernel["id"]

    class ThroughProxy:
        ws_url = url.replace("https://", "wss://")

    sock = await KernelSocket.open(https, ThroughProxy, kernel["id"], v1=True)
    _, stdout = await sock.execute("print('through nginx')")
    assert stdout == "through nginx\n"
    await sock.close()


async def test_the_gateway_answers_a_body_over_its_limit_through_nginx(proxy):
    https, url = proxy
    async with https.post(f"{url}/api/kernels", data=io.BytesIO(b"x" * ((1 << 20) + 1)),
                          headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413
        assert set(await r.json()) == {"message", "reason"}  # the gateway's JSON, not nginx's page


@pytest.mark.parametrize("trusted", [False, True])
async def test_behind_nginx_the_gateway_believes_the_proxy_only_when_told(start_gateway, tmp_path, trusted):
    """README's configuration, README's command: with --trust-xheaders the access log names the client
    (here 127.0.0.3, while nginx connects from 127.0.0.1), and a page of the proxy's own origin (a port
    of its own, so Host alone, without it, does not match) may open a websocket. Without the option the
    same headers change nothing."""
    gw = await start_gateway("--base-path", "/krn", "--initial-kernels", "0",
                             *(["--trust-xheaders"] if trusted else []))
    async with nginx_in_front(gw, tmp_path, client_address="127.0.0.3") as (https, url):
        async with https.post(f"{url}/api/kernels", json={}) as r:
            assert r.status == 201
            kernel = await r.json()
            assert r.headers["Location"] == f"/krn/api/kernels/{kernel['id']}"
            assert str(r.url.join(URL(r.headers["Location"]))).startswith(url), "resolved: the public URL"
        (line,) = await access_log(gw, '"POST /krn/api/kernels ')
        assert line.startswith("127.0.0.3 " if trusted else "127.0.0.1 ")

        class ThroughProxy:
            ws_url = url.replace("https://", "wss://")

        own_origin = {"Origin": url.removesuffix("/krn")}  # https://127.0.0.1:PORT
        if trusted:
            sock = await KernelSocket.open(https, ThroughProxy, kernel["id"], headers=own_origin)
            _, stdout = await sock.execute("print('own origin')")
            assert stdout == "own origin\n"
            await sock.close()
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await KernelSocket.open(https, ThroughProxy, kernel["id"], headers=own_origin)
            assert refused.value.status == 403


@pytest.mark.parametrize("trusted", [False, True])
async def test_forwarded_headers_are_believed_only_when_told(start_gateway, http, trusted):
    """RFC 7239's Forwarded, and X-Forwarded-* (which win where both are sent), straight to the gateway;
    malformed ones are a JSON 400 when believed, ignored when not."""
    gw = await start_gateway("--initial-kernels", "0", *(["--trust-xheaders"] if trusted else []))
    forwarded = {"Forwarded": 'for=198.51.100.7;proto=https;host="public.example:8443"'}
    async with http.get(f"{gw.url}/api/kernels", headers=forwarded) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/api/kernelspecs", headers={**forwarded, "X-Forwarded-For": "203.0.113.9"}) as r:
        assert r.status == 200
    (listed,) = await access_log(gw, '"GET /api/kernels ')
    (specs,) = await access_log(gw, '"GET /api/kernelspecs ')
    assert listed.startswith("198.51.100.7 " if trusted else "127.0.0.1 ")
    assert specs.startswith("203.0.113.9 " if trusted else "127.0.0.1 ")

    async with http.post(f"{gw.url}/api/kernels", json={}) as r:
        kernel = await r.json()
    url = f"{gw.ws_url}/api/kernels/{kernel['id']}/channels"
    public_page = {**forwarded, "Origin": "https://public.example:8443"}
    if trusted:  # the page's origin is the public one the proxy named
        async with http.ws_connect(url, headers=public_page) as ws:
            assert not ws.closed
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers=public_page)
        assert refused.value.status == 403
    async with http.get(f"{gw.url}/api/kernels", headers={"X-Forwarded-For": "not an address"}) as r:
        assert r.status == (400 if trusted else 200)
        if trusted:
            assert set(await r.json()) == {"message", "reason"}


async def access_log(gw, request_line: str) -> list[str]:
    """The access log's lines for this request line, once written (after the answer is sent)."""
    async def written():
        return [line.split("aiohttp.access] ")[1] for line in gw.log().splitlines()
                if "aiohttp.access] " in line and request_line in line]
    return await eventually(written, timeout=10)
