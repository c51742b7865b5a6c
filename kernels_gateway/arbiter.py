"""The one command: a small arbiter that runs the supervisor and the web workers as child processes.

It binds the listening socket once and hands it to every worker, learns that a child is ready through
the sd_notify protocol (each child gets its own NOTIFY_SOCKET), restarts a child that dies with a
growing back-off, and stops in order: workers first (their websockets close with 1001), then the
supervisor, which shuts every kernel down.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import uuid

from .config import SUPERVISOR, WEB, Config
from .gateway.server import serving_url, ssl_context
from .supervisor.adoption import end_recorded_kernels
from .supervisor.main import SECRET_ENV, SECRET_ENV_PREFIXES, prepare_runtime_dir
from .systemd import Notifier

log = logging.getLogger("kernels_gateway")

READY_TIMEOUT = 30.0
STOP_GRACE = {WEB: 10.0, SUPERVISOR: 15.0}
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a child that lived this long has its back-off reset
GIVE_UP_AFTER = 5  # consecutive failed starts


class ChildFailed(Exception):
    pass


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the arbiter dies, so nothing is left holding the port."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    def __init__(self, role: str, args: list[str], env: dict[str, str], ready_timeout: float,
                 fds: tuple[int, ...] = ()):
        self.role, self.args, self.env, self.fds, self.ready_timeout = role, args, env, fds, ready_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0

    async def start(self) -> None:
        """Spawn the child and wait for its READY=1; ChildFailed if it exits or stays silent."""
        address = f"\0kernels-gateway-{uuid.uuid4().hex}"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(address)
        notify.setblocking(False)
        try:
            env = {**self.env, "NOTIFY_SOCKET": "@" + address[1:]}
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kernels_gateway", self.role, *self.args,
                env=env, pass_fds=self.fds, process_group=0, preexec_fn=_die_with_parent,
            )
            self.started_at = asyncio.get_running_loop().time()
            await self._wait_ready(notify)
        finally:
            notify.close()

    async def _wait_ready(self, notify: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        exited = asyncio.create_task(self.process.wait())
        try:
            async with asyncio.timeout(self.ready_timeout):
                while True:
                    received = asyncio.create_task(loop.sock_recv(notify, 4096))
                    done, _ = await asyncio.wait({received, exited}, return_when=asyncio.FIRST_COMPLETED)
                    if exited in done:
                        received.cancel()
                        raise ChildFailed(f"{self.role} exited with code {exited.result()} during start-up")
                    if b"READY=1" in received.result().split(b"\n"):
                        return
        except TimeoutError:
            await self.stop(0)
            raise ChildFailed(f"{self.role} did not become ready within {self.ready_timeout:g} s") from None
        finally:
            exited.cancel()

    async def stop(self, grace: float) -> bool:
        """SIGTERM, wait up to `grace` seconds, SIGKILL, reap; True if it had to be killed."""
        if self.process is None or self.process.returncode is not None:
            return False
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop within %g s; killing it", self.role, grace)
            self.process.kill()
            await self.process.wait()
            return True
        return False


class Arbiter:
    def __init__(self, config: Config):
        self.config = config
        # One socket per worker, all bound to the port with SO_REUSEPORT: the kernel spreads new
        # connections across them evenly, where workers sharing one socket leave it to whichever wakes
        # first (under load, one worker took every connection). The arbiter keeps them open, so a
        # restarted worker finds its queue of waiting connections intact.
        self.listeners = [_listen(config) for _ in range(config.workers)]
        supervisor_ready = READY_TIMEOUT + config.kernel_start_timeout * config.initial_kernels
        self.supervisor = Child(SUPERVISOR, config.args_for(SUPERVISOR), _child_env(config, SUPERVISOR),
                                supervisor_ready)
        self.workers = [
            Child(WEB, config.args_for(WEB) + ["--fd", str(listener.fileno())], _child_env(config, WEB),
                  READY_TIMEOUT, (listener.fileno(),))
            for listener in self.listeners
        ]
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        async with Notifier() as notifier:  # the arbiter itself may run under a service manager
            try:
                await self.supervisor.start()
                # A supervisor restarted later must not start the launch kernels a second time.
                restarted = dataclasses.replace(self.config, initial_kernels=0)
                self.supervisor.args = restarted.args_for(SUPERVISOR)
                self.supervisor.ready_timeout = READY_TIMEOUT
                await asyncio.gather(*(worker.start() for worker in self.workers))
            except ChildFailed as e:
                log.error("Cannot start: %s", e)
                await self.stop()
                return 1
            log.info("Serving at %s", serving_url(self.config))
            notifier.ready()
            watchers = [asyncio.create_task(self._keep_alive(child)) for child in [self.supervisor, *self.workers]]
            stopped = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stopped, *watchers], return_when=asyncio.FIRST_COMPLETED)
            notifier.stopping()
            for task in [stopped, *watchers]:
                task.cancel()
            await asyncio.gather(stopped, *watchers, return_exceptions=True)
            await self.stop()
        return 0 if stopped in done else 1

    async def _keep_alive(self, child: Child) -> None:
        """Restart the child whenever it dies, with a back-off; give up after repeated failed starts."""
        backoff, failures = 1.0, 0
        loop = asyncio.get_running_loop()
        while True:
            code = await child.process.wait()
            if loop.time() - child.started_at > STABLE_AFTER:
                backoff, failures = 1.0, 0
            log.error("%s (pid %d) exited with code %s; restarting in %g s", child.role, child.process.pid, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            try:
                await child.start()
            except ChildFailed as e:
                failures += 1
                log.error("Restart failed: %s", e)
                if failures >= GIVE_UP_AFTER:
                    log.error("%s keeps failing to start; giving up", child.role)
                    return

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop(STOP_GRACE[WEB]) for worker in self.workers))
        if await self.supervisor.stop(STOP_GRACE[SUPERVISOR] + self.config.shutdown_wait):
            # It could not finish shutting its kernels down; they are left to us, and nobody adopts them.
            end_recorded_kernels(self.config.runtime_dir)
        for listener in self.listeners:
            listener.close()


def _child_env(config: Config, role: str) -> dict[str, str]:
    """Children get their configuration as flags, and secrets as variables, only where needed: the
    supervisor, parent of every kernel, never holds the token. Children report to us, so the service
    manager's variables (its watchdog, its sockets) are ours alone."""
    inherited = {k: v for k, v in os.environ.items() if k not in SECRET_ENV and not k.startswith(SECRET_ENV_PREFIXES)}
    return {**inherited, **config.env_for(role)}


def _listen(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.ip else socket.AF_INET
    listener = socket.create_server((config.ip, config.port), family=family, backlog=1024, reuse_port=True)
    listener.set_inheritable(True)
    return listener


async def run(config: Config) -> int:
    ssl_context(config)  # a certificate that cannot be loaded stops us before any kernel starts
    prepare_runtime_dir(config)
    return await Arbiter(config).run()
