"""The supervisor's side of the template processes (`forkserver.py`): one per Python kernelspec that runs
ipykernel with the gateway's own interpreter, started with the supervisor, asked for a kernel at a time.

The supervisor is the parent of every forked kernel: a subreaper while a template forks, it inherits the
kernel when the template's middle process exits. A template exits when the supervisor does (its end of
the socketpair closes); kernels run on in their own sessions, whether their template lives or not, and
the next supervisor adopts them and starts templates of its own.
Templates of the default and the warm pool's kernelspecs start with the supervisor, others with the first
kernel that needs one; a template that dies is started again on the next kernel it would have forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping

from .output import KernelOutput
from .process import exited

log = logging.getLogger("kernels_gateway.supervisor")

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
MAX_MESSAGE = 4 * 2**20
BUFFER = 8 * 2**20  # room for a request's environment in one datagram


class TemplateError(Exception):
    pass


class Template:
    """One template process and its channel; requests go one at a time."""

    def __init__(self, name: str, env: Mapping[str, str], preload: tuple[str, ...]):
        self.name = name
        self.env = dict(env)
        self.preload = preload
        self.process: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        # What it prints (an import's warning, a traceback) is logged as lines, never mixed raw into the log.
        self.output = KernelOutput("", label=f"Template of {name}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, timeout: float) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kernels_gateway.supervisor.forkserver", str(theirs.fileno()),
                 ",".join(self.preload)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=[theirs.fileno()], start_new_session=True,
            )
        finally:
            theirs.close()
        try:
            await self.output.follow(self.process)
        finally:
            self.process.stdout.close()  # the reader has its own copies
            self.process.stderr.close()
        ours.setblocking(False)
        self._channel = ours
        try:
            answer, _ = await self._receive(timeout)
        except TemplateError as e:
            await self.stop()
            raise TemplateError(f"the template of {self.name} did not start: {e}") from None
        if "error" in answer:
            await self.stop()
            raise TemplateError(f"the template of {self.name} did not start: {answer['error']}")
        log.info("Template of %s ready (pid %d%s)", self.name, self.process.pid,
                 f", preloaded {', '.join(self.preload)}" if self.preload else "")
        self._watcher = asyncio.create_task(self._reap(), name=f"template-{self.name}")

    async def _reap(self) -> None:
        """Reap the template as soon as it dies: the next kernel it would have forked starts a new one."""
        await exited(self.process.pid)
        log.warning("Template of %s exited (code %s)", self.name, self.process.wait())

    async def fork(self, argv: list[str], env: Mapping[str, str], cwd: str, stdio: list[int],
                   timeout: float) -> tuple[int, int]:
        """The forked kernel's pid and pidfd."""
        async with self._lock:
            if not self.alive:
                raise TemplateError("the template is not running")
            request = json.dumps({"argv": argv, "env": dict(env), "cwd": cwd}).encode()
            with _subreaper():
                try:
                    socket.send_fds(self._channel, [request], stdio)
                except OSError as e:
                    raise TemplateError(f"the request could not be sent: {e}") from None
                try:
                    answer, fds = await self._receive(timeout)
                except BaseException:
                    # An answer may still come, and would be taken for the next request's: a template
                    # out of step is killed, and started again for the next kernel.
                    self.process.kill()
                    raise
        if "error" in answer:
            raise TemplateError(answer["error"])
        return answer["pid"], fds[0]

    async def _receive(self, timeout: float) -> tuple[dict, list[int]]:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(self._channel, lambda: readable.done() or readable.set_result(None))
        try:
            async with asyncio.timeout(timeout):
                await readable
            data, fds, _, _ = socket.recv_fds(self._channel, MAX_MESSAGE, 1)
        except TimeoutError:
            raise TemplateError(f"no answer within {timeout:g} s") from None
        except OSError as e:
            raise TemplateError(str(e)) from None
        finally:
            loop.remove_reader(self._channel)
        if not data:
            raise TemplateError("the template exited")
        return json.loads(data), fds

    async def stop(self, wait: float = 5.0) -> None:
        """Close the channel (the template exits on its own), then SIGKILL after the deadline."""
        if self._watcher:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._channel:
            self._channel.close()
            self._channel = None
        if self.process:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.process.wait), wait)
            except TimeoutError:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        await self.output.close()


class Templates:
    """The templates of this supervisor, by kernelspec name."""

    def __init__(self, preload: tuple[str, ...], timeout: float):
        self.preload = preload
        self.timeout = timeout
        self._templates: dict[str, Template] = {}
        self._revivals: dict[str, asyncio.Task] = {}

    async def start(self, specs: Mapping[str, Mapping[str, str]], now: set[str]) -> None:
        """A template per kernelspec name, with its environment: started at once for the names in `now`
        (a module that cannot be preloaded is then fatal), for the others when a kernel first needs one."""
        for name, env in specs.items():
            template = self._templates[name] = Template(name, env, self.preload)
            if name in now:
                try:
                    await template.start(self.timeout)
                except TemplateError:
                    await self.close()
                    raise

    def get(self, name: str) -> Template | None:
        return self._templates.get(name)

    def revive(self, template: Template) -> None:
        """Start a template that died or never ran, in the background, one start at a time."""
        running = self._revivals.get(template.name)
        if not running or running.done():
            self._revivals[template.name] = asyncio.create_task(self._revive(template), name=f"template-{template.name}")

    async def _revive(self, template: Template) -> None:
        log.info("Starting the template of %s", template.name)
        await template.stop()
        try:
            await template.start(self.timeout)
        except TemplateError as e:
            log.error("%s; its kernels are launched the ordinary way", e)

    async def close(self) -> None:
        for task in self._revivals.values():
            task.cancel()
        await asyncio.gather(*self._revivals.values(), return_exceptions=True)
        await asyncio.gather(*(t.stop() for t in self._templates.values()), return_exceptions=True)
        self._templates.clear()


def open_stdio(stdout: object, stderr: object) -> list[int]:
    """Descriptors for a kernel's stdin (/dev/null), stdout and stderr: the launch arguments' own, or the
    supervisor's, as a launched kernel would inherit them."""
    fds = [os.open(os.devnull, os.O_RDONLY)]
    for given, default in ((stdout, 1), (stderr, 2)):
        fd = given if isinstance(given, int) else given.fileno() if given is not None else default
        fds.append(os.dup(fd))
    return fds


@contextlib.contextmanager
def _subreaper():
    """Adopt the orphans of descendants for a moment: the kernel whose middle process exits meanwhile."""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(was))
    if not was.value:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        yield
    finally:
        if not was.value:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0)
