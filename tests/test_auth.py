"""The token, CORS and the websocket's Origin check, against the shared secured gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from .conftest import kernel_pids
from .kernel_client import KernelSocket
from .helpers import assert_error

WS_UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture(scope="module")
async def secured_kernel(secured_gateway, http):
    async with http.post(f"{secured_gateway.url}/api/kernels", json={}, headers=secured_gateway.auth) as r:
        assert r.status == 201, await r.text()
        model = await r.json()
    yield model
    async with http.delete(f"{secured_gateway.url}/api/kernels/{model['id']}", headers=secured_gateway.auth) as r:
        assert r.status in (204, 404)


def every_route(kernel_id: str) -> list[tuple[str, str, dict]]:
    return [
        ("GET", "/api", {}),
        ("GET", "/api/kernelspecs", {}),
        ("GET", "/api/kernelspecs/python3", {}),
        ("GET", "/kernelspecs/python3/logo-64x64.png", {}),
        ("HEAD", "/kernelspecs/python3/logo-64x64.png", {}),
        ("GET", "/api/kernels", {}),
        ("POST", "/api/kernels", {}),
        ("GET", f"/api/kernels/{kernel_id}", {}),
        ("DELETE", f"/api/kernels/{kernel_id}", {}),
        ("POST", f"/api/kernels/{kernel_id}/interrupt", {}),
        ("POST", f"/api/kernels/{kernel_id}/restart", {}),
        ("GET", f"/api/kernels/{kernel_id}/channels", WS_UPGRADE),
        ("GET", "/metrics", {}),
        ("GET", "/api/no-such-route", {}),
    ]


@pytest.mark.parametrize("offered", ["none", "wrong header", "wrong query", "wrong scheme", "right token, longer"])
async def test_every_route_wants_the_token(secured_gateway, secured_kernel, http, offered):
    gw = secured_gateway
    for method, path, headers in every_route(secured_kernel["id"]):
        params, headers = {}, dict(headers)
        if offered == "wrong header":
            headers["Authorization"] = "token not-the-token"
        elif offered == "wrong query":
            params["token"] = "not-the-token"
        elif offered == "wrong scheme":
            headers["Authorization"] = f"Basic {gw.token}"  # not a scheme this gateway speaks: no token
        elif offered == "right token, longer":
            params["token"] = gw.token + "x"
        async with http.request(method, f"{gw.url}{path}", params=params, headers=headers) as r:
            if offered in ("none", "wrong scheme"):
                assert r.status == 401, (method, path)
                assert r.headers["WWW-Authenticate"] == "token"
            else:
                assert r.status == 403, (method, path)
            if method != "HEAD":
                body = await r.json()
                assert set(body) == {"message", "reason"}
    async with http.get(f"{gw.url}/api/kernels/{secured_kernel['id']}", headers=gw.auth) as r:
        assert r.status == 200, "a refused DELETE must not have touched the kernel"


async def test_the_token_opens_every_route(secured_gateway, secured_kernel, http):
    gw = secured_gateway
    kernel_id = secured_kernel["id"]
    async with http.get(f"{gw.url}/api", headers=gw.auth) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/api/kernelspecs", params={"token": gw.token}) as r:
        assert "python3" in (await r.json())["kernelspecs"]
    async with http.get(f"{gw.url}/kernelspecs/python3/logo-64x64.png", params={"token": gw.token}) as r:
        assert (await r.read()).startswith(b"\x89PNG")
    async with http.get(f"{gw.url}/api/kernels", headers={"Authorization": f"TOKEN  {gw.token}"}) as r:
        assert kernel_id in [k["id"] for k in await r.json()]
    async with http.get(f"{gw.url}/api/kernels", headers={"Authorization": f"bearer {gw.token}"}) as r:
        assert r.status == 200  # Jupyter Server's other scheme, which some clients send
    async with http.get(f"{gw.url}/api/kernels", headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 403
    async with http.post(f"{gw.url}/api/kernels/{kernel_id}/interrupt", headers=gw.auth) as r:
        assert r.status == 204
    sock = await KernelSocket.open(http, gw, kernel_id, params={"token": gw.token})
    _, stdout = await sock.execute("print('through the token')")
    assert stdout == "through the token\n"
    await sock.close()
    sock = await KernelSocket.open(http, gw, kernel_id, headers=gw.auth)
    _, stdout = await sock.execute("print('and through the header')")
    assert stdout == "and through the header\n"
    await sock.close()


async def test_websocket_origin_check(secured_gateway, secured_kernel, http):
    gw = secured_gateway
    params = {"token": gw.token}
    for origin in (gw.page_origin, f"http://127.0.0.1:{gw.port}", None):
        headers = {"Origin": origin} if origin else {}
        sock = await KernelSocket.open(http, gw, secured_kernel["id"], params=params, headers=headers)
        reply, _ = await sock.execute("1")
        assert reply["content"]["status"] == "ok", origin
        await sock.close()
    for origin in (f"http://127.0.0.1:{gw.other_port}", "null", "http://127.0.0.1"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await KernelSocket.open(http, gw, secured_kernel["id"], params=params, headers={"Origin": origin})
        assert refused.value.status == 403, origin


async def test_an_open_gateway_refuses_foreign_pages_websockets(gateway, kernel, http):
    """Without --allow-origin, only non-browser clients and the gateway's own origin open websockets."""
    url = f"{gateway.url}/api/kernels/{kernel['id']}/channels"
    async with http.get(url, headers={**WS_UPGRADE, "Origin": "http://elsewhere.example"}) as r:
        await assert_error(r, 403, "Origin http://elsewhere.example is not allowed")
    async with http.options(f"{gateway.url}/api/kernels", headers={
            "Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}) as r:
        await assert_error(r, 405)


async def test_the_token_stays_secret(secured_gateway, secured_kernel, http):
    """Not in a kernel's environment, not in the supervisor's (the kernels' parent), not on any command
    line, not in the logs, even when sent as ?token=."""
    gw = secured_gateway
    sock = await KernelSocket.open(http, gw, secured_kernel["id"], params={"token": gw.token})
    _, stdout = await sock.execute(
        "import os, json\n"
        "parent = open(f'/proc/{os.getppid()}/environ', 'rb').read().decode(errors='replace')\n"
        "print(json.dumps({'own': dict(os.environ), 'parent': parent}))"
    )
    await sock.close()
    seen = json.loads(stdout)
    assert seen["own"], "the kernel printed no environment"
    assert "PATH=" in seen["parent"]
    assert gw.token not in json.dumps(seen)
    tree = [gw.process.pid] + [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                                and _is_descendant(int(p.name), gw.process.pid)]
    assert len(tree) >= 4  # arbiter, supervisor, worker, kernel
    assert set(kernel_pids(gw.runtime_dir)) <= set(tree)
    for pid in tree:
        assert gw.token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), pid
    async with http.get(f"{gw.url}/api", params={"token": gw.token, "other": "kept"}) as r:
        assert r.status == 200
    for _ in range(100):  # the access line is written just after the answer
        if "/api?token=redacted&other=kept" in gw.log():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"no access line for GET /api:\n{gw.log()[-2000:]}")
    assert gw.token not in gw.log()


def _is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == ancestor:
            return True
    return False


async def test_env_values_are_bounded(gateway, http):
    async with http.post(f"{gateway.url}/api/kernels", json={"env": {"KERNEL_BIG": "x" * (64 * 1024)}}) as r:
        await assert_error(r, 400, "KERNEL_BIG")
    async with http.post(f"{gateway.url}/api/kernels", json={"env": {"KERNEL_LIST": ["a"]}}) as r:
        await assert_error(r, 400)
    async with http.get(f"{gateway.url}/api/kernels") as r:
        assert r.status == 200


async def test_a_token_in_the_referer_is_redacted_in_the_log(secured_gateway, http):
    """A page opened as `page?token=T` sends that URL as the Referer of every request it makes."""
    gw = secured_gateway
    referer = f"http://127.0.0.1:{gw.page_port}/index.html?gateway=x&token={gw.token}"
    async with http.get(f"{gw.url}/api/kernelspecs", headers={**gw.auth, "Referer": referer}) as r:
        assert r.status == 200
    expected = f"http://127.0.0.1:{gw.page_port}/index.html?gateway=x&token=redacted"
    for _ in range(100):  # the access line is written just after the answer
        if expected in gw.log():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"no redacted Referer in the log:\n{gw.log()[-2000:]}")
    assert gw.token not in gw.log()


REBOUND = "rebound.example"


@pytest.mark.parametrize("host", [REBOUND, f"{REBOUND}:8000", "127.0.0.1.nip.io", "[::2]:80"])
async def test_a_rebound_host_is_refused_on_every_route(gateway, kernel, http, host):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 reaches the port, but with its own
    name in the Host header."""
    for method, path, headers in every_route(kernel["id"]):
        if method == "DELETE":
            continue  # it would succeed below, for the kernel of the other checks
        async with http.request(method, f"{gateway.url}{path}", headers={**headers, "Host": host}) as r:
            assert r.status == 403, (method, path)
            if method != "HEAD":
                body = await r.json()
                assert set(body) == {"message", "reason"} and "--allow-host" in body["message"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await KernelSocket.open(http, gateway, kernel["id"], headers={"Host": host})
    assert refused.value.status == 403
    async with http.get(f"{gateway.url}/api/kernels/{kernel['id']}") as r:
        assert r.status == 200


async def test_allow_host_and_remote_listening(start_gateway, http):
    named = await start_gateway("--initial-kernels", "0", "--allow-host", "gw.example.org,Other.Example")
    for host, status in (("gw.example.org", 200), ("other.example:443", 200), ("gw.example.org.", 200),
                         ("localhost", 200), (REBOUND, 403)):
        async with http.get(f"{named.url}/api", headers={"Host": host}) as r:
            assert r.status == status, host
    anything = await start_gateway("--initial-kernels", "0", env={"KERNELS_GATEWAY_ALLOW_HOST": "*"})
    # Listening beyond loopback, as Jupyter Server decides: remote clients use names of their own.
    remote = await start_gateway("--initial-kernels", "0", "--ip", "0.0.0.0")
    for gw in (anything, remote):
        async with http.get(f"{gw.url}/api", headers={"Host": REBOUND}) as r:
            assert r.status == 200
