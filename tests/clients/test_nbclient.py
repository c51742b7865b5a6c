"""nbclient running a notebook on the gateway through Jupyter Server's GatewayKernelManager, as papermill
and Voila do: its websocket client sends frames without a `channel` key, meaning shell."""

from __future__ import annotations

from pathlib import Path

import nbformat

from ..conftest import run_script

CELLS = [
    "from ipykernel.connect import get_connection_file\nprint(get_connection_file())",
    "print(6 * 7)",
    "6 * 7",
    "1 / 0",
    "import time\ntime.sleep(120)",  # longer than the cell timeout: nbclient interrupts the kernel
    "print('alive after the interrupt')",
]


async def run_notebook(gateway_url: str, path) -> nbformat.NotebookNode:
    out = await run_script("tests.clients.run_notebook", str(path), env={"JUPYTER_GATEWAY_URL": gateway_url})
    return nbformat.reads(out.decode(), as_version=4)


async def test_nbclient_runs_a_notebook_through_gateway_kernel_manager(gateway, http, tmp_path):
    async with http.get(f"{gateway.url}/api/kernels") as r:
        before = {k["id"] for k in await r.json()}
    path = tmp_path / "cells.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS]), path)

    notebook = await run_notebook(gateway.url, path)

    where, printed, result, error, interrupted, alive = (cell.outputs for cell in notebook.cells)
    # The kernel is this gateway's: its connection file is in the gateway's runtime dir, named by its id.
    connection_file = Path(where[0].text.strip())
    assert connection_file.parent == gateway.runtime_dir
    kernel_id = connection_file.stem.removeprefix("kernel-")
    assert [(o.output_type, o.text) for o in printed] == [("stream", "42\n")]
    assert [(o.output_type, o.data["text/plain"]) for o in result] == [("execute_result", "42")]
    assert [(o.output_type, o.ename) for o in error] == [("error", "ZeroDivisionError")]
    assert [(o.output_type, o.ename) for o in interrupted] == [("error", "KeyboardInterrupt")]
    assert [(o.output_type, o.text) for o in alive] == [("stream", "alive after the interrupt\n")]
    assert notebook.metadata.language_info.name == "python"  # from the kernel_info_reply

    # Started, interrupted through the gateway's REST API, and shut down when nbclient was done.
    async with http.get(f"{gateway.url}/api/kernels") as r:
        assert {k["id"] for k in await r.json()} == before
    assert kernel_id not in before
    for event in ("started", "interrupted", "shutdown"):
        assert f"Kernel {event}: {kernel_id}" in gateway.log()
