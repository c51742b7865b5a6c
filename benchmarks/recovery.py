"""Recovery: a kernel killed with SIGKILL, and the time until it answers again on the same websocket.

This gateway restarts a dead kernel under the same id, in place (`--pool none`) or by handing the id to
a warm spare (`--pool python3=1`); Kernel Gateway's restarter finds the death by polling. The clock
runs from a cell that kills its own kernel to the reply of an `execute_request` sent right after it,
on the websocket that was open before: what a user who hit run again would wait.
"""

from __future__ import annotations

import time

from .results import Results
from .settings import Settings
from .targets import KG, THIS, Fleet, settled_kernels

RECOVERY = "recovery"
ANSWERS_AGAIN = "killed kernel answers again {p} ({kind})"
RETRY = 0.2


async def recovery(fleet: Fleet, settings: Settings, results: Results) -> None:
    for name, args, kind in ((THIS, ("--pool", "python3=1"), "warm spare"), (THIS, ("--pool", "none"), "in place"),
                             (KG, (), "in place")):
        if name in fleet.names:
            with results.guard(RECOVERY, name):
                async with fleet.running([name], *args) as [target]:
                    await _recover(target, kind, settings, results)


async def _recover(target, kind: str, settings: Settings, results: Results) -> None:
    samples = []
    for _ in range(settings.start_samples):
        # A kernel of its own each time: one that dies again and again within seconds of starting is,
        # rightly, given up on after a few restarts.
        await settled_kernels(target.folder)  # the pool refilled, the last kernel gone
        kernel_id = await target.start_kernel({})
        client = await target.connect(kernel_id, v1=False)
        try:
            await client.execute("1", settings.request_timeout)
            await settled_kernels(target.folder, 1)
            killed = time.perf_counter()
            # The kernel kills itself: no need to know which process holds the id.
            await client.execute("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 0.01)
            # Asked again every 0.2 s: a request that reached the dying process is lost with it, as it
            # would be for any client that did not wait for the `restarting` status.
            outcome = await client.execute("1", RETRY)
            while not outcome.complete and time.perf_counter() - killed < settings.request_timeout:
                outcome = await client.execute("1", RETRY)
            if outcome.complete:
                samples.append(time.perf_counter() - killed)
            else:
                results.note(RECOVERY, f"{target.name} ({kind}): no answer within {settings.request_timeout:g} s")
        finally:
            await client.close()
            await target.delete_kernel(kernel_id)
    results.latency(RECOVERY, ANSWERS_AGAIN.replace("{kind}", kind), target.name, samples)
