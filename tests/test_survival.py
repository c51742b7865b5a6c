"""What survives what: kill -9 a kernel, a worker, the supervisor; culling; limits; replay; stop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from .conftest import eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import children, json_of, kernel_ids_by_pid, start_kernel, wait_for_status


async def reconnect(http, gw, kernel_id: str, **kw) -> KernelSocket:
    async def attempt():
        try:
            return await KernelSocket.open(http, gw, kernel_id, **kw)
        except (aiohttp.ClientError, AssertionError):
            return None
    return await eventually(attempt, every=0.2)


async def test_killed_kernel_restarts_under_the_same_id_on_the_same_websockets(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    legacy = await KernelSocket.open(http, gw, kernel_id)
    v1 = await KernelSocket.open(http, gw, kernel_id, v1=True)
    await legacy.execute("x = 42")
    [pid] = kernel_pids(gw.runtime_dir)
    os.kill(pid, signal.SIGKILL)
    for sock in (legacy, v1):
        status = await wait_for_status(sock, "restarting")
        assert status["channel"] == "iopub"
    for sock in (legacy, v1):  # the same websockets reach the new kernel, a new process without x
        reply, _ = await eventually(lambda: sock.execute("print(x)"), timeout=30)
        assert reply["content"]["ename"] == "NameError"
        _, stdout = await sock.execute("print('back')")
        assert stdout == "back\n"
    [new_pid] = kernel_pids(gw.runtime_dir)
    assert new_pid != pid
    # The supervisor hears the last cell's idle on its own iopub socket, a moment after this client may.
    await eventually(lambda: _idle(http, gw, kernel_id))
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    assert model["id"] == kernel_id
    assert "Kernel restarted" in gw.log()
    for sock in (legacy, v1):
        await sock.close()


async def test_a_kernel_that_keeps_dying_is_declared_dead(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--restart-limit", "1")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    os.kill(kernel_pids(gw.runtime_dir)[0], signal.SIGKILL)
    await wait_for_status(sock, "restarting")
    await eventually(lambda: _idle(http, gw, kernel_id))
    os.kill(kernel_pids(gw.runtime_dir)[0], signal.SIGKILL)  # dies again within the stable period: over the limit
    await wait_for_status(sock, "dead")
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    assert model["execution_state"] == "dead"
    assert "died" in model["reason"]
    status, _ = await json_of(http, "DELETE", f"{gw.url}/api/kernels/{kernel_id}")
    assert status == 204
    await sock.close()


async def _idle(http, gw, kernel_id):
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    return model["execution_state"] == "idle"


async def test_killed_worker_costs_only_its_websockets(start_gateway, http):
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id, session_id="s1")
    await sock.execute("x = 42")
    workers = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway web" in cmd]
    assert len(workers) == 2
    for worker in workers:  # one after the other: the websocket was on one of them
        os.kill(worker, signal.SIGKILL)
        await asyncio.sleep(0.2)
    sock = await reconnect(http, gw, kernel_id, session_id="s1")
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    assert model["connections"] == 1  # the dead workers' connections were dropped
    new_workers = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway web" in cmd]
    assert len(new_workers) == 2 and not set(new_workers) & set(workers)
    await sock.close()
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == []


async def test_supervisor_crash_keeps_kernels_and_the_next_one_adopts_them(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    web = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    status, [model] = await json_of(http, "GET", f"{web.url}/api/kernels")
    sock = await KernelSocket.open(http, web, model["id"])
    await sock.execute("x = 42")
    pids = kernel_pids(supervisor.runtime_dir)
    records = list((supervisor.runtime_dir / "kernels").glob("*.json"))
    assert len(records) == 1 and oct(records[0].stat().st_mode & 0o777) == "0o600"

    supervisor.process.kill()
    supervisor.process.wait()
    status, body = await json_of(http, "GET", f"{web.url}/api/kernels")
    assert status == 503 and "supervisor" in body["message"]
    _, stdout = await sock.execute("print(x)")  # the websocket goes straight to the kernel
    assert stdout == "42\n"
    assert kernel_pids(supervisor.runtime_dir) == pids

    supervisor.process = None
    supervisor.log_file.close()
    await supervisor.start(wait_for="Kernel adopted")
    status, kernels = await eventually(lambda: _listing(http, web))
    assert [(k["id"], k["name"]) for k in kernels] == [(model["id"], model["name"])]
    assert kernels[0]["connections"] == 1  # the worker announced its websocket again
    _, stdout = await sock.execute("print(x)")
    assert stdout == "42\n"
    assert "Kernel started" not in supervisor.log().split("Kernel adopted")[1]

    # The adopted kernel is still restarted when it dies, and shut down on a clean stop.
    os.kill(pids[0], signal.SIGKILL)
    await wait_for_status(sock, "restarting")
    await eventually(lambda: _idle(http, web, model["id"]))
    await sock.close()
    assert await supervisor.stop() == 0
    assert kernel_pids(supervisor.runtime_dir) == []
    assert not list((supervisor.runtime_dir / "kernels").glob("*.json"))


async def _exists(path: Path) -> bool:
    return path.exists()


async def _logged(gw, line: str) -> bool:
    return line in gw.log()


async def _exited(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def _listing(http, gw):
    status, kernels = await json_of(http, "GET", f"{gw.url}/api/kernels")
    return (status, kernels) if status == 200 else None


async def test_records_of_kernels_that_died_meanwhile_are_dropped(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    [pid] = kernel_pids(supervisor.runtime_dir)
    supervisor.process.kill()
    supervisor.process.wait()
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _exited(pid))
    supervisor.process = None
    supervisor.log_file.close()
    await supervisor.start(wait_for="Kernel started")  # nothing adopted: a fresh launch kernel
    assert "forgetting it" in supervisor.log() or "Kernel adopted" not in supervisor.log()
    assert len(list((supervisor.runtime_dir / "kernels").glob("*.json"))) == 1
    assert await supervisor.stop() == 0


async def test_arbiter_restarts_a_killed_supervisor(start_gateway, http):
    gw = await start_gateway()
    status, [model] = await json_of(http, "GET", f"{gw.url}/api/kernels")
    [supervisor] = [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway supervisor" in cmd]
    os.kill(supervisor, signal.SIGKILL)
    status, kernels = await eventually(lambda: _listing(http, gw))
    assert [k["id"] for k in kernels] == [model["id"]]
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == []


async def test_culling(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--cull-idle-timeout", "1", "--cull-interval", "0.5")
    idle = await start_kernel(http, gw)
    connected = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, connected)
    await eventually(lambda: _gone(http, gw, idle))
    await eventually(lambda: _logged(gw, f"Kernel culled: {idle}"))
    await asyncio.sleep(2)
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{connected}")
    assert status == 200, "a connected kernel was culled without --cull-connected"
    await sock.close()
    await eventually(lambda: _gone(http, gw, connected))


async def test_culling_connected_but_not_busy(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--cull-idle-timeout", "1", "--cull-interval", "0.5",
                             "--cull-connected")
    busy = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, busy)
    await sock.send(sock.message("execute_request", {"code": "import time; time.sleep(30)", "silent": False}))
    await wait_for_status(sock, "busy")
    await asyncio.sleep(3)
    status, model = await json_of(http, "GET", f"{gw.url}/api/kernels/{busy}")
    assert status == 200 and model["execution_state"] == "busy"
    status, _ = await json_of(http, "POST", f"{gw.url}/api/kernels/{busy}/interrupt")
    await eventually(lambda: _gone(http, gw, busy))
    await sock.close()


async def _gone(http, gw, kernel_id):
    status, _ = await json_of(http, "GET", f"{gw.url}/api/kernels/{kernel_id}")
    return status == 404


async def test_kernel_limit_holds_under_a_burst(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--max-kernels", "3")
    results = await asyncio.gather(*(json_of(http, "POST", f"{gw.url}/api/kernels", json={}) for _ in range(6)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [201, 201, 201, 403, 403, 403]
    refusal = next(body for status, body in results if status == 403)
    assert "max kernels limit of 3" in refusal["message"]
    status, kernels = await json_of(http, "GET", f"{gw.url}/api/kernels")
    assert len(kernels) == 3 == len(kernel_pids(gw.runtime_dir))


async def test_replay_of_missed_output_through_another_worker(start_gateway, http):
    supervisor = await start_gateway(command=("supervisor",), wait_for="Kernel started")
    first = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    second = await start_gateway("--runtime-dir", str(supervisor.runtime_dir), command=("web",))
    status, [model] = await json_of(http, "GET", f"{first.url}/api/kernels")
    away = await KernelSocket.open(http, first, model["id"], session_id="away")
    _, stdout = await away.execute("print('seen')")
    assert stdout == "seen\n"
    await away.close()

    other = await KernelSocket.open(http, first, model["id"], session_id="other")
    _, stdout = await other.execute("print('while you were away')")
    assert stdout == "while you were away\n"

    back = await KernelSocket.open(http, second, model["id"], session_id="away")
    replayed = []
    async with asyncio.timeout(10):
        while not any(m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      and m["parent_header"].get("msg_type") == "execute_request" for m in replayed):
            replayed.append(await back.receive())
    texts = [m["content"]["text"] for m in replayed if m["header"]["msg_type"] == "stream"]
    assert texts == ["while you were away\n"], [(m["header"]["msg_type"], m["parent_header"].get("msg_type"), m["content"].get("execution_state")) for m in replayed]  # and not "seen", which it had
    # A session that was never here gets no replay.
    fresh = await KernelSocket.open(http, second, model["id"], session_id="fresh")
    _, stdout = await fresh.execute("print('live')")
    assert stdout == "live\n"
    assert not [m for m in fresh.pending if m["header"]["msg_type"] == "stream"]
    for sock in (other, back, fresh):
        await sock.close()


async def test_stop_closes_websockets_with_1001(start_gateway, http):
    gw = await start_gateway()
    status, [model] = await json_of(http, "GET", f"{gw.url}/api/kernels")
    sock = await KernelSocket.open(http, gw, model["id"])
    stopping = asyncio.create_task(gw.stop())
    frame = await sock.ws.receive(timeout=20)
    while frame.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):  # the nudge's last status
        frame = await sock.ws.receive(timeout=20)
    assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 1001
    assert await stopping == 0
    assert kernel_pids(gw.runtime_dir) == []
    assert not [pid for pid in children(gw.process.pid)]


async def _spares(gw, count: int):
    pids = kernel_pids(gw.runtime_dir)
    return pids if len(pids) == count else None


async def test_warm_pool_hands_out_ready_kernels_and_refills(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--pool", "python3=1")
    await eventually(lambda: _logged(gw, "Warm kernel ready"))
    [spare] = kernel_pids(gw.runtime_dir)
    status, kernels = await json_of(http, "GET", f"{gw.url}/api/kernels")
    assert kernels == []  # warm kernels are not listed
    status, model = await json_of(http, "POST", f"{gw.url}/api/kernels", json={"name": "python3"})
    assert status == 201 and model["execution_state"] == "idle"
    assert kernel_ids_by_pid(gw.runtime_dir)[spare] == model["id"]  # the warm process, under a new id
    await eventually(lambda: _spares(gw, 2))  # refilled

    status, cold = await json_of(http, "POST", f"{gw.url}/api/kernels", json={"env": {"KERNEL_X": "cold"}})
    assert status == 201
    sock = await KernelSocket.open(http, gw, cold["id"])
    _, stdout = await sock.execute("import os; print(os.environ['KERNEL_X'])")
    assert stdout == "cold\n"  # a request with env never gets a warm kernel
    await sock.close()
    assert len(kernel_pids(gw.runtime_dir)) == 3
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == []


async def test_killed_kernel_takes_over_a_warm_spare(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--pool", "python3=1")
    await eventually(lambda: _logged(gw, "Warm kernel ready"))
    status, model = await json_of(http, "POST", f"{gw.url}/api/kernels", json={})
    await eventually(lambda: _warm_kernels(gw, 2))
    [spare] = [pid for pid, kid in (await eventually(lambda: _by_pid_when(gw, 2))).items() if kid != model["id"]]
    sock = await KernelSocket.open(http, gw, model["id"], v1=True)
    await sock.execute("x = 1")
    victim = next(pid for pid, kid in kernel_ids_by_pid(gw.runtime_dir).items() if kid == model["id"])
    os.kill(victim, signal.SIGKILL)
    await wait_for_status(sock, "restarting")
    reply, _ = await eventually(lambda: sock.execute("print(x)"))
    assert reply["content"]["ename"] == "NameError"  # a fresh process answers on the same websocket
    _, stdout = await sock.execute("import os; print(os.getpid())")
    assert int(stdout) == spare
    await eventually(lambda: _idle(http, gw, model["id"]))  # the same id, tracked on the new process
    await eventually(lambda: _spares(gw, 2))  # the pool refills
    await sock.close()
    assert await gw.stop() == 0
    assert kernel_pids(gw.runtime_dir) == []


async def _warm_kernels(gw, count: int) -> bool:
    return gw.log().count("Warm kernel ready") >= count


async def _by_pid_when(gw, count: int):
    found = kernel_ids_by_pid(gw.runtime_dir)
    return found if len(found) == count else None


async def test_a_slow_client_is_told_what_it_lost(start_gateway, http, tmp_path):
    gw = await start_gateway("--initial-kernels", "0", "--max-output-buffer", str(1 << 20))
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id, max_msg_size=0)
    done = tmp_path / "done"
    code = (f"import sys\nfor i in range(400): sys.stdout.write('x' * 65536); sys.stdout.flush()\n"
            f"open({str(done)!r}, 'w').close()")
    request = sock.message("execute_request", {"code": code, "silent": False})
    await sock.send(request)
    # Read nothing until all 25 MiB are written: the socket buffers fill, then the outbox overflows.
    await eventually(lambda: _exists(done), timeout=60)
    received, notices = 0, []
    async with asyncio.timeout(60):
        while True:
            msg = await sock.receive()
            if msg["header"]["msg_type"] == "stream":
                if msg["content"]["name"] == "stderr":
                    notices.append(msg["content"]["text"])
                else:
                    received += len(msg["content"]["text"])
            # The notice comes before the idle (a reply on shell may overtake iopub, as it may anywhere).
            if (msg["header"]["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
                    and msg["parent_header"].get("msg_id") == request["header"]["msg_id"]):
                break
    assert notices and "could not keep up" in notices[0]
    assert received < 400 * 65536
    _, stdout = await sock.execute("print('fine')")
    assert stdout == "fine\n"
    await sock.close()
