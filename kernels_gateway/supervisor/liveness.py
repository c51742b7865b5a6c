"""Whether a kernel still runs: through a pidfd for a kernel whose process is local, through its
provisioner for any other (one on another host, in a pod or a container), whose pid means nothing here.

The one place that tells local kernels from remote ones: a kernel is local when jupyter_client's
LocalProvisioner (or a subclass, such as the fork provisioner) launched it; every other provisioner's
kernel is remote, watched, adopted and ended through the provisioner alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

from jupyter_client import AsyncKernelManager
from jupyter_client.provisioning import KernelProvisionerBase, LocalProvisioner

from .process import exited

POLL_INTERVAL = 1.0  # for a local kernel whose process has no pidfd
# A remote kernel is polled this often; it is declared gone only after this many failed polls in a
# row, since one poll can fail on a busy network (gateway_provisioners' poll is a TCP connect that
# gives up after 10 ms), and a kernel wrongly declared dead would be restarted under its clients.
REMOTE_POLL_INTERVAL = 0.5
REMOTE_MISSES = 2
# Bound on one poll: a provisioner whose poll hangs (an unreachable host) says nothing good about its kernel.
REMOTE_POLL_TIMEOUT = 5.0
# How a remote kernel's end is proven after a SIGKILL: its listener refuses within these probes.
LISTENER_PROBES = 25
LISTENER_PROBE_INTERVAL = 0.2
LISTENER_TIMEOUT = 2.0


def is_remote(provisioner: KernelProvisionerBase | None) -> bool:
    return provisioner is not None and not isinstance(provisioner, LocalProvisioner)


def asked_to_shut_down(provisioner: KernelProvisionerBase | None) -> bool:
    """Whether a kernel's shutdown (and a restart someone asked for) begins with a shutdown request.

    Not for a remote kernel: gateway_provisioners tells the kernel's listener on its host to exit along
    with the request, after which the provisioner can neither signal the kernel nor see it run, so a
    kernel slow to exit (ipykernel can take 29 s) would be left running, unowned. A remote kernel is
    ended through its provisioner instead: SIGTERM, then SIGKILL if it lingers.
    """
    return not is_remote(provisioner)


async def ended_remote(provisioner: KernelProvisionerBase | None) -> bool:
    """SIGKILL a remote kernel through its provisioner before a restart replaces it (the provisioner's own
    kill sends SIGTERM and polls for 5 s, and ipykernel outlives a SIGTERM); whether it is provably gone.

    The provisioner's poll cannot tell a kernel that is gone (its listener's port refuses) from a host
    that does not answer: a kernel replaced while it may still run would run on, owned by nobody. So the
    listener is asked here, and only a refusal counts as the kernel's end. A local kernel, and a remote
    one reached by other means than a listener, are ended by their provisioner's kill.
    """
    port, ip = getattr(provisioner, "comm_port", 0), getattr(provisioner, "comm_ip", None)
    if not is_remote(provisioner) or not port or not ip:
        return True
    with contextlib.suppress(Exception):
        await asyncio.wait_for(provisioner.send_signal(signal.SIGKILL), REMOTE_POLL_TIMEOUT)
    for _ in range(LISTENER_PROBES):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), LISTENER_TIMEOUT)
        except ConnectionRefusedError:
            return True
        except (OSError, TimeoutError):
            return False  # unreachable: nobody can say whether it runs
        # A listener whose kernel is gone exits on the next request it cannot carry out.
        writer.write(json.dumps({"signum": 0}).encode())
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await asyncio.sleep(LISTENER_PROBE_INTERVAL)
    return False


def local_pid(provisioner: KernelProvisionerBase | None, info: dict[str, Any] | None = None) -> int | None:
    """The pid of a local kernel's process (from the provisioner, or its saved info); None for a remote one."""
    if is_remote(provisioner):
        return None
    pid = (info or {}).get("pid") if info is not None else getattr(provisioner, "pid", None)
    return pid if isinstance(pid, int) else None


async def alive(manager: AsyncKernelManager) -> bool:
    """One look at whether the kernel runs, bounded in time."""
    try:
        return await asyncio.wait_for(manager.is_alive(), REMOTE_POLL_TIMEOUT)
    except TimeoutError:
        return False


async def until_exit(manager: AsyncKernelManager) -> None:
    """Return once the kernel's process has exited (at once if it already has)."""
    provisioner = manager.provisioner
    if is_remote(provisioner):
        misses = 0
        while misses < REMOTE_MISSES:
            await asyncio.sleep(REMOTE_POLL_INTERVAL)
            misses = 0 if await alive(manager) else misses + 1
        return
    pid = local_pid(provisioner)
    if pid and await manager.is_alive():
        await exited(pid)
    else:
        while await manager.is_alive():
            await asyncio.sleep(POLL_INTERVAL)
