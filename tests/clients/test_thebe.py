"""Thebe (thebe-core from npm, its browser bundle) in headless Chromium, in a page on another origin
than the gateway, with a token: it checks /api/status, creates a session, runs code and shows output."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import expect

from ..conftest import serving

THEBE = Path(__file__).parent / "thebe"
TIMEOUT = 60_000  # ms


@pytest.fixture
async def thebe_page_origin():
    """The test page and thebe-core's bundle, from an origin of their own."""
    bundle = THEBE / "node_modules" / "thebe-core" / "dist" / "lib"
    if not bundle.is_dir():
        pytest.fail(f"{bundle} is missing: (cd tests/clients/thebe && npm ci)")
    app = web.Application()
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(THEBE / "index.html")

    app.router.add_get("/index.html", index)
    app.router.add_static("/thebe-core", bundle)
    async with serving(app) as url:
        yield url


async def test_thebe_runs_code_in_a_session(page, thebe_page_origin, start_gateway, http):
    token = "thebe-token"
    gw = await start_gateway("--initial-kernels", "0", "--sessions", "--allow-origin", thebe_page_origin,
                             env={"KERNELS_GATEWAY_AUTH_TOKEN": token})
    auth = {"Authorization": f"token {token}"}
    code = "import sys\nprint('Hello from', sys.implementation.name)\n6 * 7"
    await page.goto(f"{thebe_page_origin}/index.html?" + "&".join(
        f"{key}={value}" for key, value in {"gateway": gw.url, "token": token, "code": code.replace("\n", "%0A")}.items()))
    await expect(page.locator("#status")).to_have_text("done", timeout=TIMEOUT)
    output = page.locator("#output")
    await expect(output).to_contain_text("Hello from cpython")
    await expect(output).to_contain_text("42")
    session = await page.evaluate("window.thebeRun")

    async with http.get(f"{gw.url}/api/sessions", headers=auth) as r:
        (listed,) = await r.json()
    assert listed["id"] == session["id"] and listed["kernel"]["id"] == session["kernelId"]
    assert listed["path"] == "/books/thebe.ipynb" and listed["type"] == "notebook"
    assert "GET /api/status" in gw.log() and "POST /api/sessions" in gw.log()
    async with http.delete(f"{gw.url}/api/sessions/{session['id']}", headers=auth) as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/api/kernels", headers=auth) as r:
        assert await r.json() == []
