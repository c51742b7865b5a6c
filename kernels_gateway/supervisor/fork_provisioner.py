"""A kernel provisioner that forks Python kernels from their kernelspec's template (`templates.py`) and
launches every other kernel the way jupyter_client's LocalProvisioner does.

Registered as `fork-provisioner` under the `jupyter_client.kernel_provisioners` entry point; the supervisor
makes it the default provisioner unless `--fork none`. A forked kernel is a LocalProvisioner kernel in
all but its parent: the same pid and process group in the records, signals to its group, its exit seen
through a pidfd, so interrupt, restart, adoption and the keeper need nothing of their own.

A kernel is launched instead of forked, with a log line saying why, when its command is not the
gateway's interpreter running ipykernel_launcher, when its environment differs from its template's in a
name that changes what imports see, when a launch argument asks for what a fork cannot give, or when the
template is not running (it is then started again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import select
import subprocess
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerFactory, LocalProvisioner

from ..errors import CannotStart
from .process import AdoptedProcess
from .templates import Template, TemplateError, Templates, open_stdio

if TYPE_CHECKING:
    from .kernels import Kernels

log = logging.getLogger("kernels_gateway.supervisor")

FORK_TIMEOUT = 10.0
# Names read as modules are found and imported (interpreter, loader, numeric libraries' thread pools):
# a kernel whose environment changes one of them needs an interpreter of its own.
IMPORT_ENV = re.compile(r"PATH|VIRTUAL_ENV|PYTHON.*|LD_.*|CONDA_.*|OMP_.*|MKL_.*|OPENBLAS_.*|NUMEXPR_.*")
LAUNCHERS = (["-m", "ipykernel_launcher"], ["-m", "ipykernel"])
# What jupyter_client passes to every launch; anything else is a request a fork may not honour.
FORKABLE_ARGUMENTS = {"env", "cwd", "independent", "stdout", "stderr", "extra_arguments", "kernel_id"}

_templates: Templates | None = None


def use(templates: Templates | None) -> None:
    """The templates this process forks from (None: launch every kernel)."""
    global _templates
    _templates = templates


def forks_python(argv: list[str]) -> bool:
    """Whether a kernelspec's command is this interpreter (as jupyter_client names it) running ipykernel_launcher."""
    major, minor = sys.version_info[:2]
    return bool(argv) and argv[0] in {sys.executable, "python", f"python{major}", f"python{major}.{minor}"} \
        and argv[1:3] in LAUNCHERS


def import_env_changes(env: Mapping[str, str], template: Mapping[str, str]) -> list[str]:
    return sorted(k for k in set(env) | set(template) if env.get(k) != template.get(k) and IMPORT_ENV.fullmatch(k))


STDIO = ("stdout", "stderr")


class ForkedProcess(AdoptedProcess):
    """A forked kernel seen through the pidfd its template sent, which names the process for good; our
    child, so we reap it and learn its exit code."""

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self.returncode = None
        self._fd = pidfd

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # not ours after all (no subreaper): its parent reaps it
                self.returncode = 0
            os.close(self._fd)
        return self.returncode


class ForkProvisioner(LocalProvisioner):
    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        template, why = self._template(cmd, kwargs)
        if template:
            try:
                return await self._fork(template, cmd, kwargs)
            except TemplateError as e:
                why = f"the template of {template.name} failed to fork: {e}"
                if not template.alive:
                    _templates.revive(template)
        log.info("Kernel %s launched, not forked: %s", self.kernel_id, why)
        return await super().launch_kernel(cmd, **kwargs)

    def _template(self, cmd: list[str], kwargs: dict[str, Any]) -> tuple[Template | None, str]:
        name = self.parent.kernel_name if self.parent else ""
        template = _templates.get(name) if _templates else None
        if template is None:
            return None, f"no template for kernelspec {name} (another interpreter or launcher)"
        if os.path.abspath(cmd[0]) != sys.executable or cmd[1:3] not in LAUNCHERS:
            return None, f"its command {cmd[0]} {' '.join(cmd[1:3])} is not this interpreter's ipykernel_launcher"
        unusual = sorted(set(kwargs) - FORKABLE_ARGUMENTS)
        if unusual:
            return None, f"launch arguments a fork cannot honour: {', '.join(unusual)}"
        if any(kwargs.get(k) not in (None, subprocess.PIPE) and not _has_fd(kwargs[k]) for k in STDIO):
            return None, "its stdout or stderr is not a file"
        changes = import_env_changes(kwargs.get("env") or os.environ, template.env)
        if changes:
            return None, f"its environment changes what imports see: {', '.join(changes)}"
        if not template.alive:
            _templates.revive(template)
            return None, f"the template of {name} is not running"
        return template, ""

    async def _fork(self, template: Template, cmd: list[str], kwargs: dict[str, Any]) -> KernelConnectionInfo:
        cwd = str(kwargs.get("cwd") or os.getcwd())
        # Pipes asked for (the supervisor logs what kernels print) are made here, as Popen would make them.
        pipes = {name: os.pipe() if kwargs.get(name) == subprocess.PIPE else None for name in STDIO}
        stdio = open_stdio(*(pipe[1] if pipe else kwargs.get(name) for name, pipe in pipes.items()))
        for pipe in pipes.values():
            if pipe:
                os.close(pipe[1])  # the kernel's copy is in stdio
        exchange = asyncio.ensure_future(
            template.fork(cmd[3:], kwargs.get("env") or os.environ, cwd, stdio, FORK_TIMEOUT)
        )
        try:
            pid, pidfd = await asyncio.shield(exchange)
        except asyncio.CancelledError:
            # The kernel may be forked already: hold on to it, so that the shutdown that follows a
            # cancelled start stops it too.
            with contextlib.suppress(Exception):
                pid, pidfd = await exchange
                self.process, self.pid, self.pgid = ForkedProcess(pid, pidfd), pid, pid
            _close_read_ends(pipes)
            raise
        except BaseException:
            _close_read_ends(pipes)
            raise
        finally:
            for fd in stdio:
                os.close(fd)
        self.process = ForkedProcess(pid, pidfd)
        for name, pipe in pipes.items():
            if pipe:
                setattr(self.process, name, os.fdopen(pipe[0], "rb", buffering=0))
        self.pid = self.pgid = pid  # the kernel leads a session of its own
        self.cwd = cwd
        log.debug("Kernel %s forked from the template of %s (pid %d)", self.kernel_id, template.name, pid)
        return self.connection_info


def _close_read_ends(pipes: dict[str, tuple[int, int] | None]) -> None:
    for pipe in pipes.values():
        if pipe:
            os.close(pipe[0])


def _has_fd(stream: object) -> bool:
    if isinstance(stream, int):
        return stream >= 0
    try:
        return stream.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        return False


async def start_templates(kernels: Kernels, fork: str, preload: tuple[str, ...], first: str = "") -> Templates | None:
    """With forking on: a template per Python kernelspec, and this provisioner as the default one (kernelspecs
    that name a provisioner keep theirs). A module that cannot be preloaded stops the start-up."""
    if fork == "none":
        return None
    specs = {}
    for name, found in kernels.specs.get_all_specs().items():  # those whose provisioner is missing are left out
        spec = found["spec"]
        if forks_python(spec.get("argv", [])) and not spec.get("metadata", {}).get("kernel_provisioner"):
            specs[name] = {**kernels.env.kernel({}), **spec.get("env", {})}
    templates = Templates(preload, kernels.config.kernel_start_timeout)
    # Those of the kernels about to start: the first ones, the default kernelspec's and the warm pool's.
    now = {(kernels.config.force_kernel_name or first or kernels.default_name).lower(), kernels.default_name.lower(),
           *(name for name, _ in kernels.config.pool_sizes)}
    try:
        await templates.start(specs, now)
    except TemplateError as e:
        raise CannotStart(str(e)) from None
    KernelProvisionerFactory.instance().default_provisioner_name = "fork-provisioner"
    use(templates)
    return templates
