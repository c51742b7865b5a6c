"""The benchmark suite's smallest run, against this gateway only: the harness must keep working. It
measures nothing worth reading and asserts nothing about time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import WORKLOADS

REPO = Path(__file__).resolve().parent.parent
STOP_GRACE = 60  # seconds a SIGTERMed run has to remove its gateways, kernels and hosts


def run_benchmarks(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`python -m benchmarks ARGS`, its output once it has exited. One still running when the block ends
    (past `timeout`, or the test's own deadline) gets SIGTERM, on which it removes what it made as after
    an error, then SIGKILL."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks", *args], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.communicate(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


@pytest.mark.timeout(300 + STOP_GRACE + 10)  # it takes 90 s on an idle two-core machine, more on a loaded one
def test_quick_run_against_this_gateway(tmp_path):
    run = run_benchmarks("--quick", "--targets", "this", "--out", str(tmp_path), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    failures = [f"{w}: {n}" for w, notes in results["notes"].items() for n in notes if "failed:" in n]
    assert not failures, run.stderr
    measured = {m["workload"] for m in results["measures"] if m["target"] == "kernels-gateway" and m["value"] is not None}
    assert measured == set(WORKLOADS)
    assert {m["target"] for m in results["measures"]} == {"kernels-gateway"}
    by_measure = {(m["workload"], m["measure"]): m["value"] for m in results["measures"]}
    assert by_measure["idle-websockets", "10 websockets: open"] == 10
    assert by_measure["concurrent-starts", "2 at once: answered"] == 2
    assert by_measure["output", "delivered (v1)"] == 100
    table = (tmp_path / "results.md").read_text()
    assert "| execute | round trip p50 (legacy) | ms |" in table
    assert table in run.stdout
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")


def test_profile_samples_every_process_of_this_gateway(tmp_path):
    run = run_benchmarks("--quick", "--targets", "this", "--workloads", "execute",
                         "--samples", "200",  # seconds of relaying to sample
                         "--profile", "--out", str(tmp_path), timeout=100)
    assert run.returncode == 0, run.stdout + run.stderr
    profiles = tmp_path / "profiles"
    stacks = {path.name.split("-")[2]: path.read_text() for path in profiles.glob("*.txt")}
    assert set(stacks) == {"supervisor", "web"}, sorted(profiles.iterdir())
    assert "kernels_gateway/gateway/" in stacks["web"]  # the worker's own code, caught relaying
    summary = (profiles / "profiles.md").read_text()
    assert summary.count("busy samples in") == 2 and "not recorded" not in summary
    assert "| package | share |" in summary
