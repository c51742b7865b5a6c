"""README's nginx snippet, run for real in front of the shared gateway: TLS terminated by nginx, REST and
the websocket through it, and the gateway's JSON 413 for a body over its limit."""

from __future__ import annotations

import asyncio
import getpass
import io
import re
import shutil
import signal
import ssl
import subprocess

import aiohttp
import pytest

from .certificates import Authority
from .conftest import HERE, free_port
from .kernel_client import KernelSocket

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs it)")


def readme_snippet() -> str:
    return re.search(r"```nginx\n(.*?)```", (HERE.parent / "README.md").read_text(), re.DOTALL).group(1)


@pytest.fixture
async def proxy(gateway, tmp_path):
    """nginx on a free port with README's configuration, pointed at the shared gateway."""
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
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=authority.cert_path))
        async with aiohttp.ClientSession(connector=connector) as https:
            yield https, f"https://127.0.0.1:{port}{gateway.base}"
    finally:
        nginx.send_signal(signal.SIGQUIT)  # graceful stop
        nginx.wait(timeout=10)


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
