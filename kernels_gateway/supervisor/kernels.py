"""The one registry of running kernels and their lifecycle: start, interrupt, restart, shut down, and
the keeper that restarts a kernel whose process died, a bounded number of times.

The registry is the one owner of a kernel's lifecycle states (`_become`): restarting, dead, unknown
once adopted, idle once a new process is proven ready. What the kernel itself reports (busy, idle)
is tracked by its iopub watch (activity.py). Launching is the launcher's (launcher.py), adoption is
adoption.py's, culling culler.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq.asyncio
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel

from ..config import Config

from . import adoption, liveness, metrics, remote
from .environment import EnvironmentPolicy
from ..errors import KernelLimit, KernelNotFound, KernelSpecNotFound, KernelStartFailed
from .launcher import Kernel, Launcher
from .pool import WarmPool
from .records import DEAD, RESTARTING, RUNNING, Records, valid_kernel_id
from .replay import Missed
from .seed import Seed

log = logging.getLogger("kernels_gateway.supervisor")

STABLE_AFTER = 10.0  # seconds a kernel must live for its death not to count against --restart-limit
# jupyter_client's shutdown takes at most the shutdown wait, then up to 5 s to see a SIGKILLed process go.
SHUTDOWN_MARGIN = 6.0


Listener = Callable[[dict[str, Any]], None]


def _on_host(kernel: Kernel) -> str:
    """Where a remote kernel runs, for its log lines; nothing for a local one."""
    host = remote.host_of(kernel.manager)
    return "" if host == "local" else f" on {host}"


class Kernels:
    def __init__(self, config: Config, seed: Seed | None = None):
        self.config = config
        self.specs = KernelSpecManager()
        self.records = Records(config.runtime_dir)
        self.env = EnvironmentPolicy.of(config)
        self.listeners: set[Listener] = set()
        self._kernels: dict[str, Kernel] = {}
        self._starting = 0
        self.launcher = Launcher(config, seed, self.specs, self.records, self.env)
        self.pool = WarmPool(dict(config.pool_sizes), self.launcher)

    # -- kernelspecs -------------------------------------------------------------------------

    @property
    def default_name(self) -> str:
        return self.config.default_kernel_name or NATIVE_KERNEL_NAME

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
        name = (self.config.force_kernel_name or name or self.default_name).lower()
        try:
            spec = self.specs.get_kernel_spec(name)
        except NoSuchKernel:
            raise KernelSpecNotFound(name) from None
        requested = self.env.requested(env or {})
        remote.check_env(spec, requested)
        limit = self.config.max_kernels
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
                    kernel = await self.launcher.launch(name, requested)
                self.register(kernel)
        finally:
            self._starting -= 1
        log.info("Kernel started: %s%s", kernel.id, _on_host(kernel))
        return kernel

    async def _record_or_discard(self, kernel: Kernel) -> None:
        try:
            await self.launcher.save_record(kernel, RUNNING)
        except OSError as e:
            await self.launcher.discard(kernel)
            raise KernelStartFailed(f"Kernel {kernel.name} failed to start: {e}") from e

    def register(self, kernel: Kernel, adopted: bool = False) -> None:
        """A launched kernel (or an adopted one, whose state is unknown until its next status message
        says) joins the registry and gets its keeper."""
        self._become(kernel, "unknown" if adopted else "idle")
        self._kernels[kernel.id] = kernel
        kernel.keeper = asyncio.create_task(self._keep(kernel), name=f"keeper-{kernel.id}")

    def _become(self, kernel: Kernel, state: str, reason: str | None = None, announce: bool = False) -> None:
        """The one place that moves a kernel through its lifecycle states; `announce` tells the workers,
        which pass the state on to the kernel's clients."""
        kernel.iopub.execution_state = state
        if reason is not None:
            kernel.reason = reason
        if announce:
            self._emit(kernel, execution_state=state)

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
        kernel.quick_deaths = 0 if lived > STABLE_AFTER else kernel.quick_deaths + 1
        if kernel.quick_deaths > self.config.restart_limit:
            reason = f"the kernel died {kernel.quick_deaths} times in a row within {STABLE_AFTER:g} s of starting"
            log.error("Kernel %s is dead: %s", kernel.id, reason)
            self._become(kernel, "dead", reason, announce=True)
            await self._keep_record(kernel, DEAD)
            return False
        log.warning("Kernel %s died%s; restarting it", kernel.id, _on_host(kernel))
        self._become(kernel, "restarting", announce=True)
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
        await self.launcher.restart_process(kernel, now)
        self._become(kernel, "idle")  # proven ready, and seeded

    async def _swap_in(self, kernel: Kernel, spare: Kernel) -> None:
        """Give a dead kernel's id a warm kernel's process: faster than starting one. Workers learn the
        new connection info from the event that follows every restart."""
        dead = kernel.manager
        with contextlib.suppress(Exception):
            await dead.shutdown_kernel(now=True)  # reaps it
        adoption.remove_files(Path(dead.connection_file))
        await self.launcher.stop_watching(kernel)
        await self.launcher.stop_watching(spare)
        await kernel.output.close()
        kernel.manager, kernel.output = spare.manager, spare.output
        kernel.output.kernel_id = kernel.id
        # The kernel's record names the spare's process before the spare's record goes: a crash between
        # the two leaves two records of one process, and adoption keeps the kernel's.
        await self._keep_record(kernel, RUNNING)
        self.records.remove(spare.id)
        self._become(kernel, "idle")  # the spare answered kernel_info and has done nothing since
        self.launcher.watch(kernel)

    def _emit(self, kernel: Kernel, **event: Any) -> None:
        event["kernel_id"] = kernel.id
        for listener in list(self.listeners):
            listener(event)

    async def _stop_keeping(self, kernel: Kernel) -> None:
        if kernel.keeper and kernel.keeper is not asyncio.current_task():
            kernel.keeper.cancel()
            await asyncio.gather(kernel.keeper, return_exceptions=True)
        kernel.keeper = None

    async def _keep_record(self, kernel: Kernel, state: str) -> None:
        """Record a registered kernel's new state. A record that cannot be written (a full disk) is
        logged and the kernel carries on; the next save writes it whole."""
        try:
            await self.launcher.save_record(kernel, state)
        except OSError as e:
            log.error("Kernel %s: its record could not be written (%s)", kernel.id, e)

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
            if now and not await liveness.ended_remote(kernel.manager.provisioner):  # nothing changed: it may run on
                raise KernelStartFailed(f"Kernel {kernel_id} cannot be restarted: its host "
                                        f"{remote.host_of(kernel.manager)} does not answer")
            await self._stop_keeping(kernel)
            self._become(kernel, "restarting")
            kernel.started_at = time.time()
            # Workers hold what clients send until the new process is proven reachable (no status:
            # clients asked for this restart, and `restarting` would tell them the kernel died).
            self._emit(kernel, hold=True)
            await self._keep_record(kernel, RESTARTING)
            try:
                await self._restart_process(kernel, now=now)
            except Exception as e:
                # The record names whatever process the attempt left (a remote one included), and the
                # next supervisor starts the kernel again from it.
                await self._keep_record(kernel, RESTARTING)
                self._become(kernel, "dead", f"restart failed: {e}", announce=True)
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
            await self._stop_keeping(kernel)
            await self.launcher.discard(kernel)
        log.info("Kernel %s: %s", why, kernel_id)

    # -- connections and replay ----------------------------------------------------------------

    @property
    def zmq_context(self) -> zmq.asyncio.Context:
        return self.launcher.zmq

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

    # -- the end -------------------------------------------------------------------------------

    async def shutdown_all(self) -> None:
        """Every kernel at once, each step on a deadline; then whatever a record of ours still names is killed.
        The supervisor stops listening to the kernels first, so no flood of output can slow this down."""
        kernels = self.list()
        await asyncio.gather(*(self.launcher.stop_watching(k) for k in kernels))
        try:
            async with asyncio.timeout(self.config.shutdown_wait + SHUTDOWN_MARGIN):
                await asyncio.gather(
                    self.pool.close(), *(self.shutdown(k.id) for k in kernels), return_exceptions=True
                )
        except TimeoutError:
            log.error("Kernels did not all shut down within %g s; killing them", self.config.shutdown_wait + SHUTDOWN_MARGIN)
        await self.launcher.stop_ending()
        for kernel_id in list(self.records.ours):
            if record := self.records.load(kernel_id):
                if await remote.end(record, self.specs) is False:
                    log.warning("Kernel %s: its host does not answer; its record is left for the next supervisor",
                                kernel_id)
                    continue
                adoption.end_kernel(self.records, record, self.config.runtime_dir)

    async def release(self) -> None:
        """Stop watching every kernel and leave it running, with its record and files, for the next
        supervisor to adopt (a hand-over). Warm kernels are not handed over."""
        await self.pool.close()
        await self.launcher.stop_ending()
        for kernel in self._kernels.values():
            await self._stop_keeping(kernel)
            await self.launcher.stop_watching(kernel)
            await kernel.output.close(timeout=0)
            adoption.keep_connection_file(kernel.manager)
        self._kernels.clear()

    def close(self) -> None:
        self.launcher.close()
