"""Fixtures for the real clients: the example page served on two origins, and headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

EXAMPLE_PAGE = Path(__file__).parents[2] / "examples" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
async def page_servers(secured_gateway):
    """examples/browser served as it is, from the allowed origin and from one that is not allowed."""
    app = web.Application()
    app.router.add_static("/", EXAMPLE_PAGE)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in (secured_gateway.page_port, secured_gateway.other_port):
        await web.TCPSite(runner, "127.0.0.1", port).start()
    yield {"allowed": f"http://127.0.0.1:{secured_gateway.page_port}",
           "refused": f"http://127.0.0.1:{secured_gateway.other_port}"}
    await runner.cleanup()


@pytest.fixture(scope="session")
async def browser():
    """Debian's chromium driven by Playwright; Playwright never downloads a browser of its own."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser):
    context = await browser.new_context()
    page = await context.new_page()
    page.console_messages = []
    page.on("console", lambda message: page.console_messages.append(message.text))
    yield page
    await context.close()
