"""The example page, in headless Chromium, on another origin than the gateway: client.js for real."""

from __future__ import annotations

import asyncio
import os
import signal

from playwright.async_api import expect

from ..conftest import kernel_pids
from ..helpers import children

TIMEOUT = 60_000  # ms: kernels start slowly on a busy machine

RECORD_STATUSES = """() => {
    window.seenStatuses = [];
    new MutationObserver(() => window.seenStatuses.push(document.getElementById("status").textContent))
        .observe(document.getElementById("status"), {childList: true, characterData: true, subtree: true});
}"""


async def kernel_ids(gw, http) -> set[str]:
    async with http.get(f"{gw.url}/api/kernels", headers=gw.auth) as r:
        assert r.status == 200
        return {k["id"] for k in await r.json()}


async def open_page(page, origin: str, gw) -> None:
    await page.goto(f"{origin}/index.html")
    await page.fill("#gateway", gw.url)
    await page.fill("#token", gw.token)


async def start_kernel(page, gw, http) -> str:
    before = await kernel_ids(gw, http)
    await page.click("#connect")
    await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)
    started = await kernel_ids(gw, http) - before
    assert len(started) == 1
    (kernel_id,) = started
    await expect(page.locator("#kernel")).to_have_text(f"python kernel {kernel_id[:8]}")
    return kernel_id


async def run(page, code: str) -> None:
    await page.fill("#code", code)
    await page.click("#run")


async def test_page_on_another_origin_runs_code(page, page_servers, secured_gateway, http):
    gw = secured_gateway
    await open_page(page, page_servers["allowed"], gw)
    kernel_id = await start_kernel(page, gw, http)

    await page.click("#run")  # the page's own example code
    output = page.locator("#output")
    await expect(output).to_contain_text("Hello from Python 3.", timeout=TIMEOUT)
    await expect(output).to_contain_text("42")
    await expect(page.locator("#status")).to_have_text("idle")

    await run(page, "import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    await expect(output).to_have_text("sleeping\n", timeout=TIMEOUT)
    await expect(page.locator("#status")).to_have_text("busy")
    await page.click("#interrupt")
    await expect(output).to_contain_text("KeyboardInterrupt", timeout=TIMEOUT)
    await expect(page.locator("#status")).to_have_text("idle")

    await run(page, "survivor = 'before the restart'; print(survivor)")
    await expect(output).to_have_text("before the restart\n", timeout=TIMEOUT)
    await page.evaluate(RECORD_STATUSES)
    await page.click("#restart")
    await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)
    assert "restarting" in await page.evaluate("window.seenStatuses")
    await run(page, "print(survivor)")
    await expect(output).to_contain_text("NameError: name 'survivor' is not defined", timeout=TIMEOUT)
    assert kernel_id in await kernel_ids(gw, http), "a restart keeps the kernel's id"

    # A second connection from the same page, through client.js alone: attach to the running kernel.
    attached = await page.evaluate(ATTACH_AND_RUN, [gw.url, gw.token, kernel_id])
    assert attached["status"] == "ok" and attached["language"] == "python"
    stream, result = attached["outputs"]
    assert stream == {"output_type": "stream", "name": "stdout", "text": "attached\n"}
    assert result["output_type"] == "execute_result" and result["data"] == {"text/plain": "2"}
    assert attached["unknown"] == "GatewayError 404"

    await page.click("#shutdown")
    await expect(page.locator("#status")).to_have_text("dead", timeout=TIMEOUT)
    assert kernel_id not in await kernel_ids(gw, http)
    assert await page.locator("#message").text_content() == ""
    assert not [m for m in page.console_messages if "error" in m.lower()], page.console_messages


ATTACH_AND_RUN = """async ([url, token, kernelId]) => {
    const { Gateway } = await import(url + "/client.js");
    const gateway = new Gateway(url, { token });
    const kernel = await gateway.attach(kernelId);
    const outputs = [];
    const reply = await kernel.execute("print('attached')\\n1 + 1", { onOutput: (output) => outputs.push(output) });
    kernel.close();
    const unknown = await gateway.attach("no-such-kernel").catch((error) => `${error.name} ${error.status}`);
    return { status: reply.status, language: kernel.info.language_info.name, outputs, unknown };
}"""


async def test_page_from_an_origin_not_allowed_is_refused(page, page_servers, secured_gateway, http):
    gw = secured_gateway
    before = await kernel_ids(gw, http)
    await open_page(page, page_servers["refused"], gw)
    await page.click("#connect")
    await expect(page.locator("#message")).to_contain_text("Cannot load the client", timeout=TIMEOUT)

    # Even with the token, such a page can neither call the API nor open a kernel's websocket.
    async with http.post(f"{gw.url}/api/kernels", json={}, headers=gw.auth) as r:
        kernel_id = (await r.json())["id"]
    try:
        fetched = await page.evaluate("""async ([url, token]) => {
            try {
                await fetch(url + "/api/kernels", {method: "POST", headers: {Authorization: "token " + token}});
                return "answered";
            } catch (error) { return error.name; }
        }""", [gw.url, gw.token])
        assert fetched == "TypeError"
        ws_url = f"{gw.ws_url}/api/kernels/{kernel_id}/channels?token={gw.token}"
        assert await page.evaluate(OPEN_WEBSOCKET, ws_url) == "closed 1006"
        await open_page(page, page_servers["allowed"], gw)
        assert await page.evaluate(OPEN_WEBSOCKET, ws_url) == "open"
    finally:
        async with http.delete(f"{gw.url}/api/kernels/{kernel_id}", headers=gw.auth) as r:
            assert r.status == 204
    assert await kernel_ids(gw, http) == before


OPEN_WEBSOCKET = """(url) => new Promise((resolve) => {
    const ws = new WebSocket(url);
    ws.onopen = () => { resolve("open"); ws.close(); };
    ws.onclose = (event) => resolve(`closed ${event.code}`);
})"""


async def test_client_reconnects_and_reports_a_dead_kernel(page, page_servers, secured_gateway, start_gateway, http):
    """A web worker that goes away drops the websocket: the client reconnects with its session, and
    reports `dead` once the kernel is gone."""
    gw = await start_gateway("--initial-kernels", "0", "--allow-origin", page_servers["allowed"],
                             env={"KERNELS_GATEWAY_AUTH_TOKEN": secured_gateway.token})
    gw.token, gw.auth = secured_gateway.token, secured_gateway.auth
    await open_page(page, page_servers["allowed"], gw)
    kernel_id = await start_kernel(page, gw, http)
    await run(page, "kept = 'state survives a worker restart'")
    await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)
    await page.evaluate(RECORD_STATUSES)

    await stop_worker(gw)
    await page.wait_for_function("window.seenStatuses.includes('disconnected')", timeout=TIMEOUT)
    await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)
    await run(page, "print(kept)")
    await expect(page.locator("#output")).to_have_text("state survives a worker restart\n", timeout=TIMEOUT)

    async with http.delete(f"{gw.url}/api/kernels/{kernel_id}", headers=gw.auth) as r:
        assert r.status == 204
    await stop_worker(gw)
    await expect(page.locator("#status")).to_have_text("dead", timeout=TIMEOUT)
    await expect(page.locator("#run")).to_be_disabled()


async def stop_worker(gw) -> None:
    """SIGTERM the web worker (its websockets close with 1001) and wait for the arbiter's new one."""
    (worker,) = [pid for pid, cmd in children(gw.process.pid).items() if " web " in cmd]
    os.kill(worker, signal.SIGTERM)
    for _ in range(600):
        if any(pid != worker for pid, cmd in children(gw.process.pid).items() if " web " in cmd):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no new web worker:\n{gw.log()}")


async def test_client_reports_a_kernel_that_dies(page, page_servers, secured_gateway, start_gateway, http):
    """The gateway restarts a kernel that dies and gives up on one that keeps dying: the page hears
    `restarting`, then `dead`, from the gateway itself, and the cell that was running fails."""
    gw = await start_gateway("--initial-kernels", "0", "--pool", "none", "--restart-limit", "1",
                             "--allow-origin", page_servers["allowed"],
                             env={"KERNELS_GATEWAY_AUTH_TOKEN": secured_gateway.token})
    gw.token, gw.auth = secured_gateway.token, secured_gateway.auth
    await open_page(page, page_servers["allowed"], gw)
    await start_kernel(page, gw, http)
    await page.evaluate(RECORD_STATUSES)
    await run(page, "import time\nprint('running', flush=True)\ntime.sleep(60)")
    await expect(page.locator("#output")).to_have_text("running\n", timeout=TIMEOUT)

    assert await kill_kernel(page, gw) == "restarting"
    await expect(page.locator("#message")).to_have_text("the kernel is restarting", timeout=TIMEOUT)
    await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)

    # Two quick deaths in a row exceed --restart-limit 1 (the first death may not count as quick).
    if await kill_kernel(page, gw) == "restarting":
        await expect(page.locator("#status")).to_have_text("idle", timeout=TIMEOUT)
        assert await kill_kernel(page, gw) == "dead"
    await expect(page.locator("#status")).to_have_text("dead", timeout=TIMEOUT)
    await expect(page.locator("#run")).to_be_disabled()


async def kill_kernel(page, gw) -> str:
    """SIGKILL the kernel's process; what the gateway tells the page next: restarting or dead."""
    already = len(await page.evaluate("window.seenStatuses"))
    (pid,) = kernel_pids(gw.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    news = await page.wait_for_function(
        "(n) => window.seenStatuses.slice(n).find((s) => s === 'restarting' || s === 'dead')",
        arg=already, timeout=TIMEOUT)
    return await news.json_value()


async def test_a_page_answers_the_kernels_input_requests(page, page_servers, secured_gateway, http):
    """input() and getpass() in a page's code: the example page asks in a field of its output, and
    client.js sends the answer back on stdin; a callback that refuses interrupts the cell."""
    gw = secured_gateway
    await open_page(page, page_servers["allowed"], gw)
    kernel_id = await start_kernel(page, gw, http)
    output = page.locator("#output")
    try:
        await run(page, "name = input('Your name? ')\nimport getpass\nsecret = getpass.getpass('Secret: ')\n"
                        "print(f'Hello {name}, your secret has {len(secret)} letters')")
        field = output.locator("input")
        await expect(field).to_have_attribute("type", "text", timeout=TIMEOUT)
        await expect(output).to_contain_text("Your name? ")
        await field.fill("Ada")
        await field.press("Enter")
        await expect(field).to_have_attribute("type", "password", timeout=TIMEOUT)
        await field.fill("lovelace")
        await field.press("Enter")
        await expect(output).to_contain_text("Hello Ada, your secret has 8 letters", timeout=TIMEOUT)
        await expect(output).not_to_contain_text("lovelace")
        await expect(page.locator("#status")).to_have_text("idle")

        answered = await page.evaluate(INPUT_BY_CALLBACK, [gw.url, gw.token, kernel_id])
        assert answered["asked"] == [["How many? ", False]]
        assert answered["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "42 times\n"}]
        assert answered["refused"]["status"] == "error" and answered["refused"]["ename"] == "KeyboardInterrupt"
        assert answered["without"]["ename"] == "StdinNotImplementedError"
    finally:
        await page.click("#shutdown")
        await expect(page.locator("#status")).to_have_text("dead", timeout=TIMEOUT)


INPUT_BY_CALLBACK = """async ([url, token, kernelId]) => {
    const { Gateway } = await import(url + "/client.js");
    const kernel = await new Gateway(url, { token }).attach(kernelId);
    const asked = [], outputs = [];
    await kernel.execute("print(input('How many? '), 'times')", {
        onOutput: (output) => outputs.push(output),
        onInput: async (prompt, password) => { asked.push([prompt, password]); return 42; },
    });
    const refused = await kernel.execute("input('No? ')", {
        onInput: () => Promise.reject(new Error("the user closed the prompt")),
    });
    const without = await kernel.execute("input('Nobody asks')");
    kernel.close();
    return { asked, outputs, refused, without };
}"""
