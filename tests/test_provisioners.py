"""Kernels launched through a kernel provisioner named in their kernelspec (`metadata.kernel_provisioner`),
the mechanism that runs kernels on Kubernetes, Docker, YARN or over SSH."""

from __future__ import annotations

import json
import os
import signal
import uuid

from .conftest import HERE, kernel_pids, write_kernelspec

PROVISIONERS = HERE / "provisioners"  # a provisioner and the dist-info that registers it


def provisioned_kernelspec(folder, name: str, provisioner: str, config: dict) -> None:
    spec_file = write_kernelspec(folder, name) / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["metadata"] = {"kernel_provisioner": {"provisioner_name": provisioner, "config": config}}
    spec_file.write_text(json.dumps(spec))


async def test_kernelspec_provisioner_launches_the_kernel(start_gateway, http, connect, tmp_path):
    marker = f"loopback-{uuid.uuid4().hex[:8]}"
    provisioned_kernelspec(tmp_path, "loopback", "loopback-provisioner", {"marker": marker})
    provisioned_kernelspec(tmp_path, "unavailable", "no-such-provisioner", {})
    env = {"JUPYTER_PATH": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROVISIONERS), os.environ.get("PYTHONPATH")]))}
    gw = await start_gateway("--kernel-name", "loopback", "--transport", "ipc", env=env)

    async with http.get(f"{gw.url}/api/kernels") as r:
        [kernel] = await r.json()
    assert kernel["name"] == "loopback"
    # The gateway uses IPC for its own kernels; this one is reachable where its provisioner put it.
    info = json.loads((gw.runtime_dir / f"kernel-{kernel['id']}.json").read_text())
    assert (info["transport"], info["ip"]) == ("tcp", "127.0.0.1")

    sock = await connect(kernel["id"], gw=gw)
    reply, stdout = await sock.execute("import os; print(os.environ['PROVISIONED_BY'])")
    assert reply["content"]["status"] == "ok" and stdout == f"{marker}\n"

    # A restart goes through the provisioner again.
    async with http.post(f"{gw.url}/api/kernels/{kernel['id']}/restart") as r:
        assert r.status == 200
    sock = await connect(kernel["id"], gw=gw)
    reply, stdout = await sock.execute("import os; print(os.environ['PROVISIONED_BY'], os.getpid())")
    assert stdout.split()[0] == marker and int(stdout.split()[1]) in kernel_pids(gw.runtime_dir)

    # A kernelspec whose provisioner is not installed is not offered, and cannot be started.
    async with http.get(f"{gw.url}/api/kernelspecs") as r:
        specs = (await r.json())["kernelspecs"]
    assert "loopback" in specs and "unavailable" not in specs
    async with http.post(f"{gw.url}/api/kernels", json={"name": "unavailable"}) as r:
        assert r.status == 404 and (await r.json())["message"] == "No such kernel named unavailable"

    assert await gw.stop(signal.SIGTERM) == 0
    assert kernel_pids(gw.runtime_dir) == []
