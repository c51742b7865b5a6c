"""The REST contract, against one shared running gateway under /krn."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import pytest

from .conftest import eventually
from .helpers import assert_error

MODEL_KEYS = {"id", "name", "last_activity", "execution_state", "connections"}


def assert_model(model: dict) -> None:
    assert MODEL_KEYS <= set(model)
    # Jupyter Server's GatewayClient parses exactly this format.
    datetime.strptime(model["last_activity"], "%Y-%m-%dT%H:%M:%S.%fZ")
    uuid.UUID(model["id"])


async def test_api_version(gateway, http):
    async with http.get(f"{gateway.url}/api") as r:
        assert r.status == 200
        assert "version" in await r.json()


async def test_kernelspecs(gateway, http):
    async with http.get(f"{gateway.url}/api/kernelspecs") as r:
        body = await r.json()
    assert body["default"] == "python3"
    spec = body["kernelspecs"]["python3"]
    assert spec["name"] == "python3"
    assert spec["spec"]["language"] == "python"
    assert spec["resources"]["logo-64x64"] == "/krn/kernelspecs/python3/logo-64x64.png"
    async with http.get(f"{gateway.url}/api/kernelspecs/python3") as r:
        assert await r.json() == spec


async def test_unknown_kernelspec(gateway, http):
    async with http.get(f"{gateway.url}/api/kernelspecs/nope") as r:
        await assert_error(r, 404, "nope")


async def test_kernelspec_files(gateway, http):
    async with http.get(f"{gateway.url}/kernelspecs/python3/logo-64x64.png") as r:
        assert r.status == 200
        assert r.content_type == "image/png"
        assert (await r.read()).startswith(b"\x89PNG")
    async with http.head(f"{gateway.url}/kernelspecs/python3/logo-64x64.png") as r:
        assert r.status == 200
        assert int(r.headers["Content-Length"]) > 0
    async with http.get(f"{gateway.url}/kernelspecs/python3/nope.png") as r:
        await assert_error(r, 404)
    async with http.get(f"{gateway.url}/kernelspecs/nope/logo-64x64.png") as r:
        await assert_error(r, 404)


@pytest.mark.parametrize("path", ["..%2Fkernel.json", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"])
async def test_kernelspec_files_stay_in_their_folder(gateway, http, path):
    async with http.get(f"{gateway.url}/kernelspecs/python3/{path}") as r:
        await assert_error(r, 404)


async def test_initial_kernel_is_listed(gateway, http):
    async with http.get(f"{gateway.url}/api/kernels") as r:
        kernels = await r.json()
    assert kernels, "the launch kernel is missing"
    for model in kernels:
        assert_model(model)


async def test_start_get_delete(gateway, http):
    async with http.post(f"{gateway.url}/api/kernels", json={"name": "python3"}) as r:
        assert r.status == 201
        model = await r.json()
        assert r.headers["Location"] == f"/krn/api/kernels/{model['id']}"
    assert_model(model)
    assert model["name"] == "python3"
    assert model["execution_state"] in ("idle", "busy", "starting")
    async with http.get(f"{gateway.url}/api/kernels/{model['id']}") as r:
        assert r.status == 200
        assert (await r.json())["id"] == model["id"]
    async with http.get(f"{gateway.url}/api/kernels") as r:
        assert model["id"] in [k["id"] for k in await r.json()]
    async with http.delete(f"{gateway.url}/api/kernels/{model['id']}") as r:
        assert r.status == 204
    async with http.get(f"{gateway.url}/api/kernels/{model['id']}") as r:
        await assert_error(r, 404, f"Kernel does not exist: {model['id']}")
    async with http.get(f"{gateway.url}/api/kernels") as r:
        assert model["id"] not in [k["id"] for k in await r.json()]


async def test_start_without_body_uses_the_default(gateway, http):
    async with http.post(f"{gateway.url}/api/kernels") as r:
        assert r.status == 201
        model = await r.json()
    assert model["name"] == "python3"
    async with http.delete(f"{gateway.url}/api/kernels/{model['id']}") as r:
        assert r.status == 204


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"python3"', "JSON object"),
        (b'{"name": 3}', "name"),
        (b'{"env": "A=1"}', "env"),
        (b'{"env": ["A"]}', "env"),
        (b'{"env": {"KERNEL_X": 1}}', "env"),
        (b'{"env": {"KERNEL_X": "a\\u0000b"}}', "NUL"),
        (b'{"env": {"KERNEL_ID": "00000000-0000-0000-0000-000000000000"}}', "KERNEL_ID"),
        (b'{"env": {"KERNEL_X\\nLD_PRELOAD": "x"}}', "control character"),
        (b'{"env": {"KERNEL_\\u001b[2J": "x"}}', "control character"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_start_rejects_bad_bodies(gateway, http, body, message):
    async with http.post(f"{gateway.url}/api/kernels", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        await assert_error(r, 400, message)


async def test_start_unknown_kernelspec(gateway, http):
    async with http.post(f"{gateway.url}/api/kernels", json={"name": "no-such-kernel"}) as r:
        await assert_error(r, 404, "no-such-kernel")


@pytest.mark.parametrize("method, suffix", [
    ("GET", ""), ("DELETE", ""), ("POST", "/interrupt"), ("POST", "/restart"),
])
@pytest.mark.parametrize("kernel_id", [str(uuid.UUID(int=0)), "not-a-kernel-id"])
async def test_unknown_kernel(gateway, http, method, suffix, kernel_id):
    async with http.request(method, f"{gateway.url}/api/kernels/{kernel_id}{suffix}") as r:
        await assert_error(r, 404, f"Kernel does not exist: {kernel_id}")


async def test_unknown_kernel_websocket(gateway, http):
    async with http.get(f"{gateway.url}/api/kernels/{uuid.uuid4()}/channels",
                        headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                 "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
        await assert_error(r, 404, "Kernel does not exist")


async def test_unknown_routes_and_methods_answer_json(gateway, http):
    async with http.get(f"{gateway.url}/api/nothing-here") as r:
        await assert_error(r, 404)
    async with http.put(f"{gateway.url}/api/kernels") as r:
        body = await assert_error(r, 405)
        assert "POST" in r.headers["Allow"]
        assert not re.search(r"<html|Traceback", body["message"])
    async with http.get(f"{gateway.url}/api/kernels/{uuid.uuid4()}/channels") as r:
        await assert_error(r, 400, "websocket")


async def test_kernel_model_tracks_activity(gateway, http, kernel, connect):
    before = kernel["last_activity"]
    sock = await connect(kernel["id"])
    reply, _ = await sock.execute("1 + 1")
    assert reply["content"]["status"] == "ok"

    async def model_when(check):
        async with http.get(f"{gateway.url}/api/kernels/{kernel['id']}") as r:
            model = await r.json()
        return model if check(model) else None

    # The supervisor hears the kernel's status on a subscription of its own, a moment after the client.
    model = await eventually(lambda: model_when(lambda m: m["execution_state"] == "idle"), timeout=10, every=0.02)
    assert model["last_activity"] > before
    assert model["connections"] == 1
    await sock.close()
    await eventually(lambda: model_when(lambda m: m["connections"] == 0), timeout=5, every=0.05)
