"""The one command: a small arbiter that runs the supervisor and the web workers as child processes.

It binds the listening socket once and hands it to every worker, learns that a child is ready through
the sd_notify protocol (each child gets its own NOTIFY_SOCKET), watches each child's watchdog pings as
systemd would, restarts a child that dies or hangs with a growing back-off, and stops in order: workers
first (their websockets close with 1001), then the supervisor, which shuts every kernel down.
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
from collections.abc import Callable

from .config import SUPERVISOR, WEB, Config
from .gateway.server import cannot_listen
from .supervisor.adoption import end_recorded_kernels
from .supervisor.environment import is_secret
from .supervisor.main import prepare_runtime_dir
from .systemd import Notifier
from .tls import server_context

log = logging.getLogger("kernels_gateway")

READY_TIMEOUT = 30.0
STOP_GRACE = {WEB: 10.0, SUPERVISOR: 15.0}
ABORT_GRACE = 5.0  # after SIGABRT for a missed watchdog, before SIGKILL (systemd's TimeoutAbortSec)
# Children are asked to ping this many times per --watchdog-timeout: a loop that is merely busy or
# slowed down by a loaded machine can be late by most of the timeout before it counts as hung.
PINGS_PER_TIMEOUT = 10
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a child that lived this long has its back-off reset
PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    pass


class _Exited(Exception):
    def __init__(self, code: int):
        self.code = code


def _die_with(parent: int) -> Callable[[], None]:
    """Runs in a worker before exec: SIGTERM it if the arbiter dies, so nothing is left holding the port.
    (The supervisor has no such signal: it watches the arbiter itself, to keep its kernels.)"""
    def set_parent_death_signal() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the arbiter died before the signal was armed
            os._exit(1)
    return set_parent_death_signal


class Child:
    def __init__(self, role: str, args: list[str], env: dict[str, str], ready_timeout: float,
                 watchdog: float, fds: tuple[int, ...] = ()):
        self.role, self.args, self.env, self.fds, self.ready_timeout = role, args, env, fds, ready_timeout
        self.watchdog = watchdog
        self.process: asyncio.subprocess.Process | None = None
        self.notify: socket.socket | None = None  # read for the child's whole life: its pings come here
        self.started_at = 0.0

    async def start(self) -> None:
        """Spawn the child and wait for its READY=1; ChildFailed if it exits or stays silent (it is then
        left running: the caller decides how it ends)."""
        self.close()
        address = f"\0kernels-gateway-{uuid.uuid4().hex}"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(address)
        self.notify.setblocking(False)
        env = {**self.env, "NOTIFY_SOCKET": "@" + address[1:]}
        if self.watchdog > 0:  # sd_watchdog_enabled: pings come at half this interval
            env["WATCHDOG_USEC"] = str(int(2e6 * self.watchdog / PINGS_PER_TIMEOUT))
        preexec = _die_with(os.getpid()) if self.role == WEB else None
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kernels_gateway", self.role, *self.args,
            env=env, pass_fds=self.fds, process_group=0, preexec_fn=preexec,
        )
        self.started_at = asyncio.get_running_loop().time()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        exited = asyncio.create_task(self.process.wait())
        try:
            async with asyncio.timeout(self.ready_timeout):
                while b"READY=1" not in await self._notice(exited):
                    pass
        except _Exited as e:
            raise ChildFailed(f"{self.role} exited with code {e.code} during start-up") from None
        except TimeoutError:
            raise ChildFailed(f"{self.role} did not become ready within {self.ready_timeout:g} s") from None
        finally:
            exited.cancel()
            await asyncio.gather(exited, return_exceptions=True)

    async def watch(self) -> bool:
        """Return once the child has exited (False) or has sent no watchdog ping for --watchdog-timeout
        seconds (True)."""
        loop = asyncio.get_running_loop()
        exited = asyncio.create_task(self.process.wait())
        last_ping = loop.time()
        try:
            while True:
                left = max(0.0, last_ping + self.watchdog - loop.time()) if self.watchdog > 0 else None
                lines = await self._notice(exited, left)
                if lines is None:
                    return True
                if b"WATCHDOG=1" in lines:
                    last_ping = loop.time()
        except _Exited:
            return False
        finally:
            exited.cancel()
            await asyncio.gather(exited, return_exceptions=True)

    async def _notice(self, exited: asyncio.Task, timeout: float | None = None) -> list[bytes] | None:
        """The lines of the child's next notification; None if none came within `timeout`."""
        received = asyncio.create_task(asyncio.get_running_loop().sock_recv(self.notify, 4096))
        try:
            done, _ = await asyncio.wait({received, exited}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            received.cancel()
            await asyncio.gather(received, return_exceptions=True)
        if received in done:
            return received.result().split(b"\n")
        if exited in done:
            raise _Exited(exited.result())
        return None

    async def abort(self) -> None:
        """What systemd does when a watchdog fires: SIGABRT, then SIGKILL if the process lingers (a
        stopped process never acts on the first)."""
        self.process.send_signal(signal.SIGABRT)
        try:
            await asyncio.wait_for(self.process.wait(), ABORT_GRACE)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self, grace: float) -> bool:
        """SIGTERM, wait up to `grace` seconds, SIGKILL, reap; True if it had to be killed."""
        if self.process is None or self.process.returncode is not None:
            return False
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            log.warning("%s did not stop within %g s; killing it", self.role, grace)
            await self.kill()
            return True
        return False

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()
            self.notify = None


class Arbiter:
    def __init__(self, config: Config):
        self.config = config
        self.port_claim = _claim_port(config)
        # One socket per worker, all bound to the port with SO_REUSEPORT: the kernel spreads new
        # connections across them evenly, where workers sharing one socket leave it to whichever wakes
        # first (under load, one worker took every connection). The arbiter keeps them open, so a
        # restarted worker finds its queue of waiting connections intact.
        self.listeners = [_listen(config) for _ in range(config.workers)]
        supervisor_ready = READY_TIMEOUT + config.kernel_start_timeout * config.initial_kernels
        # The supervisor watches this process: when it dies, the supervisor keeps the kernels for the
        # next gateway on the runtime directory (--orphan-timeout).
        self.supervisor = Child(SUPERVISOR, self._supervisor_args(config), _child_env(config, SUPERVISOR),
                                supervisor_ready, config.watchdog_timeout)
        self.workers = [
            Child(WEB, config.args_for(WEB) + ["--fd", str(listener.fileno())], _child_env(config, WEB),
                  READY_TIMEOUT, config.watchdog_timeout, (listener.fileno(),))
            for listener in self.listeners
        ]
        self.stopping = asyncio.Event()

    @staticmethod
    def _supervisor_args(config: Config) -> list[str]:
        return config.args_for(SUPERVISOR) + ["--arbiter-pid", str(os.getpid())]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        async with Notifier() as notifier:  # the arbiter itself may run under a service manager
            try:
                await self.supervisor.start()
                # A supervisor restarted later must not start the launch kernels a second time.
                self.supervisor.args = self._supervisor_args(dataclasses.replace(self.config, initial_kernels=0))
                self.supervisor.ready_timeout = READY_TIMEOUT
                await asyncio.gather(*(worker.start() for worker in self.workers))
            except ChildFailed as e:  # only the first start may fail the gateway
                log.error("Cannot start: %s", e)
                await self.stop()
                return 1
            log.info("Serving at %s", self.config.url())
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
        """Restart the child whenever it dies or hangs, with a back-off. A restart that fails is tried
        again, for as long as it takes: the other children keep serving meanwhile."""
        backoff = 1.0
        loop = asyncio.get_running_loop()
        while True:
            if await child.watch():
                log.error("%s (pid %d) sent no watchdog ping for %g s; aborting it", child.role,
                          child.process.pid, child.watchdog)
                await child.abort()
            if loop.time() - child.started_at > STABLE_AFTER:
                backoff = 1.0
            log.error("%s (pid %d) exited with code %s; restarting in %g s", child.role, child.process.pid,
                      child.process.returncode, backoff)
            while True:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                try:
                    await child.start()
                    break
                except (ChildFailed, OSError) as e:
                    log.error("Restarting %s failed: %s; trying again in %g s", child.role, e, backoff)
                    await child.kill()  # a supervisor killed leaves its kernels to the next one

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop(STOP_GRACE[WEB]) for worker in self.workers))
        if await self.supervisor.stop(STOP_GRACE[SUPERVISOR] + self.config.shutdown_wait):
            # It could not finish shutting its kernels down; they are left to us, and nobody adopts them.
            end_recorded_kernels(self.config.runtime_dir)
        for child in [self.supervisor, *self.workers]:
            child.close()
        for listener in self.listeners:
            listener.close()
        self.port_claim.close()


def _child_env(config: Config, role: str) -> dict[str, str]:
    """Children get their configuration as flags, and secrets as variables, only where needed: the
    supervisor, parent of every kernel, never holds the token. Children report to us, so the service
    manager's variables (its watchdog, its sockets) are ours alone."""
    inherited = {k: v for k, v in os.environ.items() if not is_secret(k)}
    return {**inherited, **config.env_for(role)}


def _claim_port(config: Config) -> socket.socket:
    """Refuse an address that is in use, as any server does, although our listeners share it.

    SO_REUSEPORT lets any process of the same user bind the port too, so a second gateway would start
    and take half the connections. A plain bind fails while anyone holds the address (a gateway of ours
    as well: sharing needs every socket to ask for it). Between that test and our own binds, an
    abstract Unix socket named after the address, held for the arbiter's life, keeps a second gateway
    starting at the same moment out; like the port, it belongs to the network namespace and goes with
    the process.
    """
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    family = socket.AF_INET6 if ":" in config.ip else socket.AF_INET
    try:
        claim.bind(f"\0kernels-gateway-port-{config.ip}-{config.port}")
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no holder
            probe.bind((config.ip, config.port))
    except OSError as e:
        claim.close()
        raise cannot_listen(config, e) from None
    return claim


def _listen(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.ip else socket.AF_INET
    listener = socket.create_server((config.ip, config.port), family=family, backlog=1024, reuse_port=True)
    listener.set_inheritable(True)
    return listener


async def run(config: Config) -> int:
    server_context(config)  # a certificate that cannot be loaded stops us before any kernel starts
    prepare_runtime_dir(config)
    return await Arbiter(config).run()
