"""`--profile`: py-spy samples each process of this gateway (the supervisor, every web worker) while a
workload runs against it, without pausing them. Each recording is kept as collapsed stacks (for
flamegraph.pl or speedscope) and summed up in profiles.md: where the busy samples went, by package and
by function, counting each sample for the function it was in. Run it before a change and after it,
and compare the two summaries."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .targets import ThisGateway

RATE = 200  # samples per second
STOP_GRACE = 30.0  # for py-spy to write its file once interrupted
TOP_FUNCTIONS = 12


def check_available() -> None:
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy: pip install -e '.[benchmarks]'")


def leaf_package(frame: str) -> str:
    """`Socket.send (zmq/sugar/socket.py:713)` -> `zmq`; `select (selectors.py:451)` -> `selectors`."""
    where = frame.rpartition("(")[2].rstrip(")").rpartition(":")[0]
    return where.split("/")[0].removesuffix(".py") or "?"


def summary(title: str, stacks: Path, seconds: float) -> str:
    """Markdown: busy samples per package and the functions that held the most, as shares of all
    busy samples (py-spy leaves out a thread's samples while it sleeps in a system call)."""
    own: Counter[str] = Counter()
    for line in stacks.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            own[stack.rpartition(";")[2]] += int(count)
    busy = sum(own.values())
    core_share = busy / (RATE * seconds) if seconds else 0.0
    lines = [f"### {title}", "",
             f"{busy} busy samples in {seconds:.1f} s at {RATE}/s: {core_share:.0%} of one core. "
             f"Stacks: `{stacks.name}`.", ""]
    if not busy:
        return "\n".join(lines + [""])
    packages: Counter[str] = Counter()
    for frame, count in own.items():
        packages[leaf_package(frame)] += count
    lines += ["| package | share |", "|---|---|"]
    lines += [f"| {name} | {count / busy:.1%} |" for name, count in packages.most_common()]
    lines += ["", "| function (first line) | share |", "|---|---|"]
    lines += [f"| `{frame}` | {count / busy:.1%} |" for frame, count in own.most_common(TOP_FUNCTIONS)]
    return "\n".join(lines + ["", ""])


class Profiler:
    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.report = folder / "profiles.md"
        self.report.write_text("# Profiles\n\nBusy samples of this gateway's processes, by workload.\n\n")
        self._recordings = 0

    @contextlib.asynccontextmanager
    async def recording(self, gateway: "ThisGateway", workload: str):
        """Sample every process of `gateway` until the block ends, then add their summaries."""
        self._recordings += 1
        started = time.monotonic()
        recorders = []
        for role, pid in gateway.processes():
            stacks = self.folder / f"{self._recordings:02d}-{workload}-{role}-{pid}.txt"
            command = ["py-spy", "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
                       "--function", "--nonblocking", "--output", str(stacks)]
            recorder = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
            recorders.append((f"{workload}: {role} (pid {pid}, {' '.join(gateway.args) or 'defaults'})",
                              stacks, recorder))
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            for _, _, recorder in recorders:
                recorder.send_signal(signal.SIGINT)
            for title, stacks, recorder in recorders:
                try:
                    _, errors = await asyncio.wait_for(asyncio.to_thread(recorder.communicate), STOP_GRACE)
                except TimeoutError:
                    recorder.kill()
                    errors = recorder.communicate()[1]
                with self.report.open("a") as report:
                    if stacks.exists():
                        report.write(summary(title, stacks, seconds))
                    else:
                        report.write(f"### {title}\n\nnot recorded: {errors.decode(errors='replace')[-500:]}\n\n")
