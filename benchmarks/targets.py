"""What the workloads run against: this gateway started from the checkout, Jupyter Kernel Gateway from its
own virtual environment, and kernels driven straight through jupyter_client. Each lives in its own temp
folder and listens on a free loopback port; whatever a target started is stopped with a deadline, and
any kernel left behind in its folder is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from functools import cache
from pathlib import Path

import aiohttp
from jupyter_client import AsyncKernelManager
from jupyter_client.session import Session

from .clients import RawKernel, WebsocketKernel
from .profile import Profiler

REPO = Path(__file__).resolve().parent.parent
KG_VENV = Path(__file__).resolve().parent / ".venv-kg"
KG_VERSION = "3.0.1"
THIS, KG, RAW = "kernels-gateway", "Kernel Gateway", "jupyter_client"
READY_TIMEOUT = 120.0
STOP_GRACE = 40.0


# -- processes, seen through /proc -------------------------------------------------------------


def proc_bytes(path: str, field: str) -> int:
    """A size in kB that a /proc file (status, smaps_rollup) gives on the line `field:`, in bytes."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    return proc_bytes(f"/proc/{pid}/status", "VmRSS")


def children(pid: int) -> dict[int, str]:
    """Direct children of `pid` and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def _command_lines() -> dict[int, str]:
    """Every other process's command line, its arguments joined by spaces."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return found


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text`: for a folder, its kernels and the server's own processes."""
    return [pid for pid, line in _command_lines().items() if text in line]


def kernels_of(folder: Path) -> list[int]:
    """The kernel processes of a folder: those whose command line names a connection file there (the
    server's own processes name only the folder)."""
    named = re.compile(re.escape(f"{folder}/") + r"\S+\.json")
    return [pid for pid, line in _command_lines().items() if named.search(line)]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def settled_kernels(folder: Path, at_least: int = 0, timeout: float = 30.0) -> int:
    """Wait until at least `at_least` kernels of `folder` run and none of them used CPU for a moment (all
    started, none starting or stopping): how many there are then, or -1 if that never happened."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    previous: dict[int, int] = {}
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            ticks = {pid: cpu_ticks(pid) for pid in processes_mentioning(f"{folder}/")}
            if len(ticks) >= at_least and ticks == previous:
                return len(ticks)
            previous = ticks
        await asyncio.sleep(0.2)
    return -1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kernelspec(folder: Path) -> Path:
    """One `python3` kernelspec for every target (ipykernel of the Python running the benchmark), so all
    three start the same kernel; the folder goes first on JUPYTER_PATH."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return folder


# -- servers -----------------------------------------------------------------------------------


class Server:
    """A gateway process on a free loopback port in its own temp folder (log, runtime files, kernels)."""

    name = ""
    protocols = ("legacy", "v1")

    def __init__(self):
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="kgb-", dir="/tmp"))
        self.log_path = self.folder / "server.log"
        self.process: subprocess.Popen | None = None
        self.http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    async def __aenter__(self) -> "Server":
        argv, env, cwd = self.command()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"{self.url}/api/kernelspecs") as r:
                    if r.status == 200:
                        return
            if loop.time() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {READY_TIMEOUT:g} s:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc) -> None:
        if self.http:
            await self.http.close()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), STOP_GRACE)
            except TimeoutError:
                self.process.kill()
                self.process.wait()
        for pid in processes_mentioning(f"{self.folder}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- what workloads ask of any server ----------------------------------------------------------

    async def start_kernel(self, body: dict | None = None) -> str:
        async with self.http.post(f"{self.url}/api/kernels", json=body or {}) as r:
            if r.status != 201:
                raise RuntimeError(f"POST /api/kernels: {r.status} {(await r.text())[:300]}")
            return (await r.json())["id"]

    async def delete_kernel(self, kernel_id: str) -> None:
        async with self.http.delete(f"{self.url}/api/kernels/{kernel_id}") as r:
            if r.status not in (204, 404):
                raise RuntimeError(f"DELETE /api/kernels/{kernel_id}: {r.status}")

    async def connect(self, kernel_id: str, v1: bool) -> WebsocketKernel:
        return await WebsocketKernel.connect(self.http, self.ws_url, kernel_id, v1)

    def memory_pid(self) -> int:
        """The process whose memory grows with websockets and kernels."""
        return self.process.pid

    def kernels_pid(self) -> int:
        """The process that holds the kernels' managers."""
        return self.process.pid


class ThisGateway(Server):
    """`python -m kernels_gateway` from this checkout."""

    name = THIS

    def __init__(self, *args: str):
        super().__init__()
        self.args = list(args)

    def command(self):
        argv = [sys.executable, "-m", "kernels_gateway", "--ip", "127.0.0.1", "--port", str(self.port),
                "--runtime-dir", str(self.folder / "rt"), "--log-level", "WARNING", *self.args]
        if self.has_option("--initial-kernels"):  # workloads start the kernels they need, as with the others
            argv += ["--initial-kernels", "0"]
        return argv, dict(os.environ), REPO

    def processes(self) -> list[tuple[str, int]]:
        """(role, pid) of the supervisor and of each web worker."""
        return [(role, pid) for pid, cmd in sorted(children(self.process.pid).items())
                for role in ("supervisor", "web") if f"kernels_gateway {role}" in cmd]

    def _child(self, role: str) -> list[int]:
        return [pid for found, pid in self.processes() if found == role]

    def memory_pid(self) -> int:
        return self._child("web")[0]

    def kernels_pid(self) -> int:
        return self._child("supervisor")[0]

    @staticmethod
    @cache
    def help_text() -> str:
        return subprocess.run([sys.executable, "-m", "kernels_gateway", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60).stdout

    @classmethod
    def has_option(cls, flag: str) -> bool:
        return f"{flag} " in cls.help_text() or f"{flag}\n" in cls.help_text()


class KernelGateway(Server):
    """`jupyter kernelgateway` from benchmarks/.venv-kg, created and filled from PyPI on first use."""

    name = KG

    def command(self):
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.folder / "rt"),
               "JUPYTER_CONFIG_DIR": str(self.folder / "config"), "JUPYTER_DATA_DIR": str(self.folder / "data")}
        argv = [str(KG_VENV / "bin" / "jupyter"), "kernelgateway", "--KernelGatewayApp.ip=127.0.0.1",
                f"--KernelGatewayApp.port={self.port}", "--KernelGatewayApp.log_level=WARN"]
        return argv, env, self.folder

    @staticmethod
    def installed_version() -> str | None:
        python = KG_VENV / "bin" / "python"
        if not python.exists():
            return None
        found = subprocess.run([str(python), "-c", "import kernel_gateway; print(kernel_gateway.__version__)"],
                               capture_output=True, text=True)
        return found.stdout.strip() or None

    @classmethod
    def ensure_installed(cls, version: str = KG_VERSION) -> str:
        """Create the venv and install the pinned Kernel Gateway unless it is already there."""
        if cls.installed_version() != version:
            print(f"Installing jupyter_kernel_gateway=={version} into {KG_VENV} ...", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(KG_VENV)], check=True)
            subprocess.run([str(KG_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                            f"jupyter_kernel_gateway=={version}"], check=True)
        versions = subprocess.run(
            [str(KG_VENV / "bin" / "python"), "-c",
             "import kernel_gateway, jupyter_server, jupyter_client, tornado; "
             "print(kernel_gateway.__version__, jupyter_server.__version__, jupyter_client.__version__, "
             "tornado.version)"],
            capture_output=True, text=True, check=True).stdout.split()
        return "jupyter_kernel_gateway {} (jupyter_server {}, jupyter_client {}, tornado {})".format(*versions)


class RawKernels:
    """Kernels started and driven in this process by jupyter_client, over ZMQ with the IPC transport
    (the transport this gateway uses between itself and its kernels)."""

    name = RAW
    protocols = ("zmq",)

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="kgb-", dir="/tmp"))
        self.managers: dict[str, AsyncKernelManager] = {}

    async def __aenter__(self) -> "RawKernels":
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(self.delete_kernel(k) for k in list(self.managers)), return_exceptions=True)
        for pid in processes_mentioning(f"{self.folder}/"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)

    async def start_kernel(self, body: dict | None = None) -> str:
        kernel_id = str(uuid.uuid4())
        manager = AsyncKernelManager(kernel_name="python3", transport="ipc",
                                     connection_file=str(self.folder / f"kernel-{kernel_id}.json"))
        manager.ip = str(self.folder / f"k-{kernel_id[:8]}")
        env = {**os.environ, **(body or {}).get("env", {})}
        self.managers[kernel_id] = manager
        await manager.start_kernel(env=env)
        return kernel_id

    async def delete_kernel(self, kernel_id: str) -> None:
        manager = self.managers.pop(kernel_id)
        await asyncio.wait_for(manager.shutdown_kernel(now=False), STOP_GRACE)

    async def connect(self, kernel_id: str, v1: bool = False) -> RawKernel:
        """A client whose iopub subscription is live (jupyter_client's own wait_for_ready), as a gateway's
        websocket is once it has been accepted. Each client gets a Session of its own: clients sharing one
        would reject each other's iopub messages as replayed (duplicate signatures)."""
        manager = self.managers[kernel_id]
        session = Session(key=manager.session.key, signature_scheme=manager.session.signature_scheme)
        client = manager.client(session=session)
        client.start_channels()
        await client.wait_for_ready(timeout=READY_TIMEOUT)
        return RawKernel(client)


def make(name: str, *gateway_args: str) -> Server | RawKernels:
    """A target by name; `gateway_args` go to this gateway's command line."""
    if name == THIS:
        return ThisGateway(*gateway_args)
    return {KG: KernelGateway, RAW: RawKernels}[name]()


class Fleet:
    """The chosen targets, started for each workload that asks and stopped after it. With `keep` (the
    smoke run's shortcut; a measurement wants fresh servers) a target started once, with the same
    arguments, serves every later workload, and all stop when the fleet closes."""

    def __init__(self, names: list[str], keep: bool = False, profiler: Profiler | None = None):
        self.names = names
        self.keep = keep
        self.profiler = profiler  # records this gateway's processes while a workload runs against them
        self.workload = ""  # the one running, to name its profiles
        self._kept: dict[tuple[str, ...], Server | RawKernels] = {}
        self._stack = contextlib.AsyncExitStack()

    @contextlib.asynccontextmanager
    async def running(self, names: list[str], *gateway_args: str):
        async with contextlib.AsyncExitStack() as stack:
            if self.keep:
                targets = [await self._kept_target(name, gateway_args) for name in names]
            else:
                targets = [await stack.enter_async_context(make(name, *gateway_args)) for name in names]
            if self.profiler:
                for target in targets:
                    if isinstance(target, ThisGateway):
                        await stack.enter_async_context(self.profiler.recording(target, self.workload))
            yield targets

    async def each_gateway(self, workload: str, results, run) -> None:
        """`run(target)` against each chosen gateway in turn (raw ZMQ has no server to measure); one that
        fails is noted in `results` and the next goes on."""
        for name in self.names:
            if name != RAW:
                with results.guard(workload, name):
                    async with self.running([name]) as [target]:
                        await run(target)

    async def _kept_target(self, name: str, gateway_args: tuple[str, ...]) -> Server | RawKernels:
        key = (name, *(gateway_args if name == THIS else ()))
        if key not in self._kept:
            self._kept[key] = await self._stack.enter_async_context(make(name, *gateway_args))
        return self._kept[key]

    async def close(self) -> None:
        await self._stack.aclose()
