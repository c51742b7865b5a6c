"""`python -m benchmarks`: run the workloads against this gateway, Kernel Gateway and raw jupyter_client,
print a table of medians and ratios, and write results.json, results.md and results.png."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from . import flood, forks, messages, profile, recovery, remote, report, rest, scale, starts
from .results import Results, describe
from .settings import DEFAULT, QUICK, Settings
from .targets import KG, RAW, REPO, THIS, Fleet, KernelGateway, write_kernelspec

WORKLOADS = {
    "execute": messages.execute,
    "http-execute": messages.http_execute,
    "start": starts.start,
    "output": messages.output,
    "rest": rest.rest,
    "idle-websockets": scale.idle_websockets,
    "concurrent-starts": starts.concurrent_starts,
    "load": scale.load,
    "recovery": recovery.recovery,
    "flood": flood.flood,
    "fork": forks.fork,
    "remote": remote.remote,
}
GROUPS = {"all": list(WORKLOADS), "scale": ["idle-websockets", "concurrent-starts", "load"]}
TARGETS = {"this": THIS, "kg": KG, "raw": RAW}
RESULTS = Path(__file__).resolve().parent / "results"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("-w", "--workloads", default="all",
                   help=f"comma-separated, from: {', '.join([*WORKLOADS, *GROUPS])} (default all)")
    p.add_argument("-t", "--targets", default="this,kg,raw",
                   help="comma-separated: this (this checkout), kg (Kernel Gateway), raw (jupyter_client)")
    p.add_argument("-d", "--duration", type=float,
                   help=f"seconds for each timed workload (REST load, execute load); default "
                        f"{DEFAULT.rest_seconds:g} and {DEFAULT.load_seconds:g}")
    p.add_argument("-n", "--samples", type=int, help=f"execute round trips per client (default {DEFAULT.execute_samples})")
    p.add_argument("--quick", action="store_true", help="the smallest configuration, each server started once for all workloads: "
                        "a smoke run, not a measurement")
    p.add_argument("-o", "--out", type=Path, default=RESULTS, help="folder for the results (default benchmarks/results)")
    p.add_argument("--report", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: redraw the table and the chart of a saved results.json into --out")
    p.add_argument("--profile", action="store_true",
                   help="sample this gateway's processes with py-spy during each workload; stacks and a summary "
                        "go to OUT/profiles")
    p.add_argument("--note", default="", help="a line printed above the table and the chart, such as the machine's state")
    return p


def choose(value: str, known: dict, groups: dict | None = None) -> list:
    chosen = []
    for name in (part.strip() for part in value.split(",") if part.strip()):
        expanded = (groups or {}).get(name, [name])
        for item in expanded:
            if item not in known:
                raise SystemExit(f"unknown name {item!r}; choose from {', '.join(known)}")
            if item not in chosen:
                chosen.append(item)
    return chosen


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return f"{os.cpu_count()} CPUs ({model or platform.machine()}), Linux {platform.release()}"


def versions() -> str:
    import aiohttp
    import ipykernel
    import jupyter_client
    import zmq

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True).stdout
    return (f"kernels-gateway {commit.strip() or 'unknown'}; Python {platform.python_version()}, ipykernel "
            f"{ipykernel.__version__}, jupyter_client {jupyter_client.__version__}, pyzmq {zmq.__version__}, "
            f"aiohttp {aiohttp.__version__}")


def raise_file_limit() -> None:
    """Hundreds of websockets, each with its ZMQ sockets, need more descriptors than the usual 1024 soft
    limit; the servers started from here inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(workloads: list[str], fleet: Fleet, settings: Settings, results: Results, out: Path) -> None:
    # SIGTERM stops the run as an error would: every gateway, kernel and host it made is removed first.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        for workload in workloads:
            print(f"-- {workload}", file=sys.stderr, flush=True)
            fleet.workload = workload
            began = time.monotonic()
            try:
                await WORKLOADS[workload](fleet, settings, results)
            except Exception as e:
                traceback.print_exc()
                results.note(workload, f"failed: {describe(e)}")
            results.meta.setdefault("seconds", {})[workload] = round(time.monotonic() - began, 1)
            results.save(out / "results.json")  # after each workload, so that an interrupted run keeps its part
    finally:
        await fleet.close()


def write_report(results: Results, out: Path) -> None:
    text = report.markdown(results)
    (out / "results.md").write_text(text)
    report.chart(results, out / "results.png")
    print(text)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        write_report(Results.load(args.report), args.out)
        return 0
    workloads = choose(args.workloads, WORKLOADS, GROUPS)
    targets = [TARGETS[t] for t in choose(args.targets, TARGETS)]
    settings = QUICK if args.quick else DEFAULT
    if args.duration:
        settings = settings.with_duration(args.duration)
    if args.samples:
        settings = Settings(**{**asdict(settings), "execute_samples": args.samples})
    raise_file_limit()
    specs = tempfile.TemporaryDirectory(prefix="kgb-specs-")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(write_kernelspec(Path(specs.name))),
                                                                os.environ.get("JUPYTER_PATH")]))
    results = Results(meta={
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "note": args.note,
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "versions": versions(),
        "settings": asdict(settings),
        "load average at start": os.getloadavg(),
    })
    if KG in targets:
        try:
            results.meta["versions"] += "; " + KernelGateway.ensure_installed()
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"Kernel Gateway is not available, measuring without it: {e}", file=sys.stderr)
            results.note("all", f"Kernel Gateway could not be installed: {e}")
            targets.remove(KG)
    stopped = False
    try:
        profiler = None
        if args.profile:
            profile.check_available()
            profiler = profile.Profiler(args.out / "profiles")
        asyncio.run(run(workloads, Fleet(targets, keep=args.quick, profiler=profiler), settings, results, args.out))
    except asyncio.CancelledError:  # SIGTERM: what was measured is still saved and reported
        stopped = True
        results.note("all", "stopped by SIGTERM")
    finally:
        specs.cleanup()
    results.meta["load average at end"] = os.getloadavg()
    results.save(args.out / "results.json")
    write_report(results, args.out)
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
