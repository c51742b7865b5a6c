"""JupyterLab itself, on `jupyter lab --gateway-url`, in headless Chromium: after its kernel is killed and
restarted automatically, the status bar comes back to Idle and cells run."""

from __future__ import annotations

import json
import os
import signal

from playwright.async_api import expect

from ..conftest import kernel_pids
from ..helpers import SERVER_TOKEN, running_jupyter_server

TIMEOUT = 60_000  # ms: JupyterLab and kernels start slowly on a busy machine

NOTEBOOK = {
    "cells": [{"cell_type": "code", "source": "print(6 * 7)", "metadata": {}, "outputs": [], "execution_count": None}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}

# Every kernel state the status bar shows ("Python 3 (ipykernel) | Idle"), in order.
RECORD_STATES = """() => {
    window.kernelStates = [];
    const bar = document.getElementById("jp-main-statusbar");
    new MutationObserver(() => {
        const state = (bar.innerText.match(/\\| (\\w+)/) || [])[1];
        if (state && state !== window.kernelStates.at(-1)) window.kernelStates.push(state);
    }).observe(bar, {childList: true, characterData: true, subtree: true});
}"""


async def test_jupyterlab_comes_back_to_idle_after_a_kernel_crash(start_gateway, http, page, tmp_path):
    gw = await start_gateway("--initial-kernels", "0")
    root = tmp_path / "lab"
    root.mkdir()
    (root / "crash.ipynb").write_text(json.dumps(NOTEBOOK))
    async with running_jupyter_server(gw.url, None, http, root, app="jupyterlab") as url:
        await page.goto(f"{url}/lab/tree/crash.ipynb?token={SERVER_TOKEN}", timeout=TIMEOUT)
        bar = page.locator("#jp-main-statusbar")
        await expect(bar).to_contain_text("| Idle", timeout=TIMEOUT)
        [pid] = kernel_pids(gw.runtime_dir)  # the notebook's kernel runs on the gateway
        await page.evaluate(RECORD_STATES)

        os.kill(pid, signal.SIGKILL)
        # JupyterLab tells of the automatic restart in a dialog.
        await expect(page.locator(".jp-Dialog")).to_contain_text("restart automatically", timeout=TIMEOUT)
        await page.locator(".jp-Dialog .jp-mod-accept").click()
        await page.wait_for_function("() => window.kernelStates.length > 1 && window.kernelStates.at(-1) === 'Idle'",
                                     timeout=TIMEOUT)
        states = await page.evaluate("() => window.kernelStates")
        assert states[0] != "Idle", states  # it did leave Idle, and came back
        await expect(bar).to_contain_text("| Idle")

        await page.locator(".jp-Cell .cm-content").first.click()
        await page.keyboard.press("Shift+Enter")
        await expect(page.locator(".jp-OutputArea-output").first).to_have_text("42", timeout=TIMEOUT)
        await expect(bar).to_contain_text("| Idle")
        [new_pid] = kernel_pids(gw.runtime_dir)
        assert new_pid != pid
    assert "died; restarting it" in gw.log()
