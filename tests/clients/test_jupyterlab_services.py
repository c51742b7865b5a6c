"""JupyterLab's own services library (@jupyterlab/services 7, under Node with ws) against the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

NODE_PROJECT = Path(__file__).parent / "node"


async def test_jupyterlab_services(secured_gateway):
    node = shutil.which("node")
    if node is None or not (NODE_PROJECT / "node_modules" / "@jupyterlab" / "services").is_dir():
        pytest.fail(f"needs node and `npm ci` in {NODE_PROJECT}")
    gw = secured_gateway
    process = await asyncio.create_subprocess_exec(
        node, "drive.js", cwd=NODE_PROJECT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GATEWAY_URL": gw.url, "GATEWAY_TOKEN": gw.token},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 150)
    assert process.returncode == 0, stderr.decode()
    seen = json.loads(stdout.decode().strip().splitlines()[-1])

    assert seen["specs"]["default"] == "python3" and "python3" in seen["specs"]["names"]
    assert seen["info"] == "ipython"
    assert seen["protocol"] == "v1.kernel.websocket.jupyter.org"  # JupyterLab 4 asks for it first
    assert seen["hello"] == "hello from node\n42"
    assert seen["interrupted"] == "KeyboardInterrupt"
    assert seen["afterRestart"] == "False\n"
    statuses = seen["statuses"]
    assert "restarting" in statuses and "idle" in statuses[statuses.index("restarting"):]
    kernel_id = seen["kernelId"]
    assert kernel_id in seen["listed"] and kernel_id in seen["managed"]
    assert kernel_id not in seen["listedAfterShutdown"]
    assert (seen["noToken"], seen["wrongToken"]) == (401, 403)
    # The gateway's side of the story.
    log = gw.log()
    for event in ("started", "interrupted", "restarted", "shutdown"):
        assert f"Kernel {event}: {kernel_id}" in log
