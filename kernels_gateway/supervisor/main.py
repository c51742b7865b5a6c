"""The supervisor process: startup, serve until SIGTERM or SIGINT, shutdown of every kernel."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

from ..config import Config, pool_sizes
from ..systemd import Notifier
from .activity import ReplayLimits
from .kernels import MAX_SOCKET_PATH, KernelSettings, Kernels
from .records import own_directory
from .server import SupervisorServer

log = logging.getLogger("kernels_gateway.supervisor")

# Variables that belong to the gateway or to the service manager, never to a kernel. Every variable of
# the gateway's own configuration is among them, since some of it is secret (a token).
SECRET_ENV = frozenset({"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"})
SECRET_ENV_PREFIXES = ("KERNELS_GATEWAY_", "KG_")


def kernel_settings(config: Config) -> KernelSettings:
    return KernelSettings(
        runtime_dir=config.runtime_dir,
        default_kernel_name=config.default_kernel_name,
        force_kernel_name=config.force_kernel_name,
        transport=config.transport,
        max_kernels=config.max_kernels,
        env_allow=frozenset(config.env_allow),
        env_inherit=frozenset(config.env_inherit),
        secret_env=SECRET_ENV | {name for name in os.environ if name.startswith(SECRET_ENV_PREFIXES)},
        start_timeout=config.kernel_start_timeout,
        shutdown_wait=config.shutdown_wait,
        restart_limit=config.restart_limit,
        replay=ReplayLimits(max_bytes=config.replay_bytes, max_age=config.replay_age),
        cull_idle_timeout=config.cull_idle_timeout,
        cull_interval=config.cull_interval,
        cull_connected=config.cull_connected,
        cull_busy=config.cull_busy,
        pool=pool_sizes(config.pool, config.force_kernel_name or config.default_kernel_name or NATIVE_KERNEL_NAME),
    )


def prepare_runtime_dir(config: Config) -> None:
    if len(bytes(config.socket_path)) > MAX_SOCKET_PATH:
        raise RuntimeError(
            f"Runtime directory {config.runtime_dir} is too deep for Unix sockets "
            f"(paths are limited to {MAX_SOCKET_PATH} bytes); choose a shorter --runtime-dir"
        )
    own_directory(config.runtime_dir)


async def serve(config: Config) -> None:
    prepare_runtime_dir(config)
    kernels = Kernels(kernel_settings(config))
    server = SupervisorServer(kernels, config.socket_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    culler: asyncio.Task | None = None
    async with Notifier() as notifier:
        try:
            await server.start_serving()
            log.info("Supervisor listening on %s", config.socket_path)
            # Kernels a previous supervisor left running come first; launch kernels only on a fresh start.
            if not await kernels.adopt_all():
                for _ in range(config.initial_kernels):
                    await kernels.start(config.kernel_name or None)
            kernels.pool.start()
            if config.cull_idle_timeout > 0:
                culler = asyncio.create_task(kernels.cull(), name="culler")
            notifier.ready()
            await stop.wait()
        finally:
            notifier.stopping()
            if culler:
                culler.cancel()
                await asyncio.gather(culler, return_exceptions=True)
            log.info("Supervisor stopping: shutting down %d kernel(s)", len(kernels.list()))
            await server.close()
            await kernels.shutdown_all()
            kernels.close()
