"""Kernels on other hosts, through gateway_provisioners' SSH provisioner (DistributedProvisioner):
two hosts of their own (network and pid namespaces, a real sshd each; tests/hosts.py), kernelspecs made
by gateway_provisioners' `jupyter-ssh-spec`, the gateway in the root namespace.

Each test owns its gateway; the hosts are shared by the module and torn down after it, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from . import hosts as test_hosts
from .conftest import eventually
from .kernel_client import KernelSocket

pytestmark = pytest.mark.skipif(bool(test_hosts.missing()), reason=test_hosts.missing() or "hosts can be made")

SPEC = "ssh_python"


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The hosts, a JUPYTER_PATH holding the SSH kernelspec for them, and the gateway's environment."""
    with test_hosts.hosts(2) as (made, env):
        jupyter_path = test_hosts.ssh_kernelspec(tmp_path_factory.mktemp("specs"), SPEC, made)
        env = {**env, "JUPYTER_PATH": str(jupyter_path)}
        yield made, env


@pytest.fixture
def hosts(remote):
    made, _ = remote
    yield made
    # Whatever a test left on the hosts (a kernel its gateway failed to stop) is not the next test's.
    for host in made:
        for line in host.processes():
            if "launch_ipykernel" in line or "ipykernel" in line:
                host.run("pkill", "-KILL", "-f", "launch_ipykernel.py")
                break


@pytest.fixture
async def remote_gateway(start_gateway, remote):
    _, env = remote

    async def start(*args: str):
        return await start_gateway("--initial-kernels", "0", "--default-kernel-name", SPEC, *args, env=env)

    return start


async def start_kernel(http, gw, **body) -> str:
    async with http.post(f"{gw.url}/api/kernels", json={"name": SPEC, **body}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["id"]


async def model(http, gw, kernel_id: str) -> dict:
    async with http.get(f"{gw.url}/api/kernels/{kernel_id}") as r:
        assert r.status == 200, await r.text()
        return await r.json()


def connection_info(gw, kernel_id: str) -> dict:
    """What the supervisor recorded of the kernel: its provisioner's connection info."""
    record = json.loads((gw.runtime_dir / "kernels" / f"{kernel_id}.json").read_text())
    return record["provisioner"]["connection_info"]


def host_of(made, gw, kernel_id: str):
    ip = connection_info(gw, kernel_id)["ip"]
    [host] = [h for h in made if h.address == ip]
    return host


async def hostname_and_pid(sock: KernelSocket) -> tuple[str, int]:
    reply, stdout = await sock.execute(
        "import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('10.231.0.1', 9));"
        " print(s.getsockname()[0], os.getpid())")
    assert reply["content"]["status"] == "ok", reply
    address, pid = stdout.split()
    return address, int(pid)


async def states_until_idle(sock: KernelSocket, first: str) -> list[str]:
    """Status messages' states up to the first `idle` after `first`."""
    states: list[str] = []
    async with asyncio.timeout(60):
        while first not in states or states[-1] != "idle":
            msg = await sock.receive(timeout=60)
            if msg["header"]["msg_type"] == "status":
                states.append(msg["content"]["execution_state"])
    return states


# -- 1. start and use -------------------------------------------------------------------------------


@pytest.mark.parametrize("v1", [False, True], ids=["json", "v1"])
async def test_a_remote_kernel_starts_on_a_host_and_works(remote_gateway, http, hosts, v1):
    gw = await remote_gateway()
    first, second = await start_kernel(http, gw), await start_kernel(http, gw)
    assert (await model(http, gw, first))["execution_state"] in ("idle", "starting")

    # Spread across the hosts, each kernel's ports listening on its host's address, not here.
    placed = {host_of(hosts, gw, kernel_id).address for kernel_id in (first, second)}
    assert placed == {h.address for h in hosts}
    info = connection_info(gw, first)
    host = host_of(hosts, gw, first)
    ports = {info[f"{channel}_port"] for channel in ("shell", "iopub", "stdin", "control", "hb")}
    assert ports <= {port for address, port in host.listening() if address in (host.address, "0.0.0.0", "*")}

    sock = await KernelSocket.open(http, gw, first, v1=v1)
    address, pid = await hostname_and_pid(sock)
    assert address == host.address and pid < 1000  # a pid of the host's own pid namespace

    # stdin: input() asks the client, which answers.
    request = sock.message("execute_request", {"code": "print('got', input('name? '))", "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": True})
    await sock.send(request)
    async with asyncio.timeout(30):
        while (msg := await sock.receive())["header"]["msg_type"] != "input_request":
            pass
    assert msg["channel"] == "stdin" and msg["content"]["prompt"] == "name? "
    await sock.send(sock.message("input_reply", {"value": "remote"}, channel="stdin"))
    async with asyncio.timeout(30):
        while not ((msg := await sock.receive())["header"]["msg_type"] == "stream"):
            pass
    assert msg["content"]["text"] == "got remote\n"

    # Interrupt a running cell through the REST API.
    request = sock.message("execute_request", {"code": "import time; time.sleep(60)", "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": False})
    await sock.send(request)
    async with asyncio.timeout(30):
        while (await model(http, gw, first))["execution_state"] != "busy":
            await asyncio.sleep(0.1)
    async with http.post(f"{gw.url}/api/kernels/{first}/interrupt") as r:
        assert r.status == 204
    async with asyncio.timeout(30):
        while not ((msg := await sock.receive())["header"]["msg_type"] == "execute_reply"
                   and msg["parent_header"]["msg_id"] == request["header"]["msg_id"]):
            pass
    assert msg["content"]["status"] == "error" and msg["content"]["ename"] == "KeyboardInterrupt"
    reply, stdout = await sock.execute("print('still here')")
    assert stdout == "still here\n"
    await sock.close()

    # Shutdown ends the kernel on its host.
    for kernel_id in (first, second):
        async with http.delete(f"{gw.url}/api/kernels/{kernel_id}") as r:
            assert r.status == 204
    for h in hosts:
        await eventually(lambda h=h: asyncio.sleep(0, not [p for p in h.processes() if "ipykernel" in p]))
    assert await gw.stop() == 0
