"""The web app run in-process (aiohttp's test server) against a fake supervisor: the REST and auth
behaviour that needs no kernel, without starting a gateway."""

from __future__ import annotations

import secrets
import uuid
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from kernels_gateway.config import Config
from kernels_gateway.gateway.app import make_app
from kernels_gateway.errors import KernelNotFound, SupervisorUnavailable

from ..conftest import free_port
from ..helpers import FakeSupervisor, assert_error

KERNELSPECS = {"default": "python3", "kernelspecs": {}}


def not_found(args):
    raise KernelNotFound(args["kernel_id"])


def unavailable(args):
    raise SupervisorUnavailable("The kernel supervisor is stopped")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(config: Config, answers: dict):
    """The app on a free local port, its fake supervisor, and where to reach it."""
    config.runtime_dir.mkdir(parents=True)
    fake = FakeSupervisor(config.socket_path, {"ping": lambda args: {"pid": 1},
                                               "kernelspecs": lambda args: KERNELSPECS,
                                               "get": not_found, **answers})
    async with fake:
        server = TestServer(make_app(config, ["127.0.0.1"]), host="127.0.0.1")
        await server.start_server()
        try:
            yield SimpleNamespace(url=f"http://127.0.0.1:{server.port}{config.base}", fake=fake, port=server.port)
        finally:
            await server.close()


@pytest.fixture
async def secured_gateway(tmp_path):
    """What tests/conftest.py's secured_gateway is, in-process: a token, one page origin let in."""
    page_port, other_port, token = free_port(), free_port(), secrets.token_urlsafe(24)
    config = Config(runtime_dir=tmp_path / "rt", base_path="/krn", allow_origin=(f"http://127.0.0.1:{page_port}",),
                    expose_headers=("Location",), max_age=600, auth_token=token)
    async for gw in serve(config, {}):
        gw.token, gw.page_port, gw.other_port = token, page_port, other_port
        gw.page_origin = f"http://127.0.0.1:{page_port}"
        gw.auth = {"Authorization": f"token {token}"}
        yield gw


@pytest.fixture
async def gateway(tmp_path):
    async for gw in serve(Config(runtime_dir=tmp_path / "rt"), {}):
        yield gw


# -- from tests/test_auth.py: none of these needs a kernel (nor does the Host check) -------------------------------------------


async def test_the_browser_client_is_public(secured_gateway, http):
    async with http.get(f"{secured_gateway.url}/client.js") as r:
        assert r.status == 200
        assert r.content_type == "text/javascript"
        assert "export class Gateway" in await r.text()


async def test_preflights_need_no_token(secured_gateway, http):
    gw = secured_gateway
    preflight = {"Origin": gw.page_origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(f"{gw.url}/api/kernels", headers=preflight) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == gw.page_origin
        assert r.headers["Access-Control-Allow-Methods"] == "POST"
        assert set(r.headers["Access-Control-Allow-Headers"].lower().split(",")) == {"authorization", "content-type"}
        assert r.headers["Access-Control-Max-Age"] == "600"
        assert "Access-Control-Allow-Credentials" not in r.headers
    async with http.options(f"{gw.url}/api/kernels/x/restart",
                            headers={**preflight, "Origin": f"http://127.0.0.1:{gw.other_port}"}) as r:
        await assert_error(r, 403, "not allowed")
        assert "Access-Control-Allow-Origin" not in r.headers
    async with http.options(f"{gw.url}/api/kernels", headers={**preflight, "Access-Control-Request-Headers": "x-other"}) as r:
        await assert_error(r, 403, "headers are not allowed")


async def test_cors_headers_on_answers(secured_gateway, http):
    gw = secured_gateway
    async with http.get(f"{gw.url}/api/kernelspecs", headers={**gw.auth, "Origin": gw.page_origin}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == gw.page_origin
        assert r.headers["Access-Control-Expose-Headers"] == "Location"
    # A page must be able to read why it was refused.
    async with http.get(f"{gw.url}/api/kernels", headers={"Origin": gw.page_origin}) as r:
        assert r.status == 401
        assert r.headers["Access-Control-Allow-Origin"] == gw.page_origin
    async with http.get(f"{gw.url}/api/kernelspecs",
                        headers={**gw.auth, "Origin": f"http://127.0.0.1:{gw.other_port}"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_unknown_kernel_ids_still_answer_401_first(secured_gateway, http):
    """Without a token nobody learns which kernels exist."""
    async with http.get(f"{secured_gateway.url}/api/kernels/{uuid.uuid4()}") as r:
        await assert_error(r, 401)
    following_events = ("subscribe", "ping")  # the worker's own requests
    assert [op for op, _ in secured_gateway.fake.asked if op not in following_events] == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:1", "LOCALHOST", "app.localhost", "[::1]:8000",
                                  "127.1.2.3"])
async def test_local_hosts_are_allowed(gateway, http, host):
    async with http.get(f"{gateway.url}/api", headers={"Host": host}) as r:
        assert r.status == 200


# -- REST ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    (b'{"name": 3}', "name must be a string"),
    (b'{"env": "A=1"}', "env must be an object mapping names to string values"),
    (b'{"env": {"KERNEL_X": 1}}', "env must be an object mapping names to string values"),
])
async def test_a_bad_start_body_is_refused_without_asking_the_supervisor(gateway, http, body, message):
    async with http.post(f"{gateway.url}/api/kernels", data=body) as r:
        await assert_error(r, 400, message)
    assert "start" not in [op for op, _ in gateway.fake.asked]


async def test_supervisor_errors_become_their_status(gateway, http):
    missing = str(uuid.uuid4())
    async with http.get(f"{gateway.url}/api/kernels/{missing}") as r:
        await assert_error(r, 404, f"Kernel does not exist: {missing}")
    assert ("get", {"kernel_id": missing}) in gateway.fake.asked


async def test_health_follows_the_supervisor(gateway, http):
    async with http.get(f"{gateway.url}/api/health") as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    gateway.fake.answers["ping"] = unavailable
    async with http.get(f"{gateway.url}/api/health") as r:
        await assert_error(r, 503, "The kernel supervisor is stopped")
