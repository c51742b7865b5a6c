"""Kernelspec names are case-insensitive, as in Jupyter Server and Kernel Gateway (jupyter_client lists
and finds them in lower case): Jupyter Server's own kernelspec API cases, asked of the gateway directly
and through `jupyter server --gateway-url`."""

from __future__ import annotations

import json

import pytest

from ..helpers import SERVER_TOKEN, running_jupyter_server

RESOURCE = "a resource file of the sample kernelspec\n"


def sample_kernelspecs(folder) -> None:
    """Jupyter Server's test kernelspecs: `sample` with a resource file, `sample 2`, and a broken `bad`."""
    for name in ("sample", "sample 2", "bad"):
        spec = folder / "kernels" / name
        spec.mkdir(parents=True)
        kernel_json = {"argv": ["cat", "{connection_file}"], "display_name": "Test kernel"}
        (spec / "kernel.json").write_text("garbage" if name == "bad" else json.dumps(kernel_json))
    (folder / "kernels" / "sample" / "resource.txt").write_text(RESOURCE)


@pytest.fixture
async def specs_gateway(start_gateway, tmp_path):
    sample_kernelspecs(tmp_path / "specs")
    return await start_gateway("--initial-kernels", "0", env={"JUPYTER_PATH": str(tmp_path / "specs")})


async def check_kernelspec_api(http, url: str, params: dict, missing_statuses=(404,)) -> None:
    async with http.get(f"{url}/api/kernelspecs", params=params) as r:
        model = await r.json()
    assert model["default"] == "python3"
    specs = model["kernelspecs"]
    assert {"python3", "sample", "sample 2"} <= set(specs) and "bad" not in specs
    assert specs["sample"]["spec"]["display_name"] == "Test kernel"

    async with http.get(f"{url}/api/kernelspecs/Sample", params=params) as r:
        assert r.status == 200, await r.text()
        model = await r.json()
    assert model["name"] == "sample" and model["spec"]["display_name"] == "Test kernel"
    assert isinstance(model["resources"], dict)
    async with http.get(f"{url}/api/kernelspecs/sample%202", params=params) as r:
        assert (await r.json())["name"] == "sample 2"
    async with http.get(f"{url}/api/kernelspecs/nonexistant", params=params) as r:
        assert r.status == 404

    async with http.get(f"{url}/kernelspecs/sAmple/resource.txt", params=params) as r:
        assert r.status == 200, await r.text()
        assert await r.text() == RESOURCE
    for missing in ("nonexistant/resource.txt", "sample/nonexistant.txt"):
        async with http.get(f"{url}/kernelspecs/{missing}", params=params) as r:
            # Jupyter Server, told 404 by any gateway, fails on its own (it finishes with no body): 500.
            assert r.status in missing_statuses, (missing, r.status)

    async with http.post(f"{url}/api/kernels", json={"name": "Python3"}, params=params) as r:
        assert r.status == 201, await r.text()
        kernel = await r.json()
    assert kernel["name"] == "python3"
    async with http.delete(f"{url}/api/kernels/{kernel['id']}", params=params) as r:
        assert r.status == 204


async def test_kernelspec_names_are_case_insensitive(specs_gateway, http):
    await check_kernelspec_api(http, specs_gateway.url, {})


async def test_jupyter_servers_kernelspec_cases_through_gateway_url(specs_gateway, http, tmp_path):
    async with running_jupyter_server(specs_gateway.url, None, http, tmp_path / "server") as url:
        await check_kernelspec_api(http, url, {"token": SERVER_TOKEN}, missing_statuses=(404, 500))
    access = [line for line in specs_gateway.log().splitlines() if "aiohttp.access" in line]
    for asked in ("/api/kernelspecs/Sample ", "/api/kernelspecs/sample+2 ", "/kernelspecs/sAmple/resource.txt "):
        assert any(asked in line and '" 200 ' in line for line in access), asked
    for missing in ("/kernelspecs/nonexistant/resource.txt ", "/kernelspecs/sample/nonexistant.txt "):
        assert any(missing in line and '" 404 ' in line for line in access), missing
