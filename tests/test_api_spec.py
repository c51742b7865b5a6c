"""The served API description, the health route, and schemathesis fuzzing the REST API with our own
description and with Jupyter Server's."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from importlib import resources

import pytest
import yaml

from kernels_gateway.config import Config
from kernels_gateway.gateway.app import make_app
from kernels_gateway.gateway.handlers import api_description, unknown_route

from .conftest import Gateway

OPERATION_KEYS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def described(base: str, sessions: bool = False) -> set[tuple[str, str]]:
    spec = yaml.safe_load(api_description(base, sessions))
    server = spec["servers"][0]["url"].rstrip("/")
    return {(method.upper(), server + path) for path, item in spec["paths"].items()
            for method in item if method in OPERATION_KEYS}


def served(base: str, sessions: bool = False) -> set[tuple[str, str]]:
    app = make_app(Config(base_path=base, sessions=sessions))
    # The last route answers 404 or 405 for every path the others do not serve: not an operation.
    routes = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.handler is not unknown_route}
    # aiohttp answers HEAD wherever it answers GET, as HTTP asks; the description names HEAD only
    # where the contract promises it (kernelspec files).
    return {(method, path) for method, path in routes
            if method != "HEAD" or (path.endswith("{path}") and ("GET", path) in routes)}


@pytest.mark.parametrize("sessions", [False, True])
@pytest.mark.parametrize("base", ["", "/krn", "/a/b"])
async def test_the_description_names_exactly_the_served_routes(base, sessions):
    assert described(base, sessions) == served(base, sessions)


async def test_the_description_is_served_with_the_base_path(gateway, http):
    async with http.get(f"{gateway.url}/api/spec.yaml") as r:
        assert r.status == 200
        assert r.content_type == "application/yaml"
        spec = yaml.safe_load(await r.text())
    assert spec["openapi"].startswith("3.1")
    assert spec["servers"] == [{"url": "/krn"}]
    assert yaml.safe_load(api_description(""))["servers"] == [{"url": "/"}]


async def test_health_answers_while_the_supervisor_does(gateway, http):
    async with http.get(f"{gateway.url}/api/health") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


async def test_health_is_503_without_a_supervisor_and_with_a_silent_one(start_gateway, http):
    web = await start_gateway(command=("web",))
    async with http.get(f"{web.url}/api/health") as r:
        assert r.status == 503
        body = await r.json()
    assert set(body) == {"message", "reason"} and "not reachable" in body["message"]

    # A supervisor that accepts the connection but never answers: health must not hang with it.
    silent = socket.socket(socket.AF_UNIX)
    web.runtime_dir.mkdir(mode=0o700)
    silent.bind(str(web.runtime_dir / "supervisor.sock"))
    silent.listen()
    try:
        async with http.get(f"{web.url}/api/health") as r:
            assert r.status == 503
            assert "did not answer" in (await r.json())["message"]
    finally:
        silent.close()


# -- schemathesis --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fuzzed():
    """A gateway of its own: the fuzzers start, restart and shut down kernels, a few at most."""
    gw = Gateway("--base-path", "/krn", "--max-kernels", "2")
    await gw.start()
    yield gw
    assert await gw.stop() == 0
    # Nothing of ours failed (aiohttp itself logs the malformed requests it refuses with a 400).
    assert not re.search(r"^\[E [^]]* kernels_gateway", gw.log(), re.MULTILINE), gw.log()
    gw.cleanup()


async def schemathesis(tmp_path, *args: str) -> None:
    # One worker: hypothesis in threads trips a CPython 3.11 bug in ast (recursion depth mismatch).
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", "--workers", "1", "--request-timeout", "60", *args,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


@pytest.mark.timeout(300)
async def test_schemathesis_finds_nothing_with_our_description(fuzzed, tmp_path):
    # The websocket upgrade is left out: schemathesis speaks HTTP only, takes the 101 for a rejection
    # of valid data, and sends its next request down the upgraded connection. The websocket has its own
    # fuzzer (test_fuzz_channels.py), and its refusals their own tests.
    await schemathesis(tmp_path, f"{fuzzed.url}/api/spec.yaml", "--checks", "all",
                       "--phases", "examples,coverage,fuzzing", "--max-examples", "10",
                       "--exclude-operation-id", "kernelChannels")


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_error_with_jupyter_servers_description(fuzzed, tmp_path):
    api = resources.files("jupyter_server") / "services" / "api" / "api.yaml"
    await schemathesis(tmp_path, str(api), "--url", fuzzed.url, "--include-path-regex", "^/api/kernel",
                       "--checks", "not_a_server_error", "--max-examples", "8")
