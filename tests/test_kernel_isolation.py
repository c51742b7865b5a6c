"""What a kernel exposes: no TCP port by default, loopback only when TCP is chosen, keys in no log, no
gateway secret in its environment, and kernelspec files that stay inside their folder."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from .conftest import Gateway, kernel_pids, write_kernelspec
from .helpers import children

SECRETS = {"KG_TEST_SECRET": "kg-secret-value", "KERNELS_GATEWAY_TEST_SECRET": "kgw-secret-value"}


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # IPv6 in /proc is four host-order (little-endian) 32-bit words.
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening_tcp(pid: int) -> list[str]:
    """The local addresses of the TCP sockets a process listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.append(f"{_address(address)}:{int(port, 16)}")
    return found


async def test_kernel_channels_and_the_supervisor_use_no_tcp_port(gateway):
    pids = kernel_pids(gateway.runtime_dir)
    assert pids
    roles = {cmd.split("kernels_gateway ")[1].split()[0]: pid for pid, cmd in children(gateway.process.pid).items()}
    for pid in pids:
        # The channels are IPC. ipykernel itself binds one loopback port for output piped from forked
        # subprocesses (its IOPub pipe, which drops messages lacking a random per-kernel token).
        listening = listening_tcp(pid)
        assert len(listening) <= 1 and all(address.startswith("127.0.0.1:") for address in listening), listening
    assert listening_tcp(roles["supervisor"]) == []
    assert listening_tcp(roles["web"]) == [f"127.0.0.1:{gateway.port}"]


@pytest.fixture(scope="module")
async def exposed(tmp_path_factory):
    """A gateway that invites leaks: TCP kernels, DEBUG logging, secrets in its environment, and a
    kernelspec whose folder holds links that point outside it."""
    specs = tmp_path_factory.mktemp("specs")
    spec_dir = write_kernelspec(specs, "linked")
    (spec_dir / "logo-64x64.png").symlink_to("/etc/passwd")
    (spec_dir / "inside").symlink_to("/etc")
    gw = Gateway("--transport", "tcp", "--log-level", "DEBUG",
                 env={**SECRETS, "KGW_TEST_VISIBLE": "visible", "JUPYTER_PATH": str(specs)})
    await gw.start()
    yield gw
    assert await gw.stop() == 0
    gw.cleanup()


async def test_tcp_kernels_listen_on_loopback_only(exposed):
    files = list(exposed.runtime_dir.glob("kernel-*.json"))
    assert files  # the launch kernel and the warm one
    channel_ports = {json.loads(f.read_text())[f"{channel}_port"] for f in files
                     for channel in ("shell", "iopub", "stdin", "control", "hb")}
    async with asyncio.timeout(30):
        while True:  # until the warm kernel has bound its channels too
            listening = [address for pid in kernel_pids(exposed.runtime_dir) for address in listening_tcp(pid)]
            if channel_ports <= {int(address.rsplit(":", 1)[1]) for address in listening}:
                break
            await asyncio.sleep(0.1)
    # The channels and ipykernel's IOPub pipe, on loopback only.
    assert all(address.startswith("127.0.0.1:") for address in listening), listening


async def test_kernel_environments_hold_no_gateway_secret(exposed, http, connect):
    async with http.get(f"{exposed.url}/api/kernels") as r:
        [kernel] = await r.json()
    sock = await connect(kernel["id"], gw=exposed)
    _, stdout = await sock.execute("import os, json; print(json.dumps(dict(os.environ)))")
    environment = json.loads(stdout)
    assert environment["KGW_TEST_VISIBLE"] == "visible"  # the rest of the environment is inherited
    assert not set(SECRETS) & set(environment)
    assert not any(value in stdout for value in SECRETS.values())


async def test_keys_are_in_no_log_even_at_debug(exposed, http, connect):
    async with http.post(f"{exposed.url}/api/kernels", json={"env": {"KERNEL_A": "1"}}) as r:
        kernel = await r.json()
    sock = await connect(kernel["id"], gw=exposed)
    await sock.execute("print(1)")
    async with http.post(f"{exposed.url}/api/kernels/{kernel['id']}/restart") as r:
        assert r.status == 200
    await sock.close()
    keys = [json.loads(f.read_text())["key"] for f in exposed.runtime_dir.glob("kernel-*.json")]
    assert len(keys) >= 2 and all(len(key) >= 32 for key in keys)
    log = exposed.log()
    assert "\n[D " in log  # the log really is at DEBUG
    assert not any(key in log for key in keys)
    async with http.delete(f"{exposed.url}/api/kernels/{kernel['id']}") as r:
        assert r.status == 204


@pytest.mark.parametrize("path", ["logo-64x64.png", "inside/passwd", "inside%2Fpasswd"])
async def test_kernelspec_files_cannot_follow_links_out_of_their_folder(exposed, http, path):
    async with http.get(f"{exposed.url}/kernelspecs/linked/{path}") as r:
        assert r.status == 404
        assert "root:" not in await r.text()


@pytest.mark.parametrize("path", ["logo%00.png", "x" * 5000, "%2E%2E/%2E%2E/kernel.json"])
async def test_kernelspec_file_names_the_file_system_refuses_are_not_found(gateway, http, path):
    async with http.get(f"{gateway.url}/kernelspecs/python3/{path}") as r:
        assert r.status == 404
        assert set(await r.json()) == {"message", "reason"}

