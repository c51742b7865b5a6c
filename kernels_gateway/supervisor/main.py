"""The supervisor process: startup, serve until SIGTERM or SIGINT, shutdown of every kernel.

Under the one command, the arbiter's death does not end it at once: it keeps its kernels for
--orphan-timeout seconds, for the next kernels-gateway on the same runtime directory, whose supervisor
finds the runtime directory locked and asks for a hand-over over the control socket. This one then
lets go of everything without stopping a kernel, and the new one adopts them from their records.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

from jupyter_client.kernelspec import KernelSpecManager

from ..config import Config
from ..errors import CannotStart, GatewayError
from ..systemd import Notifier
from . import remote
from .adoption import adopt_all
from .client import SupervisorClient
from .culler import cull
from .executions import ExecutionLimits
from .fork_provisioner import start_templates
from .kernels import Kernels
from .launcher import MAX_SOCKET_PATH
from .lock import RuntimeLock
from .process import exited
from .records import own_directory
from .seed import load_seed
from .server import SupervisorServer
from .yielding import yield_to_the_gateway

log = logging.getLogger("kernels_gateway.supervisor")

# How long a supervisor that agreed to hand its kernels over may take to let go of the runtime directory
# (it may have begun to shut them down when it was asked).
HAND_OVER_TIMEOUT = 30.0


def prepare_runtime_dir(config: Config) -> None:
    if len(bytes(config.socket_path)) > MAX_SOCKET_PATH:
        raise CannotStart(
            f"Runtime directory {config.runtime_dir} is too deep for Unix sockets "
            f"(paths are limited to {MAX_SOCKET_PATH} bytes); choose a shorter --runtime-dir"
        )
    try:
        own_directory(config.runtime_dir)
    except OSError as e:
        raise CannotStart(f"Runtime directory {config.runtime_dir} cannot be used: {e.strerror or e}") from None


async def serve(config: Config) -> None:
    prepare_runtime_dir(config)
    lock = RuntimeLock(config.runtime_dir)
    if not lock.try_acquire():
        await _take_over(config, lock)
    try:
        await _serve(config)
    finally:
        lock.release()


async def _take_over(config: Config, lock: RuntimeLock) -> None:
    """The runtime directory is locked: by the supervisor of a running gateway, which refuses, or by one
    whose gateway died, which hands its kernels over and lets go."""
    in_use = CannotStart(
        f"Runtime directory {config.runtime_dir} is in use by another kernels-gateway (pid {lock.holder()}); "
        "to run two gateways, give each its own --runtime-dir"
    )
    client = SupervisorClient(config.socket_path)
    try:
        found = await client.request("hand_over")
    except GatewayError:
        raise in_use from None
    finally:
        await client.close()
    log.info("Taking over the kernels of supervisor %s, whose gateway is gone", found["pid"])
    if not await lock.acquire(HAND_OVER_TIMEOUT):
        raise in_use


async def _serve(config: Config) -> None:
    seed = await load_seed(config.seed_uri, KernelSpecManager()) if config.seed_uri else None
    if seed:
        log.info("Seeding %s kernels with %d cell(s) of %s", seed.language, len(seed.cells), seed.uri)
    kernels = Kernels(config, seed)
    templates = await start_templates(kernels, config.fork, config.preload, config.kernel_name)
    limits = ExecutionLimits(max_bytes=config.execution_bytes, max_age=config.execution_age)
    server = SupervisorServer(kernels, config.socket_path, limits)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    background: list[asyncio.Task] = []
    handed_over = False
    async with Notifier() as notifier, remote.response_manager(kernels.specs):
        try:
            await server.start_serving()
            log.info("Supervisor listening on %s", config.socket_path)
            # Kernels a previous supervisor left running come first; launch kernels only on a fresh start.
            if not await adopt_all(kernels):
                for _ in range(config.initial_kernels):
                    await kernels.start(config.kernel_name or None)
            kernels.pool.start()
            if config.cull_idle_timeout > 0:
                background.append(asyncio.create_task(cull(kernels), name="culler"))
            if config.kernel_nice:
                background.append(asyncio.create_task(yield_to_the_gateway(kernels, config.kernel_nice),
                                                      name="yielding"))
            gc.freeze()  # what start-up built lives as long as the process: no full collection walks it
            notifier.ready()
            if await _until_stopped_or_orphaned(stop, config.arbiter_pid):
                handed_over = await _wait_for_successor(config, server, stop, len(kernels.list()))
        finally:
            notifier.stopping()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            what = "Supervisor handing %d kernel(s) over" if handed_over else "Supervisor stopping: shutting down %d kernel(s)"
            log.info(what, len(kernels.list()))
            await server.close()
            await (kernels.release() if handed_over else kernels.shutdown_all())
            kernels.close()
            if templates:
                await templates.close()


async def _first_of(*waits, timeout: float | None = None) -> None:
    """Return once one of these awaitables is done (or `timeout` passed); the others are cancelled and awaited."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until_stopped_or_orphaned(stop: asyncio.Event, arbiter_pid: int) -> bool:
    """Wait for a stop signal (False) or for the death of the arbiter that started us (True)."""
    if arbiter_pid > 0:
        # Our parent: if it is not any more, it died before we could watch it.
        await _first_of(stop.wait(), exited(arbiter_pid) if os.getppid() == arbiter_pid else asyncio.sleep(0))
    else:
        await stop.wait()
    return not stop.is_set()


async def _wait_for_successor(config: Config, server: SupervisorServer, stop: asyncio.Event, count: int) -> bool:
    """Serve nothing but a hand-over for --orphan-timeout seconds; True if the next supervisor asked."""
    log.warning("The gateway (pid %d) is gone; keeping %d kernel(s) for %g s for the next kernels-gateway "
                "on %s", config.arbiter_pid, count, config.orphan_timeout, config.runtime_dir)
    server.orphan()
    await _first_of(server.taken_over.wait(), stop.wait(), timeout=config.orphan_timeout)
    if not server.taken_over.is_set() and not stop.is_set():
        log.warning("No kernels-gateway took over within %g s", config.orphan_timeout)
    return server.taken_over.is_set()
