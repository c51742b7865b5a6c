"""Launching kernels: a process through jupyter_client's AsyncKernelManager, its output followed, its
iopub watched, proven ready and seeded; and the end of one, each step on a deadline.

Each kernel is driven by an AsyncKernelManager, so kernelspecs that name a provisioner are honoured.
Kernels run in their own sessions with no parent to watch, so they outlive a supervisor crash; a record
per kernel, written before each process is launched, lets the next supervisor adopt them (adoption.py).
The launcher registers nothing: the registry (kernels.py) and the warm pool (pool.py) hold what it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager

from . import adoption, liveness
from ..config import Config
from ..kernel_protocol import KERNEL_RECONNECT_MS, kernel_url, prove_live, subscriber
from .activity import IOPub, ReplayLimits
from .environment import EnvironmentPolicy
from ..errors import KernelStartFailed
from .output import KernelOutput
from .process import start_time
from . import remote
from .records import DEAD, RUNNING, STARTING, Records
from .seed import Seed

log = logging.getLogger("kernels_gateway.supervisor")

# Unix socket paths are capped at 108 bytes (sun_path), NUL included; an IPC endpoint adds "-NNNNN".
MAX_SOCKET_PATH = 107
MAX_IPC_PREFIX = MAX_SOCKET_PATH - len("-65535")
# After a kernel_info reply, how long the iopub socket may take to hear the kernel before asking again.
IOPUB_PROOF_WAIT = 0.1
# Every launch, restarts included (jupyter_client keeps the launch arguments), gets pipes for its output.
OUTPUT_PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
# How often the end of a remote kernel shut down while its host did not answer is tried again.
END_RETRY_INTERVAL = 5.0


@dataclass(eq=False)
class Kernel:
    id: str
    name: str
    manager: AsyncKernelManager
    iopub: IOPub
    output: KernelOutput
    requested_env: dict[str, str] = field(default_factory=dict)
    connections: int = 0
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    started_at: float = field(default_factory=time.time)
    quick_deaths: int = 0
    watcher: asyncio.Task | None = None  # the iopub SUB socket
    keeper: asyncio.Task | None = None  # waits for the process to exit, then restarts it

    def model(self) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self.iopub.last_activity, timezone.utc)
        model = {
            "id": self.id,
            "name": self.name,
            "last_activity": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "execution_state": self.iopub.execution_state,
            "connections": self.connections,
        }
        if self.reason:
            model["reason"] = self.reason
        return model

    def connection_info(self) -> dict[str, Any]:
        info = dict(self.manager.get_connection_info())
        info["key"] = info["key"].decode()
        return info


class Launcher:
    def __init__(self, config: Config, seed: Seed | None, specs: KernelSpecManager, records: Records,
                 env: EnvironmentPolicy):
        self.config = config
        self.seed = seed  # code cells run in every new kernel of their language
        self.replay = ReplayLimits(max_bytes=config.replay_bytes, max_age=config.replay_age)
        self.specs = specs
        self.records = records
        self.env = env
        self.zmq = zmq.asyncio.Context()
        self.unended: dict[str, asyncio.Task] = {}  # remote kernels shut down while their host did not answer

    def kernel(self, kernel_id: str, name: str, manager: AsyncKernelManager, requested: dict[str, str]) -> Kernel:
        return Kernel(id=kernel_id, name=name, manager=manager, iopub=IOPub(kernel_id, self.replay),
                      output=KernelOutput(kernel_id), requested_env=requested)

    def launch_args(self, requested: dict[str, str]) -> dict[str, Any]:
        """What start_kernel gets, and what an adopted kernel's manager keeps for its restarts.
        independent: no JPY_PARENT_PID of ours, so the kernel does not exit with the supervisor."""
        return {"env": self.env.kernel(requested), "independent": True, **OUTPUT_PIPES}

    async def launch(self, name: str, requested: dict[str, str], pooled: bool = False,
                     kernel_id: str | None = None) -> Kernel:
        """A started kernel that has answered kernel_info and is recorded, not yet registered.

        Recorded `starting` before anything is launched: a supervisor that dies from then on leaves a
        record by which the next one finds the process and stops it. A record that cannot be written
        (a full disk) fails the start and leaves nothing behind."""
        kernel_id = kernel_id or str(uuid.uuid4())
        kernel = self.kernel(kernel_id, name, self._manager(kernel_id, name), requested)
        try:
            await self.save_record(kernel, STARTING, pooled)
            await kernel.manager.start_kernel(**self.launch_args(requested))
            if liveness.is_remote(kernel.manager.provisioner):  # its host and pid are known only now
                await self.save_record(kernel, STARTING, pooled)
            await self._follow_output(kernel)
            self.watch(kernel)
            await self._ready(kernel)
            await self.save_record(kernel, RUNNING, pooled)
        except BaseException as e:  # cancelled included: a half-started kernel must not be left running
            await self.discard(kernel)
            if isinstance(e, Exception):
                raise KernelStartFailed(f"Kernel {name} failed to start: {e}") from e
            raise
        return kernel

    async def restart_process(self, kernel: Kernel, now: bool) -> None:
        """A new process for the kernel (`now`: without asking the old one to shut down), ready and seeded."""
        before = kernel.connection_info()
        if now and not await liveness.ended_remote(kernel.manager.provisioner):
            raise KernelStartFailed(f"its host {remote.host_of(kernel.manager)} does not answer, and it may still run there")
        await kernel.manager.restart_kernel(now=now)
        if kernel.connection_info() != before:  # a remote kernel may come back on other ports or another host
            await self.stop_watching(kernel)
            self.watch(kernel)
        await self._follow_output(kernel)
        await self._ready(kernel)

    def watch(self, kernel: Kernel) -> None:
        """Follow the kernel's iopub (execution state, activity, replay) in a task of its own."""
        sub = subscriber(self.zmq, kernel.connection_info(), rcvhwm=0)
        kernel.watcher = asyncio.create_task(kernel.iopub.watch(sub), name=f"iopub-{kernel.id}")

    async def stop_watching(self, kernel: Kernel) -> None:
        if kernel.watcher:
            kernel.watcher.cancel()
            await asyncio.gather(kernel.watcher, return_exceptions=True)

    async def discard(self, kernel: Kernel) -> None:
        """Stop watching, then stop the process: shutdown request, SIGTERM, SIGKILL, each on a deadline.
        The kernel's keeper, if it has one, is stopped first by whoever keeps it."""
        await self.stop_watching(kernel)
        try:
            if kernel.manager.has_kernel:
                await kernel.manager.shutdown_kernel(now=not liveness.asked_to_shut_down(kernel.manager.provisioner))
            else:
                await kernel.manager.cleanup_resources()
        except Exception:
            log.exception("Kernel %s: shutdown failed; killing it", kernel.id)
            with contextlib.suppress(Exception):
                await kernel.manager.shutdown_kernel(now=True)
        ended = await liveness.ended_remote(kernel.manager.provisioner)  # at once for a local kernel
        await kernel.output.close()
        # An adopted kernel's manager did not write its connection file, so it would leave it (and its key).
        adoption.remove_files(Path(kernel.manager.connection_file))
        if ended:
            self.records.remove(kernel.id)
        else:
            log.warning("Kernel %s: its host %s does not answer; it is ended once it does",
                        kernel.id, remote.host_of(kernel.manager))
            self.end_later(await self.save_record(kernel, DEAD))

    def end_later(self, record: dict[str, Any]) -> None:
        """A remote kernel that may run on where its host does not answer: its record is kept, `dead` so
        that no supervisor adopts it, and its end is tried again until its host answers."""
        if record["id"] not in self.unended:
            self.unended[record["id"]] = asyncio.create_task(self._end_when_answered(record),
                                                             name=f"end-{record['id']}")

    async def _end_when_answered(self, record: dict[str, Any]) -> None:
        try:
            while await remote.end(record, self.specs) is False:
                await asyncio.sleep(END_RETRY_INTERVAL)
            log.info("Kernel %s ended on its host", record["id"])
            self.records.remove(record["id"])
        finally:
            self.unended.pop(record["id"], None)

    async def stop_ending(self) -> None:
        """Stop trying to end kernels whose hosts do not answer; their records stay for the next supervisor."""
        tasks = list(self.unended.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def save_record(self, kernel: Kernel, state: str, pooled: bool = False) -> dict[str, Any]:
        provisioner = kernel.manager.provisioner
        info = await provisioner.get_provisioner_info() if provisioner else None
        pid = liveness.local_pid(provisioner, info)
        record = {
            "id": kernel.id,
            "state": state,
            "pooled": pooled,
            "name": kernel.name,
            "connection_file": kernel.manager.connection_file,
            "env": kernel.requested_env,
            "provisioner": info,
            "start_time": start_time(pid) if pid else None,
        }
        self.records.save(kernel.id, record)
        return record

    def close(self) -> None:
        self.zmq.destroy(linger=0)

    async def _follow_output(self, kernel: Kernel) -> None:
        """A new process of the kernel runs: log what it prints."""
        await kernel.output.follow(getattr(kernel.manager.provisioner, "process", None))

    def _manager(self, kernel_id: str, name: str) -> AsyncKernelManager:
        manager = AsyncKernelManager(
            kernel_name=name,
            kernel_id=kernel_id,
            kernel_spec_manager=self.specs,
            transport=self.config.transport,
            connection_file=str(self.config.runtime_dir / f"kernel-{kernel_id}.json"),
            shutdown_wait_time=self.config.shutdown_wait,
        )
        manager.ip = self._kernel_ip(kernel_id)
        remote.prepare(manager)
        return manager

    def _kernel_ip(self, kernel_id: str) -> str:
        if self.config.transport == "tcp":
            return "127.0.0.1"
        prefix = str(self.config.runtime_dir / f"k-{kernel_id[:8]}")
        if len(prefix.encode()) > MAX_IPC_PREFIX:
            raise KernelStartFailed(
                f"Runtime directory {self.config.runtime_dir} is too deep for IPC sockets "
                f"(Unix socket paths are limited to {MAX_SOCKET_PATH} bytes); choose a shorter --runtime-dir"
            )
        return prefix

    async def _ready(self, kernel: Kernel) -> None:
        """Answering, and seeded if a seed fits its language: on every start and every restart, so that
        a restarted kernel is what a new one would be. A kernel whose seed fails is killed, never handed out."""
        await self._wait_ready(kernel)
        seed = self.seed
        if seed and seed.fits(kernel.manager.kernel_spec.language):
            try:
                await seed.run(kernel.manager.session, kernel.connection_info(), self.zmq, self.config.kernel_start_timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await kernel.manager.signal_kernel(signal.SIGKILL)
                raise

    async def _wait_ready(self, kernel: Kernel) -> None:
        """Ask for kernel_info until a reply comes back on shell and our iopub socket has heard from
        the kernel (kernel_protocol.prove_live): then state tracking is live. One request is outstanding
        at a time (ZMQ queues it until the kernel binds), so no stray replies follow.
        """
        kernel.iopub.heard.clear()
        shell = self.zmq.socket(zmq.DEALER)
        shell.linger = 0
        shell.reconnect_ivl = KERNEL_RECONNECT_MS
        shell.connect(kernel_url(kernel.connection_info(), "shell"))

        async def ask() -> None:
            kernel.manager.session.send(shell, "kernel_info_request")
            while not await shell.poll(1000):
                if not await kernel.manager.is_alive():
                    raise KernelStartFailed("the kernel process exited during start-up")
            await shell.recv_multipart()

        try:
            async with asyncio.timeout(self.config.kernel_start_timeout):
                await prove_live(kernel.iopub.heard, ask, IOPUB_PROOF_WAIT)
        except TimeoutError:
            raise KernelStartFailed(f"no reply within {self.config.kernel_start_timeout:g} s") from None
        finally:
            shell.close()
