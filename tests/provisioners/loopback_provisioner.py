"""A kernel provisioner for the tests, found through the `jupyter_client.kernel_provisioners` entry point
of the dist-info beside it (put this folder on PYTHONPATH).

It launches ipykernel the way remote provisioners hand kernels over: reachable over TCP at an address the
provisioner chose, whatever transport the gateway uses for its own kernels, and it puts the marker from
its kernelspec's `metadata.kernel_provisioner.config` into the kernel's environment.
"""

from __future__ import annotations

import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from traitlets import Unicode


class LoopbackProvisioner(LocalProvisioner):
    marker = Unicode("", config=True, help="set as PROVISIONED_BY in the kernel's environment")

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        manager = self.parent
        manager.transport, manager.ip = "tcp", "127.0.0.1"
        kwargs["env"] = {**(kwargs.get("env") or os.environ), "PROVISIONED_BY": self.marker}
        return await super().pre_launch(**kwargs)
