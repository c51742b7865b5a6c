"""Kernel lifecycle: start, watch, restart on death, interrupt, restart, cull, shut down, adopt.
The one registry of running kernels.

Each kernel is driven by jupyter_client's AsyncKernelManager, so kernelspecs that name a provisioner
are honoured. Kernels run in their own sessions with no parent to watch, so they outlive a supervisor
crash; a record per kernel, written before each process is launched, lets the next supervisor adopt
them (adoption.py). Each kernel has a keeper task that waits for its process to exit and restarts it,
a bounded number of times, when nobody asked it to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel

from . import adoption, liveness, metrics, remote
from .activity import IOPub, ReplayLimits, subscriber
from .environment import EnvironmentPolicy
from .errors import KernelLimit, KernelNotFound, KernelSpecNotFound, KernelStartFailed
from .output import KernelOutput
from .pool import WarmPool
from .process import kill_group, lower_priority, start_time
from .records import DEAD, KERNEL_ID, RESTARTING, RUNNING, STARTING, Records
from .replay import Missed
from .seed import Seed
from .wire import KERNEL_RECONNECT_MS, kernel_url

log = logging.getLogger("kernels_gateway.supervisor")

# Unix socket paths are capped at 108 bytes (sun_path), NUL included; an IPC endpoint adds "-NNNNN".
MAX_SOCKET_PATH = 107
MAX_IPC_PREFIX = MAX_SOCKET_PATH - len("-65535")
# After a kernel_info reply, how long the iopub socket may take to hear the kernel before asking again.
IOPUB_PROOF_WAIT = 0.1
# jupyter_client's shutdown takes at most the shutdown wait, then up to 5 s to see a SIGKILLed process go.
SHUTDOWN_MARGIN = 6.0
# Every launch, restarts included (jupyter_client keeps the launch arguments), gets pipes for its output.
OUTPUT_PIPES = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


def _on_host(kernel: Kernel) -> str:
    """Where a remote kernel runs, for its log lines; nothing for a local one."""
    host = remote.host_of(kernel.manager)
    return "" if host == "local" else f" on {host}"


def valid_kernel_id(kernel_id: Any) -> str:
    if not isinstance(kernel_id, str) or not KERNEL_ID.fullmatch(kernel_id):
        raise KernelNotFound(str(kernel_id)[:100])
    return kernel_id


@dataclass(frozen=True)
class KernelSettings:
    runtime_dir: Path
    default_kernel_name: str = ""
    force_kernel_name: str = ""
    transport: str = "ipc"
    max_kernels: int = 0
    env_allow: frozenset[str] = frozenset()
    env_inherit: frozenset[str] = frozenset()  # empty: inherit every name but the secrets
    secret_env: frozenset[str] = frozenset()
    start_timeout: float = 60.0
    shutdown_wait: float = 5.0
    restart_limit: int = 5
    stable_after: float = 10.0
    replay: ReplayLimits = ReplayLimits()
    cull_idle_timeout: float = 0.0
    cull_interval: float = 300.0
    cull_connected: bool = False
    cull_busy: bool = False
    pool: tuple[tuple[str, int], ...] = ()  # warm kernels per kernelspec
    seed: Seed | None = None  # code cells run in every new kernel of their language
    kernel_nice: int = 10  # added to each local kernel's scheduling niceness


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


Listener = Callable[[dict[str, Any]], None]


class Kernels:
    def __init__(self, settings: KernelSettings):
        self.settings = settings
        self.specs = KernelSpecManager()
        self.records = Records(settings.runtime_dir)
        self.env = EnvironmentPolicy(settings.env_allow, settings.env_inherit, settings.secret_env)
        self.listeners: set[Listener] = set()
        self._kernels: dict[str, Kernel] = {}
        self._starting = 0
        self._zmq = zmq.asyncio.Context()
        self.pool = WarmPool(dict(settings.pool), self._launch_spare, self._discard)

    # -- kernelspecs -------------------------------------------------------------------------

    @property
    def default_name(self) -> str:
        return self.settings.default_kernel_name or NATIVE_KERNEL_NAME

    def kernelspecs(self) -> dict[str, Any]:
        specs = {}
        for name, found in self.specs.get_all_specs().items():
            folder = Path(found["resource_dir"])
            files = [f for f in ("kernel.js", "kernel.css") if (folder / f).is_file()]
            files += sorted(logo.name for logo in folder.glob("logo-*"))
            specs[name] = {"name": name, "spec": found["spec"], "resource_dir": str(folder), "resources": files}
        return {"default": self.default_name, "kernelspecs": specs}

    # -- the registry ------------------------------------------------------------------------

    def get(self, kernel_id: Any) -> Kernel:
        try:
            return self._kernels[valid_kernel_id(kernel_id)]
        except KeyError:
            raise KernelNotFound(kernel_id) from None

    def list(self) -> Iterable[Kernel]:
        return list(self._kernels.values())

    async def start(self, name: str | None = None, env: Mapping[str, str] | None = None) -> Kernel:
        # Lower case, as jupyter_client names kernelspecs: "Python3" is python3, warm kernels included.
        name = (self.settings.force_kernel_name or name or self.default_name).lower()
        try:
            spec = self.specs.get_kernel_spec(name)
        except NoSuchKernel:
            raise KernelSpecNotFound(name) from None
        requested = self.env.requested(env or {})
        remote.check_env(spec, requested)
        limit = self.settings.max_kernels
        # Counting starts in flight before the first await keeps a burst of starts from overshooting.
        if limit and len(self._kernels) + self._starting >= limit:
            raise KernelLimit(f"A max kernels limit of {limit} has been set and reached")
        self._starting += 1
        try:
            with metrics.kernel_start(name):
                # A warm kernel has the supervisor's environment; a request that sets env needs a cold start.
                kernel = None if requested else await self.pool.take(name)
                if kernel:
                    await self._record_or_discard(kernel)  # no longer a warm spare
                else:
                    kernel = await self._launch(name, requested)
                self._register(kernel)
        finally:
            self._starting -= 1
        log.info("Kernel started: %s%s", kernel.id, _on_host(kernel))
        return kernel

    async def _launch(self, name: str, requested: dict[str, str], pooled: bool = False,
                      kernel_id: str | None = None) -> Kernel:
        """A started kernel that has answered kernel_info and is recorded, not yet registered.

        Recorded `starting` before anything is launched: a supervisor that dies from then on leaves a
        record by which the next one finds the process and stops it. A record that cannot be written
        (a full disk) fails the start and leaves nothing behind."""
        kernel_id = kernel_id or str(uuid.uuid4())
        kernel = Kernel(id=kernel_id, name=name, manager=self._manager(kernel_id, name),
                        iopub=IOPub(kernel_id, self.settings.replay), output=KernelOutput(kernel_id),
                        requested_env=requested)
        try:
            await self._save_record(kernel, STARTING, pooled)
            # independent: no JPY_PARENT_PID of ours, so the kernel does not exit with the supervisor.
            await kernel.manager.start_kernel(env=self.env.kernel(requested), independent=True, **OUTPUT_PIPES)
            if liveness.is_remote(kernel.manager.provisioner):  # its host and pid are known only now
                await self._save_record(kernel, STARTING, pooled)
            await self._follow_output(kernel)
            kernel.watcher = asyncio.create_task(self._watch_iopub(kernel), name=f"iopub-{kernel_id}")
            await self._ready(kernel)
            await self._save_record(kernel, RUNNING, pooled)
        except BaseException as e:  # cancelled included: a half-started kernel must not be left running
            await self._discard(kernel)
            if isinstance(e, Exception):
                raise KernelStartFailed(f"Kernel {name} failed to start: {e}") from e
            raise
        return kernel

    async def _launch_spare(self, name: str) -> Kernel:
        return await self._launch(name, {}, pooled=True)

    async def _record_or_discard(self, kernel: Kernel) -> None:
        try:
            await self._save_record(kernel, RUNNING)
        except OSError as e:
            await self._discard(kernel)
            raise KernelStartFailed(f"Kernel {kernel.name} failed to start: {e}") from e

    def _register(self, kernel: Kernel) -> None:
        self._kernels[kernel.id] = kernel
        kernel.keeper = asyncio.create_task(self._keep(kernel), name=f"keeper-{kernel.id}")

    async def _follow_output(self, kernel: Kernel) -> None:
        """A new process of the kernel runs: log what it prints, and let the gateway go first."""
        process = getattr(kernel.manager.provisioner, "process", None)
        await kernel.output.follow(process)
        if process is not None and self.settings.kernel_nice:
            lower_priority(process.pid, self.settings.kernel_nice)

    def _manager(self, kernel_id: str, name: str) -> AsyncKernelManager:
        manager = AsyncKernelManager(
            kernel_name=name,
            kernel_id=kernel_id,
            kernel_spec_manager=self.specs,
            transport=self.settings.transport,
            connection_file=str(self.settings.runtime_dir / f"kernel-{kernel_id}.json"),
            shutdown_wait_time=self.settings.shutdown_wait,
        )
        manager.ip = self._kernel_ip(kernel_id)
        return manager

    def _kernel_ip(self, kernel_id: str) -> str:
        if self.settings.transport == "tcp":
            return "127.0.0.1"
        prefix = str(self.settings.runtime_dir / f"k-{kernel_id[:8]}")
        if len(prefix.encode()) > MAX_IPC_PREFIX:
            raise KernelStartFailed(
                f"Runtime directory {self.settings.runtime_dir} is too deep for IPC sockets "
                f"(Unix socket paths are limited to {MAX_SOCKET_PATH} bytes); choose a shorter --runtime-dir"
            )
        return prefix

    async def _ready(self, kernel: Kernel) -> None:
        """Answering, and seeded if a seed fits its language: on every start and every restart, so that
        a restarted kernel is what a new one would be. A kernel whose seed fails is killed, never handed out."""
        await self._wait_ready(kernel)
        seed = self.settings.seed
        if seed and seed.fits(kernel.manager.kernel_spec.language):
            try:
                await seed.run(kernel.manager.session, kernel.connection_info(), self._zmq, self.settings.start_timeout)
            except BaseException:
                with contextlib.suppress(Exception):
                    await kernel.manager.signal_kernel(signal.SIGKILL)
                raise

    async def _wait_ready(self, kernel: Kernel) -> None:
        """Ask for kernel_info until a reply comes back on shell and our iopub socket has heard from
        the kernel.

        The iopub half matters: a SUB socket misses what is published before its subscription has
        propagated, so only a message that came through proves that state tracking is live. A kernel
        with an XPUB iopub socket greets the subscription itself; an older one proves it with the
        status messages around a kernel_info request, hence the request again after a short wait.
        One request is outstanding at a time (ZMQ queues it until the kernel binds), so no stray
        replies follow.
        """
        kernel.iopub.heard.clear()
        shell = self._zmq.socket(zmq.DEALER)
        shell.linger = 0
        shell.reconnect_ivl = KERNEL_RECONNECT_MS
        shell.connect(kernel_url(kernel.connection_info(), "shell"))
        try:
            async with asyncio.timeout(self.settings.start_timeout):
                while True:
                    kernel.manager.session.send(shell, "kernel_info_request")
                    while not await shell.poll(1000):
                        if not await kernel.manager.is_alive():
                            raise KernelStartFailed("the kernel process exited during start-up")
                    await shell.recv_multipart()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kernel.iopub.heard.wait(), IOPUB_PROOF_WAIT)
                        kernel.iopub.execution_state = "idle"
                        return
        except TimeoutError:
            raise KernelStartFailed(f"no reply within {self.settings.start_timeout:g} s") from None
        finally:
            shell.close()

    async def _watch_iopub(self, kernel: Kernel) -> None:
        await kernel.iopub.watch(subscriber(self._zmq, kernel.connection_info(), rcvhwm=0))

    # -- death and automatic restart -----------------------------------------------------------

    async def _keep(self, kernel: Kernel) -> None:
        """Wait for the kernel's process to exit; restart it unless its restarts keep failing.
        Nothing ends this watch but the kernel's end: whatever fails is logged, and the watch goes on."""
        while True:
            try:
                await self._process_exit(kernel)
                async with kernel.lock:
                    if kernel.id not in self._kernels or not await self._recover(kernel):
                        return
            except Exception:
                log.exception("Kernel %s: watching it failed; watching it again", kernel.id)
                await asyncio.sleep(liveness.POLL_INTERVAL)

    async def _process_exit(self, kernel: Kernel) -> None:
        await liveness.until_exit(kernel.manager)

    async def _recover(self, kernel: Kernel) -> bool:
        """Restart a kernel that died; False once it is declared dead."""
        lived = time.time() - kernel.started_at
        kernel.quick_deaths = 0 if lived > self.settings.stable_after else kernel.quick_deaths + 1
        if kernel.quick_deaths > self.settings.restart_limit:
            kernel.iopub.execution_state = "dead"
            kernel.reason = f"the kernel died {kernel.quick_deaths} times in a row within {self.settings.stable_after:g} s of starting"
            log.error("Kernel %s is dead: %s", kernel.id, kernel.reason)
            self._emit(kernel, execution_state="dead")
            await self._keep_record(kernel, DEAD)
            return False
        log.warning("Kernel %s died%s; restarting it", kernel.id, _on_host(kernel))
        kernel.iopub.execution_state = "restarting"
        self._emit(kernel, execution_state="restarting")
        kernel.started_at = time.time()
        spare = None if kernel.requested_env else await self.pool.take(kernel.name)
        # Recorded before the new process exists: a supervisor that dies meanwhile leaves a record by
        # which the next one finds that process, or starts one.
        await self._keep_record(kernel, RESTARTING)
        try:
            if spare:
                await self._swap_in(kernel, spare)
            else:
                await self._restart_process(kernel, now=True)
        except Exception as e:
            log.error("Kernel %s failed to restart: %s", kernel.id, e)
            await self._keep_record(kernel, RESTARTING)
            return True  # its process is gone or hopeless: the keeper comes straight back here
        await self._keep_record(kernel, RUNNING)
        metrics.KERNEL_RESTARTS.labels(kernel.name, "automatic").inc()
        log.info("Kernel restarted: %s%s", kernel.id, _on_host(kernel))
        self._emit(kernel, connection_info=kernel.connection_info())
        return True

    async def _restart_process(self, kernel: Kernel, now: bool) -> None:
        """A new process for the kernel (`now`: without asking the old one to shut down), ready and seeded."""
        before = kernel.connection_info()
        if now and not await liveness.ended_remote(kernel.manager):
            raise KernelStartFailed(f"its host {remote.host_of(kernel.manager)} does not answer, and it may still run there")
        await kernel.manager.restart_kernel(now=now)
        if kernel.connection_info() != before:  # a remote kernel may come back on other ports or another host
            await self._rewatch_iopub(kernel)
        await self._follow_output(kernel)
        await self._ready(kernel)

    async def _rewatch_iopub(self, kernel: Kernel) -> None:
        if kernel.watcher:
            kernel.watcher.cancel()
            await asyncio.gather(kernel.watcher, return_exceptions=True)
        kernel.watcher = asyncio.create_task(self._watch_iopub(kernel), name=f"iopub-{kernel.id}")

    async def _swap_in(self, kernel: Kernel, spare: Kernel) -> None:
        """Give a dead kernel's id a warm kernel's process: faster than starting one. Workers learn the
        new connection info from the event that follows every restart."""
        dead = kernel.manager
        with contextlib.suppress(Exception):
            await dead.shutdown_kernel(now=True)  # reaps it
        adoption.remove_files(Path(dead.connection_file))
        for watcher in (kernel.watcher, spare.watcher):
            if watcher:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        await kernel.output.close()
        kernel.manager, kernel.output = spare.manager, spare.output
        kernel.output.kernel_id = kernel.id
        # The kernel's record names the spare's process before the spare's record goes: a crash between
        # the two leaves two records of one process, and adoption keeps the kernel's.
        await self._keep_record(kernel, RUNNING)
        self.records.remove(spare.id)
        kernel.iopub.execution_state = "idle"  # the spare answered kernel_info and has done nothing since
        kernel.watcher = asyncio.create_task(self._watch_iopub(kernel), name=f"iopub-{kernel.id}")

    def _emit(self, kernel: Kernel, **event: Any) -> None:
        event["kernel_id"] = kernel.id
        for listener in list(self.listeners):
            listener(event)

    async def _stop_keeping(self, kernel: Kernel) -> None:
        if kernel.keeper and kernel.keeper is not asyncio.current_task():
            kernel.keeper.cancel()
            await asyncio.gather(kernel.keeper, return_exceptions=True)
        kernel.keeper = None

    # -- operations on one kernel --------------------------------------------------------------

    async def interrupt(self, kernel_id: str) -> None:
        kernel = self.get(kernel_id)
        async with kernel.lock:
            await kernel.manager.interrupt_kernel()
        log.info("Kernel interrupted: %s", kernel_id)

    async def restart(self, kernel_id: str) -> Kernel:
        kernel = self.get(kernel_id)
        async with kernel.lock:
            self.get(kernel_id)  # it may have been shut down while we waited for the lock
            now = not liveness.asked_to_shut_down(kernel.manager.provisioner)
            if now and not await liveness.ended_remote(kernel.manager):  # nothing changed: it may run on
                raise KernelStartFailed(f"Kernel {kernel_id} cannot be restarted: its host "
                                        f"{remote.host_of(kernel.manager)} does not answer")
            await self._stop_keeping(kernel)
            kernel.iopub.execution_state = "restarting"
            kernel.started_at = time.time()
            # Workers hold what clients send until the new process is proven reachable (no status:
            # clients asked for this restart, and `restarting` would tell them the kernel died).
            self._emit(kernel, hold=True)
            await self._keep_record(kernel, RESTARTING)
            try:
                await self._restart_process(kernel, now=now)
            except Exception as e:
                kernel.iopub.execution_state = "dead"
                kernel.reason = f"restart failed: {e}"
                # The record names whatever process the attempt left (a remote one included), and the
                # next supervisor starts the kernel again from it.
                await self._keep_record(kernel, RESTARTING)
                self._emit(kernel, execution_state="dead")
                raise KernelStartFailed(f"Kernel {kernel_id} failed to restart: {e}") from e
            finally:
                kernel.keeper = asyncio.create_task(self._keep(kernel), name=f"keeper-{kernel_id}")
            kernel.reason = ""
            await self._keep_record(kernel, RUNNING)
            self._emit(kernel, connection_info=kernel.connection_info())
        metrics.KERNEL_RESTARTS.labels(kernel.name, "request").inc()
        log.info("Kernel restarted: %s", kernel_id)
        return kernel

    async def shutdown(self, kernel_id: str, why: str = "shutdown") -> None:
        kernel = self.get(kernel_id)
        # Gone from the registry at once: a second DELETE or a waiting restart sees KernelNotFound.
        del self._kernels[kernel_id]
        async with kernel.lock:
            await self._discard(kernel)
        log.info("Kernel %s: %s", why, kernel_id)

    async def _discard(self, kernel: Kernel) -> None:
        """Stop watching, then stop the process: shutdown request, SIGTERM, SIGKILL, each on a deadline."""
        await self._stop_keeping(kernel)
        if kernel.watcher:
            kernel.watcher.cancel()
            await asyncio.gather(kernel.watcher, return_exceptions=True)
        try:
            if kernel.manager.has_kernel:
                await kernel.manager.shutdown_kernel(now=not liveness.asked_to_shut_down(kernel.manager.provisioner))
            else:
                await kernel.manager.cleanup_resources()
        except Exception:
            log.exception("Kernel %s: shutdown failed; killing it", kernel.id)
            with contextlib.suppress(Exception):
                await kernel.manager.shutdown_kernel(now=True)
        await kernel.output.close()
        # An adopted kernel's manager did not write its connection file, so it would leave it (and its key).
        adoption.remove_files(Path(kernel.manager.connection_file))
        self.records.remove(kernel.id)

    # -- connections and replay ----------------------------------------------------------------

    @property
    def zmq_context(self) -> zmq.asyncio.Context:
        return self._zmq

    async def connection_opened(self, kernel_id: str, session_id: str | None = None, connection: str = "",
                                progress: Callable[[], str | None] | None = None, replay: bool = True) -> Missed:
        """Count a websocket in; what its session missed while away, if it was here before."""
        kernel = self.get(kernel_id)
        kernel.connections += 1
        if not session_id:
            return Missed([], False)
        return await kernel.iopub.replay.opened(session_id, connection, progress, replay)

    def connection_closed(self, kernel_id: str, session_id: str | None = None, connection: str = "",
                          last_msg_id: str | None = None) -> None:
        kernel = self._kernels.get(kernel_id)
        if kernel:
            kernel.connections = max(0, kernel.connections - 1)
            if session_id:
                kernel.iopub.replay.closed(session_id, connection, last_msg_id)

    # -- culling -------------------------------------------------------------------------------

    async def cull(self) -> None:
        """Every cull interval, shut down kernels idle for longer than the timeout, and dead ones.
        `connected` and `busy` kernels count as idle only when the options say so."""
        settings = self.settings
        while True:
            await asyncio.sleep(settings.cull_interval)
            now = time.time()
            for kernel in self.list():
                state = kernel.iopub.execution_state
                idle = now - kernel.iopub.last_activity > settings.cull_idle_timeout
                if state == "dead" or (
                    idle
                    and (settings.cull_busy or state != "busy")
                    and (settings.cull_connected or kernel.connections == 0)
                ):
                    log.warning("Culling kernel %s (%s, %d connections, idle %.0f s)", kernel.id, state,
                                kernel.connections, now - kernel.iopub.last_activity)
                    with contextlib.suppress(KernelNotFound):
                        await self.shutdown(kernel.id, why="culled")
                        metrics.KERNEL_CULLS.labels(kernel.name).inc()

    # -- records and adoption ------------------------------------------------------------------

    async def _save_record(self, kernel: Kernel, state: str, pooled: bool = False) -> None:
        provisioner = kernel.manager.provisioner
        info = await provisioner.get_provisioner_info() if provisioner else None
        pid = liveness.local_pid(provisioner, info)
        self.records.save(kernel.id, {
            "id": kernel.id,
            "state": state,
            "pooled": pooled,
            "name": kernel.name,
            "connection_file": kernel.manager.connection_file,
            "env": kernel.requested_env,
            "provisioner": info,
            "start_time": start_time(pid) if pid else None,
        })

    async def _keep_record(self, kernel: Kernel, state: str) -> None:
        """Record a registered kernel's new state. A record that cannot be written (a full disk) is
        logged and the kernel carries on; the next save writes it whole."""
        try:
            await self._save_record(kernel, state)
        except OSError as e:
            log.error("Kernel %s: its record could not be written (%s)", kernel.id, e)

    async def adopt_all(self) -> int:
        """Take over the kernels a previous supervisor left running, stop those it was still starting,
        start again those it was restarting, and forget those that died meanwhile."""
        records = self.records.load_all()
        # A warm kernel that took over a dead kernel's id just before a crash is named by both records.
        claimed = {r.get("connection_file") for r in records if not r.get("pooled")}
        adopted = 0
        for record in records:
            if record.get("pooled") and record.get("connection_file") in claimed:
                self.records.remove(str(record.get("id")))
                continue
            try:
                kernel = await self._adopt(record)
            except Exception as e:
                log.warning("Kernel %s cannot be adopted (%s); forgetting it", record.get("id"), e)
                kernel = None
            if kernel is None:
                adoption.end_kernel(self.records, record, self.settings.runtime_dir)
            elif record.get("pooled"):
                await self.shutdown(kernel.id, why="shutdown (unused warm kernel)")
            else:
                adopted += 1
                log.info("Kernel adopted: %s", kernel.id)
        log.info("Kernel records read: %d kernel(s) adopted", adopted)
        return adopted

    async def _adopt(self, record: dict[str, Any]) -> Kernel | None:
        """The record's kernel, registered and watched; None when there is nothing to adopt."""
        kernel_id, state = valid_kernel_id(record["id"]), record.get("state", RUNNING)
        launch_args = {"env": self.env.kernel(record["env"]), "independent": True, **OUTPUT_PIPES}
        manager = await remote.adopted_manager(record, self.specs, self.settings.shutdown_wait, launch_args)
        if manager is not None:  # a kernel on another host: only its provisioner can find it
            if state == RUNNING and await liveness.alive(manager):
                return self._adopted(record, manager)
            log.warning("Kernel %s on %s, recorded %s, is not running; ending what is left of it",
                        kernel_id, remote.host_of(manager), state)
            await remote.end(record, self.specs)
            return await self._start_again(record) if state == RESTARTING and not record.get("pooled") else None
        pids = adoption.live_processes(record, self.settings.runtime_dir)
        if state not in (RUNNING, RESTARTING) or (pids is not None and len(pids) != 1):
            if state != RESTARTING or record.get("pooled"):
                return None  # never started, or exited (its pid may now name another process): ended
            for pid in pids or []:
                kill_group(pid)
            return await self._start_again(record)
        manager = await adoption.adopted_manager(
            record, pids[0] if pids else None, self.specs, self.settings.shutdown_wait, launch_args)
        if not await manager.is_alive():
            return None
        return self._adopted(record, manager)

    def _adopted(self, record: dict[str, Any], manager: AsyncKernelManager) -> Kernel:
        kernel_id = record["id"]
        kernel = Kernel(id=kernel_id, name=record["name"], manager=manager, iopub=IOPub(kernel_id, self.settings.replay),
                        output=KernelOutput(kernel_id), requested_env=record["env"])
        kernel.iopub.execution_state = "unknown"  # until its next status message says
        self._kernels[kernel_id] = kernel
        kernel.watcher = asyncio.create_task(self._watch_iopub(kernel), name=f"iopub-{kernel_id}")
        kernel.keeper = asyncio.create_task(self._keep(kernel), name=f"keeper-{kernel_id}")
        return kernel

    async def _start_again(self, record: dict[str, Any]) -> Kernel:
        """A kernel whose restart a crash interrupted before its new process ran: started anew, same id."""
        connection_file = adoption.connection_file_of(record, self.settings.runtime_dir)
        if connection_file:
            adoption.remove_files(connection_file)
        kernel = await self._launch(record["name"], record["env"], kernel_id=record["id"])
        self._register(kernel)
        return kernel

    # -- the end -------------------------------------------------------------------------------

    async def shutdown_all(self) -> None:
        """Every kernel at once, each step on a deadline; then whatever a record of ours still names is killed.
        The supervisor stops listening to the kernels first, so no flood of output can slow this down."""
        kernels = self.list()
        for kernel in kernels:
            if kernel.watcher:
                kernel.watcher.cancel()
        await asyncio.gather(*(k.watcher for k in kernels if k.watcher), return_exceptions=True)
        try:
            async with asyncio.timeout(self.settings.shutdown_wait + SHUTDOWN_MARGIN):
                await asyncio.gather(
                    self.pool.close(), *(self.shutdown(k.id) for k in kernels), return_exceptions=True
                )
        except TimeoutError:
            log.error("Kernels did not all shut down within %g s; killing them", self.settings.shutdown_wait + SHUTDOWN_MARGIN)
        for kernel_id in list(self.records.ours):
            if record := self.records.load(kernel_id):
                await remote.end(record, self.specs)
                adoption.end_kernel(self.records, record, self.settings.runtime_dir)

    async def release(self) -> None:
        """Stop watching every kernel and leave it running, with its record and files, for the next
        supervisor to adopt (a hand-over). Warm kernels are not handed over."""
        await self.pool.close()
        for kernel in self._kernels.values():
            await self._stop_keeping(kernel)
            if kernel.watcher:
                kernel.watcher.cancel()
                await asyncio.gather(kernel.watcher, return_exceptions=True)
            await kernel.output.close(timeout=0)
            # jupyter_client removes the connection file it wrote when the manager goes; the kernel needs it.
            kernel.manager._connection_file_written = False
        self._kernels.clear()

    def close(self) -> None:
        self._zmq.destroy(linger=0)
