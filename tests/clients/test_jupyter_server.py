"""Jupyter Server started with --gateway-url: its kernels live on the gateway, and its websocket reaches
them through the gateway's legacy protocol."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from ..conftest import free_port, kernel_pids
from ..helpers import SERVER_TOKEN, running_jupyter_server
from ..kernel_client import KernelSocket, encode_legacy_binary

REPORT_TARGET = """
from comm import get_comm_manager

def _report_target(comm, open_msg):
    @comm.on_msg
    def _report(msg):
        comm.send({"data": msg["content"]["data"], "buffers": [bytes(b).decode() for b in msg["buffers"]]})

get_comm_manager().register_target("report", _report_target)
"""


@pytest.fixture
async def jupyter_server(secured_gateway, http, tmp_path):
    async with running_jupyter_server(secured_gateway.url, secured_gateway.token, http, tmp_path) as url:
        yield url


class ThroughServer:
    """Where KernelSocket.open connects: Jupyter Server's own channels route."""

    def __init__(self, url: str):
        self.ws_url = url.replace("http", "ws", 1)


def utf8_valid_binary_message(sock: KernelSocket, buffers: list[bytes]) -> dict:
    """A comm_msg with buffers whose legacy binary frame is valid UTF-8.

    Jupyter Server's gateway client writes a browser's binary frame to the gateway with the text opcode
    (tornado's write_message without binary=True), so only a frame that is valid UTF-8 can cross; its
    offsets are, once no byte of them is 0x80 or above. Pad the message until they are.
    """
    for pad in range(256):
        msg = sock.message("comm_msg", {"comm_id": "c1", "data": {"hello": "kernel", "pad": "." * pad}},
                           buffers=buffers)
        try:
            encode_legacy_binary(msg).decode("utf-8")
            return msg
        except UnicodeDecodeError:
            continue
    raise AssertionError("no padding makes the frame valid UTF-8")


async def test_jupyter_server_with_gateway_url(secured_gateway, jupyter_server, http):
    gw = secured_gateway
    params = {"token": SERVER_TOKEN}
    async with http.get(f"{jupyter_server}/api/kernelspecs", params=params) as r:
        assert r.status == 200
        assert "python3" in (await r.json())["kernelspecs"]
    before = set(kernel_pids(gw.runtime_dir))
    async with http.post(f"{jupyter_server}/api/kernels", json={"name": "python3"}, params=params) as r:
        assert r.status == 201, await r.text()
        kernel_id = (await r.json())["id"]

    # The kernel lives on the gateway.
    async with http.get(f"{gw.url}/api/kernels/{kernel_id}", headers=gw.auth) as r:
        assert r.status == 200
    assert len(set(kernel_pids(gw.runtime_dir)) - before) == 1

    sock = await KernelSocket.open(http, ThroughServer(jupyter_server), kernel_id, params=params)
    reply, stdout = await sock.execute("import os\nprint(6 * 7, os.environ['KERNEL_LAUNCH_TIMEOUT'])")
    assert reply["content"]["status"] == "ok"
    assert stdout.split()[0] == "42"  # and Jupyter Server's KERNEL_* variables reached the kernel

    reply, _ = await sock.execute(REPORT_TARGET)
    assert reply["content"]["status"] == "ok", reply["content"]
    await sock.send(sock.message("comm_open", {"comm_id": "c1", "target_name": "report", "data": {}}))
    request = utf8_valid_binary_message(sock, [b"first buffer", b"second"])
    _, iopub = await sock.reply_to(request, replied=False)
    (report,) = [m for m in iopub if m["header"]["msg_type"] == "comm_msg"]
    assert report["content"]["data"]["data"]["hello"] == "kernel"
    assert report["content"]["data"]["buffers"] == ["first buffer", "second"]

    reply, _ = await sock.execute("survivor = 1")
    async with http.post(f"{jupyter_server}/api/kernels/{kernel_id}/restart", params=params) as r:
        assert r.status == 200, await r.text()
    assert f"Kernel restarted: {kernel_id}" in gw.log()
    reply, stdout = await sock.execute("print('survivor' in dir())", timeout=60)
    assert stdout == "False\n"
    await sock.close()

    async with http.delete(f"{jupyter_server}/api/kernels/{kernel_id}", params=params) as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/api/kernels/{kernel_id}", headers=gw.auth) as r:
        assert r.status == 404
    assert set(kernel_pids(gw.runtime_dir)) == before


async def test_jupyter_server_needs_the_gateway_token(secured_gateway, http, tmp_path):
    """Without the right --GatewayClient.auth_token, Jupyter Server gets the gateway's 403 and starts nothing."""
    port = free_port()
    before = set(kernel_pids(secured_gateway.runtime_dir))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1", "--no-browser", "--allow-root",
         f"--ServerApp.root_dir={tmp_path}", f"--IdentityProvider.token={SERVER_TOKEN}",
         f"--gateway-url={secured_gateway.url}", "--GatewayClient.auth_token=wrong"],
        env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path), "JUPYTER_RUNTIME_DIR": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            try:
                async with http.post(f"http://127.0.0.1:{port}/api/kernels", json={},
                                     params={"token": SERVER_TOKEN}) as r:
                    status = r.status  # Jupyter Server passes the gateway's status on
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        assert status == 403
        assert set(kernel_pids(secured_gateway.runtime_dir)) == before
    finally:
        server.terminate()
        server.wait(30)
