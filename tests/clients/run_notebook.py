"""Run a notebook with nbclient on a gateway through Jupyter Server's GatewayKernelManager, as papermill
and Voila do, and print the executed notebook as JSON. The gateway's URL comes from
JUPYTER_GATEWAY_URL, as GatewayClient reads it.

    python -m tests.clients.run_notebook NOTEBOOK.ipynb
"""

from __future__ import annotations

import sys

import nbformat
from jupyter_server.gateway.managers import GatewayKernelManager
from nbclient import NotebookClient

# Seconds: bounded, so that a gateway that never answers makes this fail rather than hang.
STARTUP_TIMEOUT = 20
CELL_TIMEOUT = 5


class KernelManager(GatewayKernelManager):
    """GatewayKernelManager as it is, but for one bug of its own (jupyter_client#1047): a kernel client
    asks its manager `_async_is_alive`, which GatewayKernelManager does not override, so nbclient's check
    after a cell timeout fails on `assert self.provisioner` before it can interrupt. Ask the gateway."""

    async def _async_is_alive(self) -> bool:
        return await self.is_alive()


def main(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, kernel_manager_class=KernelManager, kernel_name="python3", allow_errors=True,
        timeout=CELL_TIMEOUT, interrupt_on_timeout=True, startup_timeout=STARTUP_TIMEOUT,
    )
    client.execute()
    nbformat.write(notebook, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
