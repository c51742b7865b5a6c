"""Kernels on other hosts, through gateway_provisioners' SSH provisioner (DistributedProvisioner):
two hosts of their own (network and pid namespaces, a real sshd each; tests/hosts.py), kernelspecs made
by gateway_provisioners' `jupyter-ssh-spec`, the gateway in the root namespace.

Each test owns its gateway; the hosts are shared by the module and torn down after it, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time

import pytest

from . import hosts as test_hosts
from .conftest import eventually
from .kernel_client import KernelSocket

pytestmark = pytest.mark.skipif(bool(test_hosts.missing()), reason=test_hosts.missing() or "hosts can be made")

SPEC = "ssh_python"
LOST = "ssh_second_host"  # the second host only, with a short launch timeout
LOST_LAUNCH_TIMEOUT = 6


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """The hosts, a JUPYTER_PATH holding the SSH kernelspec for them, and the gateway's environment."""
    with test_hosts.hosts(2) as (made, env):
        folder = tmp_path_factory.mktemp("specs")
        jupyter_path = test_hosts.ssh_kernelspec(folder, SPEC, made)
        test_hosts.ssh_kernelspec(folder, LOST, made[1:], "--launch-timeout", str(LOST_LAUNCH_TIMEOUT))
        env = {**env, "JUPYTER_PATH": str(jupyter_path)}
        yield made, env


@pytest.fixture
def hosts(remote):
    made, _ = remote
    yield made
    # Whatever a test left on the hosts (a kernel its gateway failed to stop) is not the next test's.
    for host in made:
        pids = [line.split()[0] for line in host.processes() if "launch_ipykernel" in line]
        if pids:
            host.run("kill", "-KILL", *pids)


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
    # stop_on_error off: else ipykernel may abort the next cell, sent the moment this one's error arrives.
    request = sock.message("execute_request", {"code": "import time; print('sleeping'); time.sleep(60)", "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": False,
                                               "stop_on_error": False})
    await sock.send(request)
    async with asyncio.timeout(30):
        while (await sock.receive())["header"]["msg_type"] != "stream":
            pass
    assert (await model(http, gw, first))["execution_state"] == "busy"
    async with http.post(f"{gw.url}/api/kernels/{first}/interrupt") as r:
        assert r.status == 204
    # The reply, then the cell's idle, as a client that runs cells one after another waits for both.
    reply = idle = None
    async with asyncio.timeout(30):
        while reply is None or idle is None:
            msg = await sock.receive()
            if msg["parent_header"].get("msg_id") != request["header"]["msg_id"]:
                continue
            if msg["header"]["msg_type"] == "execute_reply":
                reply = msg
            elif msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = msg
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
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


def remote_kernel_pid(host, kernel_id: str) -> int | None:
    """The pid, in its host's namespace, of the kernel launched for this id (its launcher runs it)."""
    for line in host.run("ps", "-ww", "-eo", "pid=,args=").splitlines():
        pid, _, args = line.strip().partition(" ")
        if "launch_ipykernel.py" in args and kernel_id in args:
            return int(pid)
    return None


async def kill_on_host(host, kernel_id: str) -> None:
    pid = remote_kernel_pid(host, kernel_id)
    assert pid, host.run("ps", "-ww", "-eo", "pid=,args=")
    host.run("kill", "-KILL", str(pid))
    await eventually(lambda: asyncio.sleep(0, remote_kernel_pid(host, kernel_id) != pid), timeout=10)


def kernels_on(made) -> list[str]:
    """The kernels running on the hosts (each launcher's listener is a process of its own, its child)."""
    found = []
    for host in made:
        launchers = [line.split() for line in host.processes() if "launch_ipykernel" in line]
        pids = {fields[0] for fields in launchers}
        found += [f"{host.name} {' '.join(fields[2:5])}" for fields in launchers if fields[1] not in pids]
    return found


async def busy_while_sleeping(http, gw, kernel_id: str, sock: KernelSocket) -> None:
    """The model says busy while a cell runs (the supervisor hears the kernel's iopub)."""
    request = sock.message("execute_request", {"code": "import time; time.sleep(1.5)", "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": False})
    await sock.send(request)
    await eventually(lambda: _state_is(http, gw, kernel_id, "busy"), timeout=20, every=0.05)
    await eventually(lambda: _state_is(http, gw, kernel_id, "idle"), timeout=20, every=0.05)


async def _state_is(http, gw, kernel_id: str, state: str) -> bool:
    return (await model(http, gw, kernel_id))["execution_state"] == state


# -- 2. restart follows new connection info ---------------------------------------------------------


async def test_restarts_follow_the_kernel_to_new_ports_and_hosts(remote_gateway, http, hosts):
    gw = await remote_gateway()
    kernel_id = await start_kernel(http, gw)
    legacy = await KernelSocket.open(http, gw, kernel_id)
    v1 = await KernelSocket.open(http, gw, kernel_id, v1=True)
    await legacy.execute("x = 1")
    before = connection_info(gw, kernel_id)

    # Requested: a new process, on other ports (the launcher picks them) and, round-robin, another host.
    async with http.post(f"{gw.url}/api/kernels/{kernel_id}/restart") as r:
        assert r.status == 200, await r.text()
    after = connection_info(gw, kernel_id)
    assert (after["ip"], after["shell_port"]) != (before["ip"], before["shell_port"])
    for sock in (legacy, v1):
        reply, stdout = await sock.execute("print(globals().get('x', 'fresh'))")
        assert reply["content"]["status"] == "ok" and stdout == "fresh\n"
    await busy_while_sleeping(http, gw, kernel_id, legacy)

    # Automatic: the kernel killed on its host comes back, and both websockets hear restarting, then idle.
    killed = host_of(hosts, gw, kernel_id)
    await kill_on_host(killed, kernel_id)
    for sock in (legacy, v1):
        await states_until_idle(sock, first="restarting")  # restarting, then idle
    for sock in (legacy, v1):
        reply, stdout = await sock.execute("print('back')")
        assert stdout == "back\n"
    await busy_while_sleeping(http, gw, kernel_id, v1)
    assert f"Kernel {kernel_id} died on {killed.address}; restarting it" in gw.log()
    # The killed process and the one the requested restart replaced are gone; one runs.
    assert len(kernels_on(hosts)) == 1, kernels_on(hosts)
    for sock in (legacy, v1):
        await sock.close()
    assert await gw.stop() == 0
    assert kernels_on(hosts) == []


async def test_a_restart_never_leaves_a_kernel_running_unowned(remote_gateway, http, hosts):
    """A restart while the kernel's host does not answer fails and changes nothing: the kernel, which may
    well still run there, is neither replaced nor forgotten, and its record still names it."""
    from .test_process import children

    gw = await remote_gateway()
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    await sock.execute("x = 'kept'")
    record = json.loads((gw.runtime_dir / "kernels" / f"{kernel_id}.json").read_text())
    with contextlib.ExitStack() as partition:
        for host in hosts:
            partition.enter_context(host.unreachable())
        async with http.post(f"{gw.url}/api/kernels/{kernel_id}/restart") as r:
            body = await r.json()
            assert r.status == 500 and "does not answer" in body["message"], body
    assert json.loads((gw.runtime_dir / "kernels" / f"{kernel_id}.json").read_text()) == record
    _, stdout = await sock.execute("print(x)")
    assert stdout == "kept\n"
    # The next supervisor adopts that very process; nothing runs unowned.
    [supervisor] = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway supervisor" in cmd]
    os.kill(supervisor, signal.SIGKILL)
    await eventually(lambda: asyncio.sleep(0, f"Kernel adopted: {kernel_id}" in gw.log()), timeout=60)
    assert len(kernels_on(hosts)) == 1
    _, stdout = await sock.execute("print(x)")
    assert stdout == "kept\n"
    await sock.close()
    assert await gw.stop() == 0
    assert kernels_on(hosts) == []


# -- 3. supervisor crash ----------------------------------------------------------------------------


async def test_a_crashed_supervisor_leaves_remote_kernels_running_and_the_next_adopts_them(remote_gateway, http, hosts):
    from .test_process import children

    gw = await remote_gateway()
    ids = [await start_kernel(http, gw), await start_kernel(http, gw)]
    socks = [await KernelSocket.open(http, gw, kernel_id, v1=bool(n)) for n, kernel_id in enumerate(ids)]
    for n, sock in enumerate(socks):
        await sock.execute(f"x = {n + 40}")
    running = sorted(kernels_on(hosts))
    assert len(running) == 2
    [supervisor] = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway supervisor" in cmd]
    os.kill(supervisor, signal.SIGKILL)

    # The arbiter starts another supervisor, which adopts both through their provisioners' saved state.
    await eventually(lambda: asyncio.sleep(0, gw.log().count("Kernel adopted") == 2), timeout=60)
    assert "Kernel records read: 2 kernel(s) adopted" in gw.log()
    assert sorted(kernels_on(hosts)) == running  # the same processes: none killed, none started
    async with http.get(f"{gw.url}/api/kernels") as r:
        assert sorted(k["id"] for k in await r.json()) == sorted(ids)
    for n, sock in enumerate(socks):
        _, stdout = await sock.execute("print(x)")
        assert stdout == f"{n + 40}\n"
    await busy_while_sleeping(http, gw, ids[0], socks[0])

    # Adopted kernels are still watched: one killed on its host is restarted.
    await kill_on_host(host_of(hosts, gw, ids[1]), ids[1])
    await states_until_idle(socks[1], first="restarting")
    for sock in socks:
        await sock.close()
    assert await gw.stop() == 0
    assert kernels_on(hosts) == []
    assert not list((gw.runtime_dir / "kernels").glob("*.json"))


# -- 4. host loss -----------------------------------------------------------------------------------


async def test_a_lost_host_costs_only_its_kernels_and_never_blocks_the_supervisor(remote_gateway, http, hosts):
    gw = await remote_gateway()
    ids = [await start_kernel(http, gw), await start_kernel(http, gw)]
    lost = host_of(hosts, gw, ids[0])
    [kept_id] = [k for k in ids if host_of(hosts, gw, k) is not lost]
    sock = await KernelSocket.open(http, gw, ids[0])
    other = await KernelSocket.open(http, gw, kept_id)
    await other.execute("y = 7")

    lost.link_down()
    try:
        # Its kernel is noticed gone: clients hear restarting, then the kernel runs on the other host,
        # or, if every restart fails, dead.
        async with asyncio.timeout(60):
            while (msg := await sock.receive())["header"]["msg_type"] != "status" or \
                    msg["content"]["execution_state"] not in ("restarting", "dead"):
                pass
        # Meanwhile the other kernel and the REST API answer.
        for _ in range(5):
            async with http.get(f"{gw.url}/api/kernels/{kept_id}") as r:
                assert r.status == 200
        _, stdout = await other.execute("print(y)")
        assert stdout == "7\n"
        final = await eventually(lambda: _settled(http, gw, ids[0]), timeout=90)
        assert final in ("idle", "dead"), final
        if final == "idle":
            assert host_of(hosts, gw, ids[0]) is not lost
            _, stdout = await sock.execute("print('moved')")
            assert stdout == "moved\n"
    finally:
        subprocess_run(["ip", "link", "set", lost.link, "up"])
    await sock.close()
    await other.close()
    assert await gw.stop() == 0


# Behaviour, not a benchmark: a REST call that waits on a host takes seconds to minutes.
REST_BOUND = 2.0


async def test_a_host_that_drops_every_packet_never_holds_the_supervisor(remote_gateway, http, hosts):
    """A host that silently drops every packet (not one that refuses): a start onto it fails with a clear
    error once the provisioner's launch timeout is up and leaves nothing behind; the kernel that ran there
    is declared dead, and its interrupt, restart and shutdown come back with clear outcomes; REST calls
    for the other kernels answer at once throughout, and that kernel works on."""
    gw = await remote_gateway("--restart-limit", "1")
    healthy, lost = hosts
    kept = await start_kernel(http, gw, env={"KERNEL_REMOTE_HOST": healthy.address})
    doomed = await start_kernel(http, gw, env={"KERNEL_REMOTE_HOST": lost.address})
    assert host_of(hosts, gw, kept) is healthy and host_of(hosts, gw, doomed) is lost
    sock = await KernelSocket.open(http, gw, kept)
    await sock.execute("y = 7")
    slowest, probed, done = 0.0, 0, asyncio.Event()

    async def probe() -> None:
        nonlocal slowest, probed
        while not done.is_set():
            for url in (f"{gw.url}/api/kernels", f"{gw.url}/api/kernels/{kept}"):
                began = time.monotonic()
                try:
                    async with asyncio.timeout(REST_BOUND), http.get(url) as r:
                        assert r.status == 200, await r.text()
                except TimeoutError:
                    pass
                slowest, probed = max(slowest, time.monotonic() - began), probed + 1
            await asyncio.sleep(0.05)

    prober = asyncio.create_task(probe())
    try:
        with lost.black_hole():
            async with asyncio.timeout(LOST_LAUNCH_TIMEOUT + 20):
                async with http.post(f"{gw.url}/api/kernels", json={"name": LOST}) as r:
                    body = await r.json()
            assert r.status == 500 and f"{lost.address} did not answer within {LOST_LAUNCH_TIMEOUT} s" in body["message"], body
            assert slowest < REST_BOUND and probed > 10, (slowest, probed)
            async with http.get(f"{gw.url}/api/kernels") as r:
                assert sorted(k["id"] for k in await r.json()) == sorted([kept, doomed])
            assert sorted(p.stem for p in (gw.runtime_dir / "kernels").glob("*.json")) == sorted([kept, doomed])

            # The kernel on that host: each operation answers within a bound, saying what happened.
            async with asyncio.timeout(10):  # answered, though the signal is lost on the way
                async with http.post(f"{gw.url}/api/kernels/{doomed}/interrupt") as r:
                    assert r.status == 204, await r.text()
            async with asyncio.timeout(20):
                async with http.post(f"{gw.url}/api/kernels/{doomed}/restart") as r:
                    body = await r.json()
            assert r.status == 500 and "does not answer" in body["message"], body
            await eventually(lambda: _state_is(http, gw, doomed, "dead"), timeout=60)
            async with asyncio.timeout(20):
                async with http.delete(f"{gw.url}/api/kernels/{doomed}") as r:
                    assert r.status == 204, await r.text()
            async with http.get(f"{gw.url}/api/kernels/{doomed}") as r:
                assert r.status == 404
            # It may run on there: its record stays (dead: nobody adopts it) until its end is proven.
            assert json.loads((gw.runtime_dir / "kernels" / f"{doomed}.json").read_text())["state"] == "dead"
            assert remote_kernel_pid(lost, doomed)
            _, stdout = await sock.execute("print(y)")
            assert stdout == "7\n"
            done.set()
            await prober
            assert slowest < REST_BOUND, slowest
        # The host answers again: the kernel shut down meanwhile is ended there, and the start given up
        # on, whose SSH connect the operating system still retries, is ended if it lands.
        await eventually(lambda: asyncio.sleep(0, remote_kernel_pid(lost, doomed) is None), timeout=30)
        await eventually(lambda: asyncio.sleep(0, not (gw.runtime_dir / "kernels" / f"{doomed}.json").exists()), timeout=10)
        await eventually(lambda: asyncio.sleep(0, "after its start was given up; ending it" in gw.log()), timeout=70)
        await eventually(lambda: asyncio.sleep(0, [k for k in kernels_on(hosts) if lost.name in k] == []), timeout=30)
        await sock.close()
        assert await gw.stop() == 0
    finally:
        done.set()
        await asyncio.gather(prober, return_exceptions=True)
    assert kernels_on(hosts) == []


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True, timeout=30)


async def _settled(http, gw, kernel_id: str) -> str | None:
    state = (await model(http, gw, kernel_id))["execution_state"]
    return state if state in ("idle", "dead") else None


# -- 6. security ------------------------------------------------------------------------------------


HOSTILE = ["$(touch {marker})", '"; touch {marker}; echo "', "`touch {marker}`", "x\ntouch {marker}", "';touch {marker};'"]


async def test_hostile_env_values_never_run_on_a_host(remote_gateway, http, hosts, tmp_path):
    gw = await remote_gateway()
    marker = tmp_path / "ran"
    for value in HOSTILE:
        for name in ("KERNEL_USERNAME", "KERNEL_ANYTHING"):
            env = {name: value.format(marker=marker)}
            async with http.post(f"{gw.url}/api/kernels", json={"name": SPEC, "env": env}) as r:
                body = await r.json()
                if name == "KERNEL_USERNAME":
                    assert r.status == 400 and "plain name" in body["message"], body
                else:  # never on a command line: it reaches the kernel's environment as it is
                    assert r.status == 201, body
                    sock = await KernelSocket.open(http, gw, body["id"])
                    _, stdout = await sock.execute(f"import os; print(repr(os.environ.get({name!r})))")
                    assert stdout == f"{env[name]!r}\n" or stdout == "None\n"
                    await sock.close()
                    async with http.delete(f"{gw.url}/api/kernels/{body['id']}") as d:
                        assert d.status == 204
    assert not marker.exists()
    async with http.post(f"{gw.url}/api/kernels", json={"name": SPEC, "env": {"KERNEL_USERNAME": "alice"}}) as r:
        assert r.status == 201
        kernel_id = (await r.json())["id"]

    # The kernel's key and the gateway's token are in no log, no command line on a host, and no file
    # others can read.
    key = connection_info(gw, kernel_id)["key"]
    assert key and key not in gw.log()
    for host in hosts:
        assert not any(key in line for line in host.processes())
    for path in gw.runtime_dir.rglob("*"):
        if path.is_file() and key in path.read_text(errors="replace"):
            assert path.stat().st_mode & 0o077 == 0, path
    assert await gw.stop() == 0


# -- 5. the rest of the lifecycle -------------------------------------------------------------------


async def test_limits_pool_metrics_and_a_clean_stop_for_remote_kernels(remote_gateway, http, hosts):
    gw = await remote_gateway("--pool", f"{SPEC}=1", "--max-kernels", "2")
    await eventually(lambda: asyncio.sleep(0, "Warm kernel ready" in gw.log()), timeout=60)
    assert len(kernels_on(hosts)) == 1  # the spare runs on a host

    # Three starts at once against a limit of two: the remote starts in flight count.
    answers = await asyncio.gather(*(http.post(f"{gw.url}/api/kernels", json={"name": SPEC, "env": {"KERNEL_N": str(n)}})
                                     for n in range(3)))
    statuses = sorted(r.status for r in answers)
    for r in answers:
        r.release()
    assert statuses == [201, 201, 403], statuses
    async with http.get(f"{gw.url}/api/kernels") as r:
        ids = [k["id"] for k in await r.json()]
    assert len(ids) == 2
    taken = await start_kernel_from_pool(http, gw, ids)
    assert taken is None  # at the limit, the pool hands out nothing either

    # Logs and metrics name the hosts.
    for kernel_id in ids:
        assert f"Kernel started: {kernel_id} on {host_of(hosts, gw, kernel_id).address}" in gw.log()
    async with http.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    counted = {h.address: 0 for h in hosts}
    for line in text.splitlines():
        if line.startswith("kernels_gateway_kernels_by_host{"):
            counted[line.split('"')[1]] = float(line.split()[-1])
    assert sum(counted.values()) == 2 and set(counted) == {h.address for h in hosts}, counted

    # A clean stop leaves no kernel on any host, the warm spare's included, within the stop's deadline.
    assert len(kernels_on(hosts)) == 3
    assert await gw.stop(timeout=40) == 0
    assert kernels_on(hosts) == []
    assert not list((gw.runtime_dir / "kernels").glob("*.json"))


async def start_kernel_from_pool(http, gw, ids) -> str | None:
    async with http.post(f"{gw.url}/api/kernels", json={"name": SPEC}) as r:
        return (await r.json())["id"] if r.status == 201 else None


async def test_idle_remote_kernels_are_culled_on_their_hosts(remote_gateway, http, hosts):
    gw = await remote_gateway("--cull-idle-timeout", "1", "--cull-interval", "0.5")
    kernel_id = await start_kernel(http, gw)
    await eventually(lambda: asyncio.sleep(0, f"Kernel culled: {kernel_id}" in gw.log()), timeout=30)
    await eventually(lambda: asyncio.sleep(0, kernels_on(hosts) == []), timeout=30)
    async with http.get(f"{gw.url}/api/kernels/{kernel_id}") as r:
        assert r.status == 404
    assert await gw.stop() == 0


async def test_the_token_reaches_no_host(start_gateway, remote, http, hosts):
    _, env = remote
    token = "remote-test-token-" + os.urandom(8).hex()
    gw = await start_gateway("--initial-kernels", "0", env={**env, "KERNELS_GATEWAY_AUTH_TOKEN": token})
    auth = {"Authorization": f"token {token}"}
    async with http.post(f"{gw.url}/api/kernels", json={"name": SPEC}, headers=auth) as r:
        assert r.status == 201, await r.text()
        kernel_id = (await r.json())["id"]
    sock = await KernelSocket.open(http, gw, kernel_id, headers=auth)
    _, stdout = await sock.execute("import os; print(any(%r in v for v in os.environ.values()))" % token)
    assert stdout == "False\n"
    await sock.close()
    for host in hosts:
        assert not any(token in line for line in host.processes())
    assert not any(token in path.read_text(errors="replace") for path in (gw.runtime_dir / "kernels").glob("*.json"))
    assert token not in gw.log()
    assert await gw.stop() == 0
