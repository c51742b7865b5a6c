"""Kernel lifecycle: start, watch, interrupt, restart, shut down. The one registry of running kernels.

Each kernel is driven by jupyter_client's AsyncKernelManager, so kernelspecs that name a provisioner
are honoured. The supervisor keeps one iopub SUB socket per kernel to know its execution state and
last activity; it never sits on the path of the messages that clients exchange with the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager, NoSuchKernel

from .errors import BadRequest, KernelLimit, KernelNotFound, KernelSpecNotFound, KernelStartFailed
from .wire import kernel_url

log = logging.getLogger("kernels_gateway.supervisor")

DELIMITER = b"<IDS|MSG>"
# Unix socket paths are capped at 108 bytes (sun_path), NUL included; an IPC endpoint adds "-NNNNN".
MAX_SOCKET_PATH = 107
MAX_IPC_PREFIX = MAX_SOCKET_PATH - len("-65535")
MAX_ENV_VALUE = 32 * 1024
# Kernel ids are the canonical form of a random UUID, and nothing else is ever looked up, logged or
# turned into a path: whatever a client puts in a URL stops here.
KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def valid_kernel_id(kernel_id: Any) -> str:
    if not isinstance(kernel_id, str) or not KERNEL_ID.fullmatch(kernel_id):
        raise KernelNotFound(str(kernel_id)[:100])
    return kernel_id


@dataclass(frozen=True)
class KernelSettings:
    runtime_dir: Path
    default_kernel_name: str = ""
    transport: str = "ipc"
    max_kernels: int = 0
    env_allow: frozenset[str] = frozenset()
    secret_env: frozenset[str] = frozenset()
    start_timeout: float = 60.0
    shutdown_wait: float = 5.0


@dataclass(eq=False)
class Kernel:
    id: str
    name: str
    manager: AsyncKernelManager
    execution_state: str = "starting"
    last_activity: float = field(default_factory=time.time)
    connections: int = 0
    reason: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set by each idle status seen
    watcher: asyncio.Task | None = None

    def model(self) -> dict[str, Any]:
        stamp = datetime.fromtimestamp(self.last_activity, timezone.utc)
        model = {
            "id": self.id,
            "name": self.name,
            "last_activity": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "execution_state": self.execution_state,
            "connections": self.connections,
        }
        if self.reason:
            model["reason"] = self.reason
        return model

    def connection_info(self) -> dict[str, Any]:
        info = dict(self.manager.get_connection_info())
        info["key"] = info["key"].decode()
        return info


def _env_safe(text: str) -> bool:
    """Whether the operating system can hold this in an environment: UTF-8 encodable, no NUL."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\0" not in text


class Kernels:
    def __init__(self, settings: KernelSettings):
        self.settings = settings
        self.specs = KernelSpecManager()
        self._kernels: dict[str, Kernel] = {}
        self._starting = 0
        self._zmq = zmq.asyncio.Context()

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

    def _require_spec(self, name: str) -> None:
        try:
            self.specs.get_kernel_spec(name)
        except NoSuchKernel:
            raise KernelSpecNotFound(name) from None

    # -- the registry ------------------------------------------------------------------------

    def get(self, kernel_id: Any) -> Kernel:
        try:
            return self._kernels[valid_kernel_id(kernel_id)]
        except KeyError:
            raise KernelNotFound(kernel_id) from None

    def list(self) -> Iterable[Kernel]:
        return list(self._kernels.values())

    async def start(self, name: str | None = None, env: Mapping[str, str] | None = None) -> Kernel:
        name = name or self.default_name
        self._require_spec(name)
        limit = self.settings.max_kernels
        # Counting starts in flight before the first await keeps a burst of starts from overshooting.
        if limit and len(self._kernels) + self._starting >= limit:
            raise KernelLimit(f"A max kernels limit of {limit} has been set and reached")
        self._starting += 1
        try:
            kernel = await self._launch(name, self._kernel_env(env or {}))
        finally:
            self._starting -= 1
        log.info("Kernel started: %s", kernel.id)
        return kernel

    async def _launch(self, name: str, env: dict[str, str]) -> Kernel:
        kernel_id = str(uuid.uuid4())
        manager = AsyncKernelManager(
            kernel_name=name,
            kernel_id=kernel_id,
            kernel_spec_manager=self.specs,
            transport=self.settings.transport,
            connection_file=str(self.settings.runtime_dir / f"kernel-{kernel_id}.json"),
            shutdown_wait_time=self.settings.shutdown_wait,
        )
        manager.ip = self._kernel_ip(kernel_id)
        kernel = Kernel(id=kernel_id, name=name, manager=manager)
        try:
            # independent: the kernel must not exit with the supervisor (no JPY_PARENT_PID poller).
            await manager.start_kernel(env=env, independent=True)
        except Exception as e:
            await self._discard(kernel)
            raise KernelStartFailed(f"Kernel {name} failed to start: {e}") from e
        self._kernels[kernel_id] = kernel
        kernel.watcher = asyncio.create_task(self._watch_iopub(kernel), name=f"iopub-{kernel_id}")
        try:
            await self._wait_ready(kernel)
        except Exception as e:
            await self._remove(kernel)
            raise KernelStartFailed(f"Kernel {name} failed to start: {e}") from e
        return kernel

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

    def _kernel_env(self, requested: Mapping[str, str]) -> dict[str, str]:
        """The supervisor's environment without the gateway's secrets, plus the allowed requested names."""
        env = {k: v for k, v in os.environ.items() if k not in self.settings.secret_env}
        env.pop("JPY_PARENT_PID", None)
        for key, value in requested.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise BadRequest("env must map names to string values")
            if not (key and "=" not in key and _env_safe(key) and _env_safe(value) and len(value) <= MAX_ENV_VALUE):
                raise BadRequest(
                    f"env entry {key[:100]!r} cannot be set: a name needs no '=', names and values no NUL "
                    f"or unpaired surrogate, and values at most {MAX_ENV_VALUE} characters"
                )
            if key.startswith("KERNEL_") or key in self.settings.env_allow:
                env[key] = value
        return env

    async def _wait_ready(self, kernel: Kernel) -> None:
        """Ask for kernel_info until a reply comes back on shell and the kernel's `idle` after it
        reaches our iopub socket.

        The iopub half matters: a SUB socket misses what is published before its subscription has
        propagated, so only a status seen on iopub proves that state tracking is live. One request is
        outstanding at a time (ZMQ queues it until the kernel binds), so no stray replies follow.
        """
        shell = self._zmq.socket(zmq.DEALER)
        shell.linger = 0
        shell.connect(kernel_url(kernel.connection_info(), "shell"))
        try:
            async with asyncio.timeout(self.settings.start_timeout):
                while True:
                    kernel.idle.clear()
                    kernel.manager.session.send(shell, "kernel_info_request")
                    while not await shell.poll(1000):
                        if not await kernel.manager.is_alive():
                            raise KernelStartFailed("the kernel process exited during start-up")
                    await shell.recv_multipart()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kernel.idle.wait(), 0.5)
                        return
        except TimeoutError:
            raise KernelStartFailed(f"no reply within {self.settings.start_timeout:g} s") from None
        finally:
            shell.close()

    async def _watch_iopub(self, kernel: Kernel) -> None:
        sub = self._zmq.socket(zmq.SUB)
        sub.linger = 0
        sub.subscribe(b"")
        sub.connect(kernel_url(kernel.connection_info(), "iopub"))
        try:
            while True:
                parts = await sub.recv_multipart()
                kernel.last_activity = time.time()
                try:
                    start = parts.index(DELIMITER)
                    header = json.loads(parts[start + 2])
                    if header.get("msg_type") == "status":
                        kernel.execution_state = json.loads(parts[start + 5])["execution_state"]
                        if kernel.execution_state == "idle":
                            kernel.idle.set()
                except (ValueError, IndexError, KeyError, TypeError):
                    log.warning("Kernel %s: unreadable iopub message ignored", kernel.id)
        finally:
            sub.close()

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
            kernel.execution_state = "restarting"
            try:
                await kernel.manager.restart_kernel(now=False)
                await self._wait_ready(kernel)
            except Exception as e:
                kernel.execution_state = "dead"
                kernel.reason = f"restart failed: {e}"
                raise KernelStartFailed(f"Kernel {kernel_id} failed to restart: {e}") from e
        log.info("Kernel restarted: %s", kernel_id)
        return kernel

    async def shutdown(self, kernel_id: str) -> None:
        kernel = self.get(kernel_id)
        # Gone from the registry at once: a second DELETE or a waiting restart sees KernelNotFound.
        del self._kernels[kernel_id]
        async with kernel.lock:
            await self._discard(kernel)
        log.info("Kernel shutdown: %s", kernel_id)

    async def _remove(self, kernel: Kernel) -> None:
        self._kernels.pop(kernel.id, None)
        await self._discard(kernel)

    async def _discard(self, kernel: Kernel) -> None:
        """Stop the watcher, then the process: shutdown request, SIGTERM, SIGKILL, each on a deadline."""
        if kernel.watcher:
            kernel.watcher.cancel()
            await asyncio.gather(kernel.watcher, return_exceptions=True)
        try:
            if kernel.manager.has_kernel:
                await kernel.manager.shutdown_kernel(now=False)
            else:
                kernel.manager.cleanup_resources()
        except Exception:
            log.exception("Kernel %s: shutdown failed; killing it", kernel.id)
            await kernel.manager.shutdown_kernel(now=True)

    def connection_opened(self, kernel_id: str) -> None:
        self.get(kernel_id).connections += 1

    def connection_closed(self, kernel_id: str) -> None:
        kernel = self._kernels.get(kernel_id)
        if kernel:
            kernel.connections = max(0, kernel.connections - 1)

    async def shutdown_all(self) -> None:
        await asyncio.gather(*(self.shutdown(k) for k in list(self._kernels)), return_exceptions=True)

    def close(self) -> None:
        self._zmq.destroy(linger=0)
