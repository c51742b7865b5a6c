"""A Kernel Gateway deployment moves over by changing only its command: its KG_* variables keep their meaning."""

from __future__ import annotations

import asyncio
import json
import sys

from .conftest import write_kernelspec
from .kernel_client import KernelSocket
from .helpers import assert_error

PAGE = "http://dashboards.example:3000"


async def test_a_kernel_gateway_deployment_moves_over(start_gateway, http, tmp_path):
    write_kernelspec(tmp_path, "forced-python")
    token = "kg-token"
    gw = await start_gateway(env={
        "JUPYTER_PATH": str(tmp_path),
        "KG_BASE_URL": "/kg",
        "KG_AUTH_TOKEN": token,
        "KG_ALLOW_ORIGIN": PAGE,
        "KG_ALLOW_CREDENTIALS": "true",
        "KG_ALLOW_HEADERS": "Content-Type,Authorization,X-Dashboard",
        "KG_ALLOW_METHODS": "GET,POST",
        "KG_EXPOSE_HEADERS": "Location",
        "KG_MAX_AGE": "77",
        "KG_MAX_KERNELS": "2",
        "KG_PRESPAWN_COUNT": "1",
        "KG_FORCE_KERNEL_NAME": "forced-python",
        "KG_LIST_KERNELS": "False",
        "KG_ENV_WHITELIST": "ALLOWED_NAME",
        "KG_ENV_PROCESS_WHITELIST": "KEEP_ME",
        "KEEP_ME": "inherited",
        "NOT_KEPT": "left behind",
    })
    url, auth = f"{gw.url}/kg", {"Authorization": f"token {token}"}
    assert gw.log().count("Kernel started: ") == 1  # the prespawned one (warm spares are not started kernels)

    async with http.get(f"{url}/api/kernels") as r:
        await assert_error(r, 401)
    async with http.get(f"{url}/api/kernels", headers=auth) as r:
        await assert_error(r, 403, "Listing kernels is disabled")

    env = {"KERNEL_LANG": "fr", "ALLOWED_NAME": "yes", "DROPPED_NAME": "no"}
    async with http.post(f"{url}/api/kernels", json={"name": "python3", "env": env}, headers=auth) as r:
        assert r.status == 201, await r.text()
        model = await r.json()
        assert r.headers["Location"] == f"/kg/api/kernels/{model['id']}"
    assert model["name"] == "forced-python"
    async with http.post(f"{url}/api/kernels", json={}, headers=auth) as r:
        await assert_error(r, 403, "max kernels")

    ws = await http.ws_connect(f"{gw.ws_url}/kg/api/kernels/{model['id']}/channels", params={"token": token})
    sock = KernelSocket(ws, False, "s")
    _, stdout = await sock.execute("import os, json; print(json.dumps(dict(os.environ)))")
    await sock.close()
    seen = json.loads(stdout)
    assert seen["KERNEL_LANG"] == "fr" and seen["ALLOWED_NAME"] == "yes" and seen["KEEP_ME"] == "inherited"
    assert "PATH" in seen
    for name in ("DROPPED_NAME", "NOT_KEPT", "KG_AUTH_TOKEN", "JUPYTER_PATH", "KG_ALLOW_ORIGIN"):
        assert name not in seen, name

    preflight = {"Origin": PAGE, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-dashboard"}
    async with http.options(f"{url}/api/kernels", headers=preflight) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Max-Age"] == "77"
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
    async with http.options(f"{url}/api/kernels/{model['id']}", headers={**preflight, "Access-Control-Request-Method": "DELETE"}) as r:
        await assert_error(r, 403, "DELETE")
    async with http.get(f"{url}/api/kernels/{model['id']}", headers={**auth, "Origin": PAGE}) as r:
        assert r.headers["Access-Control-Allow-Origin"] == PAGE
        assert r.headers["Access-Control-Expose-Headers"] == "Location"

    # The health probe reads the same variables, and finds the gateway under KG_BASE_URL.
    for base, code in (("/kg", 0), ("/elsewhere", 1)):
        probe = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kernels_gateway", "probe", "--port", str(gw.port),
            env={**gw.env, "KG_BASE_URL": base}, stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(probe.wait(), 30) == code
