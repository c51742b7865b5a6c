"""What many tests use: processes and their children, REST calls and their errors, raw HTTP, kernel states.
Fixtures and the gateway process itself live in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from .conftest import Gateway, free_port, kernel_pids
from .kernel_client import KernelSocket


def children(pid: int) -> dict[int, str]:
    """Direct children of a process, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError):
                continue
    return found


def child_pids(gw, role: str) -> list[int]:
    return [pid for pid, cmd in children(gw.process.pid).items() if f"kernels_gateway {role}" in cmd]


def kernel_ids_by_pid(runtime_dir: Path) -> dict[int, str]:
    """Each kernel process with the id in its connection file's name."""
    found = {}
    for pid in kernel_pids(runtime_dir):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        found[pid] = cmdline.split(f"{runtime_dir}/kernel-")[1][:36]
    return found


async def json_of(http, method: str, url: str, **kw):
    async with http.request(method, url, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def start_kernel(http, gw) -> str:
    status, model = await json_of(http, "POST", f"{gw.url}/api/kernels", json={})
    assert status == 201, model
    return model["id"]


async def wait_for_status(sock: KernelSocket, state: str, timeout: float = 30) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == state:
                return msg


async def assert_error(response, status: int, message: str | None = None) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"message", "reason"}
    if message:
        assert message in body["message"]
    return body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status_line.split()[1]), headers, body


def request_head(gw: Gateway, method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


SERVER_TOKEN = "jupyter-server-token"


@contextlib.asynccontextmanager
async def running_jupyter_server(gateway_url: str, gateway_token: str | None, http, tmp_path, app: str = "jupyter_server"):
    """`jupyter server --gateway-url` (or `jupyter lab`, app="jupyterlab"), on a free port, in its own
    config and runtime dirs, serving tmp_path: its URL."""
    port = free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    token = [f"--GatewayClient.auth_token={gateway_token}"] if gateway_token else []
    log = open(tmp_path / "jupyter-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", app, f"--port={port}", "--ip=127.0.0.1", "--no-browser", "--allow-root",
         f"--ServerApp.root_dir={tmp_path}", f"--IdentityProvider.token={SERVER_TOKEN}",
         f"--gateway-url={gateway_url}", *token],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            assert server.poll() is None, (tmp_path / "jupyter-server.log").read_text()
            try:
                async with http.get(f"{url}/api/status", params={"token": SERVER_TOKEN}) as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


class FakeSupervisor:
    """A supervisor socket that answers each operation from `answers` (op -> function of the args, which
    may raise a GatewayError), for running the web app in-process without kernels. `asked` lists every
    (op, args) it was sent."""

    def __init__(self, socket_path: Path, answers: dict):
        self.socket_path, self.answers = socket_path, {"subscribe": lambda args: None, **answers}
        self.asked: list[tuple[str, dict]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> "FakeSupervisor":
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path))
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from kernels_gateway.supervisor import wire
        from kernels_gateway.errors import GatewayError

        self._handlers.add(asyncio.current_task())
        try:
            while (frame := await wire.read_frame(reader)) is not None:
                op, args = frame["op"], frame.get("args") or {}
                self.asked.append((op, args))
                try:
                    reply = {"id": frame["id"], "result": self.answers[op](args)}
                except GatewayError as e:
                    reply = {"id": frame["id"], "error": {"code": e.code, "message": e.message}}
                await wire.write_frame(writer, reply)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._handlers.discard(asyncio.current_task())
