"""One gateway per port and per runtime directory, and kernels that outlive a kill -9 of the arbiter."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from .conftest import Gateway, eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import child_pids, json_of, start_kernel


async def test_a_second_gateway_on_the_same_port_is_refused(start_gateway, http):
    first = await start_gateway("--initial-kernels", "0", "--workers", "2", "--auth-token", "secret")
    auth = {"Authorization": "token secret"}
    kernel_id = await start_kernel_with(http, first, auth)
    one_command = ("--pool", "none", "--initial-kernels", "0")
    for args, command in ((one_command, ()), (one_command + ("--workers", "2"), ()), ((), ("web",))):
        second = Gateway(*args, command=command)
        second.port = first.port
        try:
            await second.start(wait_for="address already in use", timeout=60)
            assert second.process.wait(timeout=20) != 0
            [error] = [line for line in second.log().splitlines() if "address already in use" in line]
            assert f"127.0.0.1:{first.port}" in error
        finally:
            second.cleanup()
    # Nothing was split off: every new connection still reaches the first gateway, token and all.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        for _ in range(10):
            status, _ = await json_of(fresh, "GET", f"{first.url}/api/kernels/{kernel_id}")
            assert status == 401
            status, model = await json_of(fresh, "GET", f"{first.url}/api/kernels/{kernel_id}", headers=auth)
            assert status == 200 and model["id"] == kernel_id
    assert await first.stop() == 0


async def start_kernel_with(http, gw, headers) -> str:
    status, model = await json_of(http, "POST", f"{gw.url}/api/kernels", json={}, headers=headers)
    assert status == 201, model
    return model["id"]


async def test_two_gateways_starting_at_once_on_one_port_leave_one(tmp_path):
    gateways = [Gateway("--pool", "none", "--initial-kernels", "0", "--workers", "2") for _ in range(2)]
    gateways[1].port = gateways[0].port
    try:
        started = await asyncio.gather(*(gw.start(timeout=60) for gw in gateways), return_exceptions=True)
        running = [gw for gw, result in zip(gateways, started) if not isinstance(result, BaseException)]
        assert len(running) == 1, [gw.log() for gw in gateways]
        [loser] = [gw for gw in gateways if gw not in running]
        assert loser.process.wait(timeout=20) != 0 and "address already in use" in loser.log()
        assert await running[0].stop() == 0
    finally:
        for gw in gateways:
            gw.cleanup()


async def test_a_second_gateway_on_the_same_runtime_dir_is_refused_and_removes_nothing(start_gateway, http):
    first = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, first)
    sock = await KernelSocket.open(http, first, kernel_id)
    await sock.execute("x = 42")
    pids = kernel_pids(first.runtime_dir)
    for _ in range(2):  # a third one finds everything of the first one where it was
        second = Gateway("--pool", "none", "--runtime-dir", str(first.runtime_dir))
        try:
            await second.start(wait_for="own --runtime-dir", timeout=60)
            assert second.process.wait(timeout=30) != 0
            assert f"Runtime directory {first.runtime_dir} is in use" in second.log()
        finally:
            second.cleanup()
        assert (first.runtime_dir / "supervisor.sock").exists()
        assert kernel_pids(first.runtime_dir) == pids
    status, kernels = await json_of(http, "GET", f"{first.url}/api/kernels")
    assert status == 200 and [k["id"] for k in kernels] == [kernel_id]
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    await sock.close()
    assert await first.stop() == 0
    assert kernel_pids(first.runtime_dir) == []


async def test_kernels_outlive_a_killed_arbiter_and_the_next_gateway_adopts_them(start_gateway, http):
    first = await start_gateway("--initial-kernels", "0", "--workers", "2")
    kernel_id = await start_kernel(http, first)
    sock = await KernelSocket.open(http, first, kernel_id)
    await sock.execute("x = 42")
    await sock.close()
    pids = kernel_pids(first.runtime_dir)
    [supervisor] = child_pids(first, "supervisor")
    workers = child_pids(first, "web")

    first.process.kill()
    first.process.wait()
    await eventually(lambda: _all_gone(workers))  # workers hold no state: they go with the arbiter
    await eventually(lambda: _logged(first, "is gone; keeping 1 kernel(s)"))
    assert kernel_pids(first.runtime_dir) == pids and Path(f"/proc/{supervisor}").exists()

    # The next gateway on the same runtime directory (and the same port, now free) takes them over.
    second = await start_gateway("--runtime-dir", str(first.runtime_dir), "--initial-kernels", "0",
                                 "--port", str(first.port))
    second.port = first.port
    await eventually(lambda: _all_gone([supervisor]))
    assert "Kernel adopted: " + kernel_id in second.log() and "handing 1 kernel(s) over" in first.log()
    sock = await KernelSocket.open(http, second, kernel_id)
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    await sock.close()
    assert kernel_pids(first.runtime_dir) == pids
    assert await second.stop() == 0
    assert kernel_pids(first.runtime_dir) == []


async def test_kernels_of_a_killed_arbiter_are_shut_down_when_nobody_takes_over(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--orphan-timeout", "2")
    kernel_id = await start_kernel(http, gw)
    [supervisor] = child_pids(gw, "supervisor")
    gw.process.kill()
    gw.process.wait()
    await eventually(lambda: _all_gone([supervisor]), timeout=60)
    assert kernel_pids(gw.runtime_dir) == []
    assert not list((gw.runtime_dir / "kernels").glob("*.json"))
    assert "No kernels-gateway took over within 2 s" in gw.log() and f"shutdown: {kernel_id}" in gw.log()
    assert not (gw.runtime_dir / "supervisor.sock").exists()


async def _all_gone(pids: list[int]) -> bool:
    """Exited (a zombie counts: whoever inherited it may not have reaped it yet)."""
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return False
        except OSError:
            continue
    return True


async def _logged(gw: Gateway, text: str) -> bool:
    return text in gw.log()
