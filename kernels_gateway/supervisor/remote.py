"""What kernels on other hosts need beyond what jupyter_client does for them (gateway_provisioners'
provisioners: SSH, Kubernetes, Docker, YARN).

- gateway_provisioners' ResponseManager, which receives each launched kernel's connection info, polls
  its socket every 0.1 ms, each poll blocking up to 10 ms, on the event loop of whoever creates it
  first: on the supervisor's it would slow every REST call. It is created here, before any provisioner,
  on an event loop of its own in a thread of its own; only the connection info it receives is handed to
  the supervisor's loop.
- Values of a start request's env that the SSH provisioner writes into the command line it runs on a
  host (unquoted, in double quotes) must be plain words: anything else is refused before launch.
- A remote provisioner's calls that reach its host (a launch over SSH with paramiko, whose connect has
  no timeout; a poll, a signal or a kill, TCP connects to the kernel's listener) are synchronous in
  places, and a host that silently drops packets would hold whatever event loop runs them for as long
  as the operating system retries a TCP connect (minutes). Each runs on a thread of its own, with an
  event loop of its own, under a deadline (attach): the supervisor's loop never waits on a host.
- A remote kernel is adopted through its provisioner's own saved state, and ended through it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.provisioning import KernelProvisionerBase, KernelProvisionerFactory

from ..errors import BadRequest
from .liveness import ended_remote, is_remote

log = logging.getLogger("kernels_gateway.supervisor")

LOCAL_PROVISIONERS = frozenset({"local-provisioner", "fork-provisioner"})
# The SSH provisioner builds `export KERNEL_USERNAME="VALUE";...` for the host's shell.
COMMAND_LINE_ENV = frozenset({"KERNEL_USERNAME", "GP_IMPERSONATION_ENABLED"})
PLAIN_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
THREAD_STOP_TIMEOUT = 5.0
# gateway_provisioners reaches a kernel's listener (to poll or signal it) with a TCP connect that waits
# GP_SOCKET_TIMEOUT seconds, 10 ms by default: on a busy machine a live kernel then looks dead, and a
# SIGTERM is lost. 50 ms holds; the wait is spent only on a host that does not answer.
os.environ.setdefault("GP_SOCKET_TIMEOUT", "0.05")
# The calls of a remote provisioner that reach its host, and the bound on each but the launch, whose
# bound is the provisioner's own launch timeout. A kill polls the host for up to 5 s after its SIGTERM.
HOST_CALLS = ("launch_kernel", "poll", "send_signal", "kill", "terminate", "wait", "cleanup", "shutdown_requested")
HOST_CALL_TIMEOUT = 15.0
DEFAULT_LAUNCH_TIMEOUT = 30.0
# The event loop each launch in progress waits on for its kernel's connection info, by kernel id.
_launches: dict[str, asyncio.AbstractEventLoop] = {}


def remote_provisioner(spec: Any) -> str | None:
    """The name of the remote provisioner a kernelspec names, if it names one."""
    found = (spec.metadata or {}).get("kernel_provisioner", {}).get("provisioner_name")
    return found if found and found not in LOCAL_PROVISIONERS else None


def check_env(spec: Any, requested: Mapping[str, str]) -> None:
    """Refuse a request's env values that would reach a remote shell as something other than a word."""
    if not remote_provisioner(spec):
        return
    for key in COMMAND_LINE_ENV & requested.keys():
        if not PLAIN_WORD.fullmatch(requested[key]):
            raise BadRequest(f"env {key} must be a plain name (letters, digits, '_', '.', '@', '-') for "
                             f"kernels on other hosts: it is part of the command their host runs")


@contextlib.asynccontextmanager
async def response_manager(specs: KernelSpecManager) -> AsyncIterator[None]:
    """gateway_provisioners' ResponseManager on a thread of its own, while any kernelspec names a
    remote provisioner; nothing otherwise."""
    names = {remote_provisioner(found) for found in _specs(specs).values()} - {None}
    try:
        from gateway_provisioners.response_manager import ResponseManager
    except ImportError:
        ResponseManager = None
    if not names or ResponseManager is None:
        yield
        return
    supervisor = asyncio.get_running_loop()
    started: asyncio.Future[asyncio.AbstractEventLoop] = supervisor.create_future()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # tornado's PeriodicCallback runs on the thread's current loop
        try:
            manager = ResponseManager.instance()
            post = manager._post_connection
            # A registry's event belongs to the loop its launch waits on (attach).
            manager._post_connection = lambda payload: _launches.get(
                payload.get("kernel_id"), supervisor).call_soon_threadsafe(post, payload)
        except BaseException as e:
            supervisor.call_soon_threadsafe(started.set_exception, e)
            return
        supervisor.call_soon_threadsafe(started.set_result, loop)
        try:
            loop.run_forever()
        finally:
            manager.stop_response_manager()
            loop.close()

    thread = threading.Thread(target=run, name="response-manager", daemon=True)
    thread.start()
    loop = await asyncio.wait_for(started, THREAD_STOP_TIMEOUT * 6)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, THREAD_STOP_TIMEOUT)


def attach(manager: AsyncKernelManager) -> KernelProvisionerBase | None:
    """Give a manager a new instance of the remote provisioner its kernelspec names, each of its calls
    that reach the host run on a thread of its own, under a deadline; None (and nothing changed) when
    the kernelspec's provisioner is not remote.

    A call that misses its deadline fails with TimeoutError, and its thread is left to end with the
    operating system's TCP timeouts. A launch given up on keeps its provisioner on its thread: if it
    completes after all, its kernel is ended there and then, so that none runs on that nobody owns, and
    the manager gets a new provisioner for whatever comes next (a restart, its cleanup), whose state the
    late launch cannot touch.

    The provisioner's methods are replaced on this one instance (jupyter_client calls them; their code
    is untouched): only where and for how long they run changes."""
    provisioner = KernelProvisionerFactory.instance().create_provisioner_instance(
        manager.kernel_id, manager.kernel_spec, parent=manager)
    if not is_remote(provisioner):
        return None
    originals = {name: getattr(provisioner, name) for name in HOST_CALLS}

    async def launch_here(*args: Any, **kwargs: Any) -> Any:
        _launches[provisioner.kernel_id] = asyncio.get_running_loop()
        try:
            return await originals["launch_kernel"](*args, **kwargs)
        finally:
            _launches.pop(provisioner.kernel_id, None)

    def given_up(ran: concurrent.futures.Future) -> None:
        if manager.provisioner is provisioner:
            attach(manager)
        # Where the launch ends (or here, at once, if it just has): never on the supervisor's loop.
        ran.add_done_callback(lambda ran: threading.Thread(target=asyncio.run, args=(end_late(ran),),
                                                           daemon=True).start())

    async def end_late(ran: concurrent.futures.Future) -> None:
        ended: bool | str = True
        try:
            if not ran.cancelled() and ran.exception() is None:
                log.warning("Kernel %s: launched on %s after its start was given up; ending it",
                            provisioner.kernel_id, provisioner.assigned_host)
                ended = await ended_remote(provisioner)
            await originals["cleanup"]()
        except Exception as e:
            ended = f"{type(e).__name__}: {e}"
        if ended is not True:
            log.error("Kernel %s on %s could not be ended (%s)", provisioner.kernel_id,
                      provisioner.assigned_host, ended or "its host does not answer")

    for name in HOST_CALLS:
        if name == "launch_kernel":
            timeout = float(getattr(provisioner, "launch_timeout", DEFAULT_LAUNCH_TIMEOUT))
            call, late = launch_here, given_up
        else:
            call, late, timeout = originals[name], None, HOST_CALL_TIMEOUT
        setattr(provisioner, name, functools.partial(_on_a_thread, provisioner, name, call, timeout, late))
    manager.provisioner = provisioner
    return provisioner


async def _on_a_thread(provisioner: Any, name: str, call: Any, timeout: float, late: Any, *args: Any,
                       **kwargs: Any) -> Any:
    ran: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        ran.set_running_or_notify_cancel()
        try:
            ran.set_result(asyncio.run(call(*args, **kwargs)))
        except BaseException as e:
            ran.set_exception(e)

    threading.Thread(target=run, name=f"{name}-{provisioner.kernel_id}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(ran)), timeout)
    except BaseException as e:
        if ran.done():
            raise  # the call's own outcome
        # The deadline, or the caller cancelled: the call runs on, given up.
        if late is not None:
            late(ran)
        if isinstance(e, TimeoutError):
            host = getattr(provisioner, "assigned_host", "") or "its host"
            raise TimeoutError(f"{host} did not answer within {timeout:g} s ({name})") from None
        raise


def _specs(specs: KernelSpecManager) -> dict[str, Any]:
    found = {}
    for name in specs.find_kernel_specs():
        with contextlib.suppress(Exception):
            found[name] = specs.get_kernel_spec(name)
    return found


async def adopted_manager(record: dict[str, Any], specs: KernelSpecManager, shutdown_wait: float,
                          launch_args: dict[str, Any]) -> AsyncKernelManager | None:
    """A manager for a remote kernel another supervisor started, from its provisioner's saved state;
    None when the kernelspec's provisioner is not remote (the record is then a local kernel's)."""
    manager = AsyncKernelManager(kernel_name=record["name"], kernel_id=record["id"], kernel_spec_manager=specs,
                                 connection_file=record["connection_file"], shutdown_wait_time=shutdown_wait)
    provisioner = attach(manager)
    if provisioner is None:
        return None
    await provisioner.load_provisioner_info(dict(record.get("provisioner") or {}))
    manager.load_connection_info(provisioner.connection_info)
    manager._launch_args = launch_args
    manager._attempted_start = True
    manager._connect_control_socket()
    return manager


async def end(record: dict[str, Any], specs: KernelSpecManager) -> bool | None:
    """Kill a remote kernel that nobody will adopt, through its provisioner: True once its end is proven
    (its host answers that it is gone), False while its host does not answer (it may run on there), None
    when the record is not a remote kernel's. Bounded in time: an unreachable host does not hold the
    supervisor."""
    try:
        manager = await adopted_manager(record, specs, 0, {})
    except Exception as e:
        log.warning("Kernel %s: its provisioner cannot be restored (%s)", record.get("id"), e)
        return None
    if manager is None:
        return None
    try:
        ended = await ended_remote(manager.provisioner)
        if ended:
            await manager.provisioner.cleanup()
        return ended
    except Exception as e:
        log.warning("Kernel %s on %s could not be killed (%s)", record.get("id"), host_of(manager), e)
        return False
    finally:
        with contextlib.suppress(Exception):
            await manager.cleanup_resources()


def prepare(manager: AsyncKernelManager) -> None:
    """A new manager whose kernelspec names a remote provisioner gets it now (attach), before jupyter_client
    would make one of its own."""
    if remote_provisioner(manager.kernel_spec):
        attach(manager)


def host_of(manager: AsyncKernelManager) -> str:
    """Where a kernel runs, for logs and metrics: its provisioner's host, or `local`."""
    provisioner = manager.provisioner
    if not is_remote(provisioner):
        return "local"
    return str(getattr(provisioner, "assigned_host", "") or manager.get_connection_info().get("ip") or "remote")
