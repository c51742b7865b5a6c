"""The halves under a service manager: readiness, stopping and watchdog pings through NOTIFY_SOCKET, socket
activation, and the shipped unit files, run with systemd's own tools (systemd-socket-activate,
systemd-analyze) and a datagram socket standing in for systemd's notification socket."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from .conftest import HERE, free_port, kernel_pids

UNITS = HERE.parent / "systemd"
SUPERVISOR_UNIT, WEB_UNIT, SOCKET_UNIT = (
    "kernels-gateway-supervisor.service", "kernels-gateway-web.service", "kernels-gateway-web.socket"
)
# The units ask for a ping every 15 s (WatchdogSec=30); the tests hand out a shorter watchdog to see several.
WATCHDOG_USEC = "200000"


class NotifySocket:
    """What systemd listens on: a datagram socket at an abstract address, read as soon as anything arrives."""

    def __init__(self) -> None:
        self.address = f"@kgw-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            async with self._arrived:
                self.messages += data.decode().splitlines()
                self._arrived.notify_all()

    async def wait_for(self, message: str, count: int = 1, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: self.messages.count(message) >= count)

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@pytest.fixture
async def notify_socket():
    made: list[NotifySocket] = []

    def make() -> NotifySocket:
        made.append(NotifySocket())
        return made[-1]

    yield make
    for sock in made:
        await sock.close()


def unit_settings(name: str) -> dict[str, list[str]]:
    """A unit file as {"Section.Key": [values]}: keys such as Environment= may repeat."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def unit_command(name: str, folders: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A service's ExecStart= as it runs here (the module instead of the installed script) and its
    Environment= settings, with the specifiers %t and %S pointing at test folders."""
    settings = unit_settings(name)

    def expand(value: str) -> str:
        for specifier, folder in folders.items():
            value = value.replace(specifier, folder)
        return value

    [exec_start] = settings["Service.ExecStart"]
    argv = shlex.split(expand(exec_start))
    assert Path(argv[0]).name == "kernels-gateway"
    env = {}
    for assignments in settings.get("Service.Environment", []):
        env.update(part.split("=", 1) for part in shlex.split(expand(assignments)))
    return [sys.executable, "-m", "kernels_gateway", *argv[1:]], env


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def wait_for_log(path: Path, text: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"exited with {process.returncode}:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{path.read_text()}"
        await asyncio.sleep(0.05)


def wait_exit(process: subprocess.Popen, timeout: float = 40) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


async def test_halves_run_from_the_shipped_units_with_socket_activation(http, notify_socket):
    """The supervisor and the web half, each from its unit's ExecStart= and Environment=, the web half
    started on demand by systemd-socket-activate on its socket unit's ListenStream= address."""
    root = Path(tempfile.mkdtemp(prefix="kgw-", dir="/tmp"))
    folders = {"%t": str(root / "run"), "%S": str(root / "lib")}
    supervisor_notify, web_notify = notify_socket(), notify_socket()
    logs = {role: open(root / f"{role}.log", "w") for role in ("supervisor", "web")}
    processes: list[subprocess.Popen] = []
    try:
        # The supervisor reports READY=1 only once its launch kernel answers, then pings its watchdog.
        argv, env = unit_command(SUPERVISOR_UNIT, folders)
        supervisor = subprocess.Popen(
            argv, stdout=logs["supervisor"], stderr=subprocess.STDOUT,
            env={**os.environ, **env, "NOTIFY_SOCKET": supervisor_notify.address, "WATCHDOG_USEC": WATCHDOG_USEC},
        )
        processes.append(supervisor)
        await supervisor_notify.wait_for("READY=1")
        assert "Kernel started" in (root / "supervisor.log").read_text()
        await supervisor_notify.wait_for("WATCHDOG=1", count=3)
        runtime_dir = Path(env["KERNELS_GATEWAY_RUNTIME_DIR"])
        kernels = kernel_pids(runtime_dir)  # the launch kernel, and a warm one in the pool
        assert kernels

        # The web half is not running until the first connection arrives on the socket.
        [listen] = unit_settings(SOCKET_UNIT)["Socket.ListenStream"]
        host, own_port = listen.rsplit(":", 1)[0], free_port()
        port = free_port()
        argv, env = unit_command(WEB_UNIT, folders)
        env.update(KERNELS_GATEWAY_BASE_PATH="/krn", KERNELS_GATEWAY_PORT=str(own_port),
                   NOTIFY_SOCKET=web_notify.address, WATCHDOG_USEC=WATCHDOG_USEC)
        web = subprocess.Popen(
            ["systemd-socket-activate", "--listen", f"{host}:{port}",
             *(f"--setenv={name}={value}" for name, value in env.items()), *argv],
            stdout=logs["web"], stderr=subprocess.STDOUT,
        )
        processes.append(web)
        await wait_for_log(root / "web.log", "Listening on", web)
        assert cmdline(web.pid).startswith("systemd-socket-activate")

        async with http.get(f"http://{host}:{port}/krn/api/kernels") as response:
            assert response.status == 200
            assert len(await response.json()) == 1
        await web_notify.wait_for("READY=1")
        assert cmdline(web.pid).startswith(f"{sys.executable} -m kernels_gateway web")  # exec'd: LISTEN_PID is its own
        assert f"Serving at http://{host}:{port}/krn/api/kernels" in (root / "web.log").read_text()
        with pytest.raises(OSError):  # it serves the socket it was handed and binds none of its own
            socket.create_connection((host, own_port), timeout=5).close()
        await web_notify.wait_for("WATCHDOG=1", count=3)

        # A clean stop of either unit: STOPPING=1, exit 0; the supervisor takes its kernels with it.
        web.send_signal(signal.SIGTERM)
        await web_notify.wait_for("STOPPING=1")
        assert wait_exit(web) == 0
        supervisor.send_signal(signal.SIGTERM)
        await supervisor_notify.wait_for("STOPPING=1")
        assert wait_exit(supervisor) == 0
        assert kernel_pids(runtime_dir) == []
        assert not any(Path(f"/proc/{pid}").exists() for pid in kernels)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for pid in kernel_pids(root):
            os.kill(pid, signal.SIGKILL)
        for log in logs.values():
            log.close()
        shutil.rmtree(root, ignore_errors=True)


async def test_one_command_reports_to_its_own_service_manager(start_gateway, notify_socket):
    notify = notify_socket()
    gw = await start_gateway("--initial-kernels", "0",
                             env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": WATCHDOG_USEC})
    await notify.wait_for("READY=1")
    await notify.wait_for("WATCHDOG=1", count=3)
    assert await gw.stop() == 0
    await notify.wait_for("STOPPING=1")
    # Its children report to the arbiter, never past it.
    assert notify.messages.count("READY=1") == 1


def test_units_pass_systemd_analyze(tmp_path):
    """`systemd-analyze verify` finds nothing to say, and `security` rates the services' exposure OK."""
    script = Path(sys.executable).parent / "kernels-gateway"
    assert script.exists(), "the package is installed, so its script is"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/kernels-gateway", str(script))
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(path) for path in tmp_path.iterdir())
    verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    for unit in units:
        if unit.endswith(".service"):
            security = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit],
                                      capture_output=True, text=True)
            level = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", security.stdout)
            assert level and level[2] == "OK", security.stdout[-500:]
