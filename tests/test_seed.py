"""Seeded kernels (--seed-uri, Kernel Gateway's KG_SEED_URI): a notebook's code cells run in every new
kernel of its language, cold or warm, and again after every restart; a failing cell fails the start."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import nbformat
import pytest
from aiohttp import web

from .conftest import eventually, kernel_pids, serving

SEEDED = "seeded = 'from the seed'\n"


def write_notebook(path: Path, *cells: str, language: str = "python") -> Path:
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# not code"), *map(nbformat.v4.new_code_cell, cells)],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": language}},
    )
    nbformat.write(notebook, path)
    return path


def other_language_kernelspec(folder: Path) -> None:
    """An ipykernel that calls itself another language: the seed is not for it."""
    spec_dir = folder / "kernels" / "other"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "other", "language": "other"}))


async def start(gw, http, name: str = "python3") -> dict:
    async with http.post(f"{gw.url}/api/kernels", json={"name": name}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def seeded_value(connect, gw, kernel_id: str) -> str:
    sock = await connect(kernel_id, gw=gw)
    _, stdout = await sock.execute("print(globals().get('seeded', 'not seeded'), flush=True)")
    await sock.close()
    return stdout.strip()


async def test_cold_kernels_of_the_notebooks_language_are_seeded_and_reseeded(
        start_gateway, http, connect, tmp_path):
    notebook = write_notebook(tmp_path / "seed.ipynb", SEEDED, "import math\nroot = math.sqrt(16)")
    other_language_kernelspec(tmp_path / "specs")
    specs = os.pathsep.join([str(tmp_path / "specs"), os.environ.get("JUPYTER_PATH", "")])
    gw = await start_gateway("--initial-kernels", "0", env={"KG_SEED_URI": str(notebook), "JUPYTER_PATH": specs})
    assert f"Seeding python kernels with 2 cell(s) of {notebook}" in gw.log()

    kernel = await start(gw, http)
    assert await seeded_value(connect, gw, kernel["id"]) == "from the seed"
    sock = await connect(kernel["id"], gw=gw)
    _, stdout = await sock.execute("print(root)")
    assert stdout == "4.0\n"
    await sock.close()

    # A restart asked for, and one after the kernel died, seed the new process too.
    async with http.post(f"{gw.url}/api/kernels/{kernel['id']}/restart") as r:
        assert r.status == 200
    assert await seeded_value(connect, gw, kernel["id"]) == "from the seed"
    (pid,) = kernel_pids(gw.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _restarted(gw, times=2))
    assert await seeded_value(connect, gw, kernel["id"]) == "from the seed"

    other = await start(gw, http, "other")
    assert await seeded_value(connect, gw, other["id"]) == "not seeded"


async def _restarted(gw, times: int) -> bool:
    return gw.log().count("Kernel restarted") == times


@pytest.fixture
async def notebook_server(tmp_path):
    """The seed notebook over HTTP, as a URL names it."""
    app = web.Application()
    app.router.add_static("/", tmp_path)
    async with serving(app) as url:
        yield url


async def test_warm_kernels_are_seeded_before_they_are_taken(start_gateway, http, connect, tmp_path, notebook_server):
    write_notebook(tmp_path / "seed.ipynb", SEEDED)
    gw = await start_gateway("--initial-kernels", "0", "--pool", "python3=1", "--seed-uri",
                             f"{notebook_server}/seed.ipynb", wait_for="Warm kernel ready")
    warm_id = gw.log().split("Warm kernel ready: ")[1].split()[0]
    kernel = await start(gw, http)
    assert kernel["id"] == warm_id, "the start was served by the warm kernel"
    assert await seeded_value(connect, gw, kernel["id"]) == "from the seed"


async def test_a_failing_seed_cell_fails_the_start_with_its_error(start_gateway, http, tmp_path):
    notebook = write_notebook(tmp_path / "seed.ipynb", SEEDED, "raise ValueError('no data today')", "never = 1")
    gw = await start_gateway("--initial-kernels", "0", "--seed-uri", str(notebook))
    async with http.post(f"{gw.url}/api/kernels", json={}) as r:
        assert r.status == 500
        error = await r.json()
    assert error["reason"] == "Internal Server Error"
    assert error["message"] == (f"Kernel python3 failed to start: seed cell 2 of {notebook} failed: "
                                "ValueError: no data today")
    async with http.get(f"{gw.url}/api/kernels") as r:
        assert await r.json() == []
    await eventually(lambda: _no_kernel_process(gw))


async def _no_kernel_process(gw) -> bool:
    return not kernel_pids(gw.runtime_dir)


@pytest.mark.parametrize("problem", ["missing", "not json", "not a notebook", "http 404", "no language"])
async def test_a_seed_that_cannot_be_used_stops_the_start(start_gateway, tmp_path, notebook_server, problem):
    path = tmp_path / "seed.ipynb"
    uri, expected = str(path), f"Cannot read the seed notebook {path}"
    if problem == "not json":
        path.write_text("{not json")
        expected = f"The seed notebook {path} is not a valid notebook"
    elif problem == "not a notebook":
        path.write_text(json.dumps({"cells": "no", "nbformat": 4, "nbformat_minor": 5, "metadata": {}}))
        expected = f"The seed notebook {path} is not a valid notebook"
    elif problem == "http 404":
        uri = f"{notebook_server}/missing.ipynb"
        expected = f"Cannot read the seed notebook {uri}: 404"
    elif problem == "no language":
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")]), path)
        expected = f"The seed notebook {path} names no language"
    with pytest.raises(RuntimeError, match="gateway exited with 1") as failed:
        await start_gateway("--initial-kernels", "0", "--seed-uri", uri)
    assert expected in str(failed.value)
