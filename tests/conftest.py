"""Fixtures that run the real thing: the `kernels-gateway` command, its supervisor, ipykernel kernels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from .kernel_client import KernelSocket

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_naming(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def kernel_pids(runtime_dir: Path) -> list[int]:
    """Processes whose command line names a connection file in this runtime dir: our kernels."""
    return _pids_naming(f"{runtime_dir}/kernel-")


def half_pids(runtime_dir: Path) -> list[int]:
    """Supervisors and workers on this runtime dir, whoever started them (an arbiter may be gone)."""
    return _pids_naming(f"--runtime-dir {runtime_dir} ")


def kill_processes_of(*runtime_dirs: Path) -> None:
    """Kill the supervisors, workers and kernels on these runtime dirs: halves first, since a supervisor
    restarts kernels."""
    for pids in (half_pids, kernel_pids):
        for pid in {pid for folder in runtime_dirs for pid in pids(folder)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped one would hold on to its signals
                os.kill(pid, signal.SIGKILL)


async def run_script(module: str, *args: str, env: dict | None = None, timeout: float = 90) -> bytes:
    """Run `python -m module args` from the checkout, as a client of its own process; its stdout, once
    it has exited 0 (killed if it outlives `timeout`)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=HERE.parent, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()[-3000:]
    return out


@contextlib.asynccontextmanager
async def serving(app: web.Application):
    """`app` on a free loopback port for the block's duration; yields its URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def eventually(check, timeout: float = 30, every: float = 0.1):
    """Poll `check` (a coroutine function) until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(every)
    return result


class Gateway:
    """One `kernels-gateway` process tree on a free port, in its own short runtime dir."""

    def __init__(self, *args: str, env: dict | None = None, command: tuple[str, ...] = ()):
        self.port = free_port()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="kgw-", dir="/tmp")) / "rt"
        self.args = list(args)
        self.command = list(command)
        self.env = {**os.environ, **(env or {})}
        self.base = ""
        self.tls = "--certfile" in self.args
        # Where its processes name their files: its own runtime dir, or one given with --runtime-dir (the
        # last wins, as on any command line), as given and as reached through links. That one may be
        # another gateway's, which its cleanup leaves alone: only the test's end sweeps it.
        self.process_dirs = {self.runtime_dir}
        for i, arg in enumerate(self.args):
            if arg == "--base-path":
                stripped = self.args[i + 1].strip("/")
                self.base = f"/{stripped}" if stripped else ""
            if arg == "--runtime-dir":
                given = Path(self.args[i + 1])
                self.process_dirs = {given, given.resolve()}
        self.log_path = self.runtime_dir.parent / "gateway.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.base}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{self.base}"

    def log(self) -> str:
        return self.log_path.read_text()

    async def start(self, wait_for: str = "Serving at", timeout: float = 60) -> "Gateway":
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kernels_gateway", *self.command,
             *(["--port", str(self.port)] if self.command != ["supervisor"] else []),
             "--runtime-dir", str(self.runtime_dir), *self.args],
            env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while wait_for not in self.log():
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not log {wait_for!r}:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        self.process.send_signal(sig)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"gateway did not stop:\n{self.log()}"
            await asyncio.sleep(0.05)
        return self.process.returncode

    def cleanup(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process:
            self.log_file.close()
        kill_processes_of(self.runtime_dir)
        shutil.rmtree(self.runtime_dir.parent, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def show_logs_if_failed(request, gateways: list[Gateway]) -> None:
    """A failed test prints the logs of the gateways it started: the only witness of what they did."""
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for gateway in gateways:
            if gateway.log_path.exists():
                print(f"\n--- gateway log ({' '.join(gateway.command) or 'all'}) ---\n{gateway.log()}")


@pytest.fixture
async def start_gateway(request):
    """Start fresh gateways for tests that stop, break or reconfigure them."""
    started: list[Gateway] = []

    async def start(*args: str, **kw) -> Gateway:
        wait_for = kw.pop("wait_for", "Serving at")
        if "--pool" not in args and kw.get("command") != ("web",):
            args = ("--pool", "none", *args)  # a warm kernel costs time; the tests that want one ask
        gateway = Gateway(*args, **kw)
        started.append(gateway)
        return await gateway.start(wait_for=wait_for)

    yield start
    show_logs_if_failed(request, started)
    for gateway in started:
        gateway.cleanup()
    # What ran on a runtime dir a test gave (another gateway's, or one of its own making) is the test's too.
    kill_processes_of(*(folder for gateway in started for folder in gateway.process_dirs))


@pytest.fixture(scope="session")
async def gateway():
    """One running gateway under /krn, shared by the tests that only read or make their own kernels."""
    gw = Gateway("--base-path", "/krn")
    try:
        await gw.start()
        yield gw
        assert await gw.stop() == 0
    finally:
        gw.cleanup()


@pytest.fixture(scope="session")
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def kernel(gateway, http):
    """A fresh kernel on the shared gateway, shut down afterwards."""
    async with http.post(f"{gateway.url}/api/kernels", json={}) as response:
        assert response.status == 201, await response.text()
        model = await response.json()
    yield model
    async with http.delete(f"{gateway.url}/api/kernels/{model['id']}") as response:
        assert response.status in (204, 404)


@pytest.fixture
async def connect(gateway, http):
    """Open websockets to kernels on the shared gateway: `await connect(kernel_id, v1=False)`."""
    opened: list[KernelSocket] = []

    async def connect(kernel_id: str, v1: bool = False, gw: Gateway | None = None, **kw) -> KernelSocket:
        sock = await KernelSocket.open(http, gw or gateway, kernel_id, v1=v1, **kw)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        await sock.close()


def write_kernelspec(folder: Path, name: str, argv: list[str] | None = None) -> Path:
    """A kernelspec in a JUPYTER_PATH-style folder; the default argv runs ipykernel."""
    spec_dir = folder / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = argv or [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return spec_dir


@pytest.fixture(scope="session")
async def secured_gateway():
    """A gateway with a token (given as a variable, the recommended way) that lets one page origin in:
    shared by the auth tests and the client tests. `page_port` is where that page is served;
    `other_port` serves the same page from an origin that is not allowed."""
    page_port, other_port = free_port(), free_port()
    token = secrets.token_urlsafe(24)
    gw = Gateway("--base-path", "/krn", "--initial-kernels", "0", "--allow-origin", f"http://127.0.0.1:{page_port}",
                 "--expose-headers", "Location", "--max-age", "600", env={"KERNELS_GATEWAY_AUTH_TOKEN": token})
    gw.token, gw.page_port, gw.other_port = token, page_port, other_port
    gw.page_origin = f"http://127.0.0.1:{page_port}"
    gw.auth = {"Authorization": f"token {token}"}
    await gw.start()
    yield gw
    assert await gw.stop() == 0
    gw.cleanup()
