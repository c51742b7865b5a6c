"""Kernels on another host: gateway_provisioners' SSH provisioner launching ipykernel on hosts made for
the run (network and pid namespaces with their own sshd, as the tests make them: tests/hosts.py; root
only). This gateway beside raw jupyter_client driving the same kernelspec through the same provisioner,
in the same run: the execute round trip, POST to the first kernel_info_reply, a requested restart to
the restarted kernel's first reply, and what remote kernels do to REST latency and the supervisor's
idle CPU.

Raw jupyter_client hosts gateway_provisioners' response manager on a thread of its own, as this gateway
does: on its event loop, its 0.1 ms poll (each poll blocking up to 10 ms) would slow the raw client's
own round trips and flatter the comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.session import Session

from kernels_gateway.supervisor.remote import response_manager
from tests.hosts import hosts, missing, ssh_kernelspec  # the hosts the tests make (the run starts in the checkout)

from .clients import RawKernel
from .messages import _execute
from .results import Results, percentile
from .settings import Settings
from .starts import first_reply
from .targets import RAW, READY_TIMEOUT, STOP_GRACE, THIS, Fleet, ThisGateway, cpu_ticks

REMOTE = "remote"
SPEC = "ssh_python"
REST_SAMPLES = 300
IDLE_SECONDS = 5.0


class RemoteRaw:
    """Remote kernels started and driven in this process by jupyter_client through the kernelspec's provisioner."""

    name = RAW
    protocols = ("zmq",)

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="kgb-", dir="/tmp"))
        self.managers: dict[str, AsyncKernelManager] = {}

    async def start_kernel(self, body: dict | None = None) -> str:
        kernel_id = str(uuid.uuid4())
        manager = AsyncKernelManager(kernel_name=SPEC, connection_file=str(self.folder / f"kernel-{kernel_id}.json"))
        self.managers[kernel_id] = manager
        await manager.start_kernel(kernel_id=kernel_id, env={**os.environ, **(body or {}).get("env", {})})
        return kernel_id

    async def restart_kernel(self, kernel_id: str) -> None:
        await self.managers[kernel_id].restart_kernel(now=False)

    async def delete_kernel(self, kernel_id: str) -> None:
        manager = self.managers.pop(kernel_id)
        await asyncio.wait_for(manager.shutdown_kernel(now=True), STOP_GRACE)

    async def connect(self, kernel_id: str, v1: bool = False) -> RawKernel:
        manager = self.managers[kernel_id]
        client = manager.client(session=Session(key=manager.session.key, signature_scheme=manager.session.signature_scheme))
        client.start_channels()
        await client.wait_for_ready(timeout=READY_TIMEOUT)
        return RawKernel(client)

    async def close(self) -> None:
        await asyncio.gather(*(self.delete_kernel(k) for k in list(self.managers)), return_exceptions=True)
        shutil.rmtree(self.folder, ignore_errors=True)


async def remote(fleet: Fleet, settings: Settings, results: Results) -> None:
    if why := missing():
        results.note(REMOTE, f"not measured: {why}")
        return
    with hosts(2) as (made, env), tempfile.TemporaryDirectory(prefix="kgb-specs-") as specs:
        jupyter_path = ssh_kernelspec(Path(specs), SPEC, made)
        saved = dict(os.environ)
        os.environ.update(env, JUPYTER_PATH=f"{jupyter_path}{os.pathsep}{os.environ.get('JUPYTER_PATH', '')}")
        try:
            targets = []
            async with contextlib.AsyncExitStack() as stack:
                if THIS in fleet.names:
                    # The execute workload starts the default kernel: without this, a local one.
                    targets.append(await stack.enter_async_context(
                        ThisGateway("--pool", "none", "--workers", "1", "--default-kernel-name", SPEC)))
                if RAW in fleet.names:
                    await stack.enter_async_context(response_manager(KernelSpecManager()))
                    raw = RemoteRaw()
                    stack.push_async_callback(raw.close)
                    targets.append(raw)
                await _measure(targets, settings, results)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    results.note(REMOTE, "two hosts on this machine (network and pid namespaces, OpenSSH), TCP over veth; "
                         "raw jupyter_client's response manager on a thread of its own, as this gateway's")


async def _measure(targets, settings: Settings, results: Results) -> None:
    ours = [t for t in targets if t.name == THIS]
    before = await _rest_latency(ours[0], results, "no remote kernel") if ours else None
    # Execute round trips, the targets in turn (messages.py), on a remote kernel each.
    await _execute(targets, settings, results, REMOTE)
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    restarts: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(settings.start_samples):
        for target in targets:
            kernel_id, seconds = await first_reply(target, {"name": SPEC} if target.name == THIS else {},
                                                   settings.request_timeout)
            if seconds is not None:
                samples[target.name].append(seconds)
            restarts[target.name].append(await _restart(target, kernel_id))
            await target.delete_kernel(kernel_id)
    for name in samples:
        results.latency(REMOTE, "POST to first kernel_info_reply {p}", name, samples[name])
        results.latency(REMOTE, "restart to first kernel_info_reply {p}", name, restarts[name])
    if ours:
        gateway = ours[0]
        running = [await gateway.start_kernel({"name": SPEC}) for _ in range(2)]
        after = await _rest_latency(gateway, results, "2 remote kernels")
        if before and after:
            results.note(REMOTE, f"REST p50 with 2 remote kernels / without: {after / before:.2f}")
        pid = gateway.kernels_pid()
        ticks = cpu_ticks(pid)
        await asyncio.sleep(IDLE_SECONDS)
        cpu = 100 * (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK") / IDLE_SECONDS
        results.record(REMOTE, "supervisor idle CPU (2 remote kernels)", THIS, round(cpu, 2), "%")
        for kernel_id in running:
            await gateway.delete_kernel(kernel_id)


async def _restart(target, kernel_id: str) -> float:
    """A requested restart until the restarted kernel answers kernel_info on a fresh connection."""
    began = time.perf_counter()
    if target.name == THIS:
        async with target.http.post(f"{target.url}/api/kernels/{kernel_id}/restart") as r:
            if r.status != 200:
                raise RuntimeError(f"restart: {r.status} {(await r.text())[:300]}")
    else:
        await target.restart_kernel(kernel_id)
    client = await target.connect(kernel_id, v1=False)
    try:
        await client.kernel_info(60)
    finally:
        await client.close()
    return time.perf_counter() - began


async def _rest_latency(gateway, results: Results, kind: str) -> float | None:
    """GET /api/kernels/{id} of a local kernel, one request at a time: p50 and p99."""
    kernel_id = await gateway.start_kernel({"name": "python3"})
    seconds = []
    try:
        for _ in range(REST_SAMPLES):
            began = time.perf_counter()
            async with gateway.http.get(f"{gateway.url}/api/kernels/{kernel_id}") as r:
                await r.read()
            seconds.append(time.perf_counter() - began)
    finally:
        await gateway.delete_kernel(kernel_id)
    results.latency(REMOTE, f"GET a local kernel's model {{p}} ({kind})", THIS, seconds)
    return percentile(seconds, 50)
