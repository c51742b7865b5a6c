"""Drive a gateway with Datalayer's jupyter-kernel-client, with its default headers (`Authorization:
Bearer T` on REST calls, `?token=T` on the websocket), and print what happened as JSON.

    python -m tests.clients.run_kernel_client URL TOKEN
"""

from __future__ import annotations

import json
import sys
import threading
import time

from jupyter_kernel_client import JupyterKernelClient

TIMEOUT = 30


def wait_until(client: JupyterKernelClient, state: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while client._manager.refresh_model()["execution_state"] != state:
        assert time.monotonic() < deadline, f"the kernel never became {state}"
        time.sleep(0.05)


def main(url: str, token: str) -> None:
    report: dict = {}
    client = JupyterKernelClient(server_url=url, token=token)
    client.start(timeout=TIMEOUT)
    try:
        report["kernel_id"] = client.id
        report["printed"] = client.execute("survivor = 6 * 7\nprint(survivor)", timeout=TIMEOUT)

        # The model follows the kernel's iopub a moment behind the client: once it says idle, its next
        # busy is the sleep's.
        wait_until(client, "idle")
        interrupted: dict = {}
        runner = threading.Thread(target=lambda: interrupted.update(
            client.execute("import time\ntime.sleep(120)", timeout=TIMEOUT)))
        runner.start()
        wait_until(client, "busy")
        client.interrupt(timeout=TIMEOUT)
        runner.join(TIMEOUT)
        report["interrupted"] = interrupted

        client.restart(timeout=TIMEOUT)
        report["after_restart"] = client.execute("print('survivor' in dir())", timeout=TIMEOUT)
    finally:
        client.stop(timeout=TIMEOUT)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])
