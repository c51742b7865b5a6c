"""Replay is exactly once: a websocket that drops and comes back with its session_id, through either of two
workers, gets every numbered line of a flood once, the reply to the request it had in flight, and a
notice when the replay limits dropped output. Each case drops the connection as real clients do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from kernels_gateway.gateway.channels import ACK_EVERY

from .conftest import eventually
from .kernel_client import KernelSocket
from .helpers import children, start_kernel

# A line's message takes about 300 bytes of socket buffers; these hold a few MiB at most.
MAX_IN_FLIGHT = 10_000
# The kernel's iopub socket drops, without a word, what exceeds its queue for one subscriber (1,000
# messages), which a worker on a loaded machine can fall behind by: no matter of replay, so the
# flood lifts that limit first (in the socket's own thread). Then one write per line, so that no
# message holds part of a line, at about 2,000 lines a second.
UNBOUNDED_IOPUB = """
import sys, threading, time
iopub = get_ipython().kernel.iopub_thread
lifted = threading.Event()
def lift():
    iopub.socket.sndhwm = 0
    lifted.set()
iopub.io_loop.add_callback(lift)
lifted.wait(10)
"""
FLOOD = UNBOUNDED_IOPUB + """
for i in range({n}):
    sys.stdout.write(f'line {{i}}\\n'); sys.stdout.flush()
    if i % 10 == 0: time.sleep(0.005)
"""


class Output:
    """The lines, reply and idle of one execute request, counted as they arrive over any websocket."""

    def __init__(self, request: dict):
        self.msg_id = request["header"]["msg_id"]
        self.lines: Counter[int] = Counter()
        self.reply: list[dict] = []
        self.idle = False
        self.notices: list[str] = []

    def take(self, msg: dict) -> None:
        kind = msg["header"]["msg_type"]
        if kind == "stream" and msg["header"].get("username") == "kernels-gateway":
            self.notices.append(msg["content"]["text"])
        if msg["parent_header"].get("msg_id") != self.msg_id:
            return
        if kind == "stream" and msg["content"]["name"] == "stdout":
            for line in msg["content"]["text"].splitlines():
                self.lines[int(line.split()[1])] += 1
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            self.idle = True
        elif msg["channel"] == "shell":
            self.reply.append(msg)

    @property
    def done(self) -> bool:
        return self.idle and bool(self.reply)

    def lost(self, n: int) -> list[int]:
        return [i for i in range(n) if not self.lines[i]]

    def repeated(self) -> int:
        return sum(count - 1 for count in self.lines.values())


def workers(gw) -> list[int]:
    return [pid for pid, cmd in children(gw.process.pid).items() if "kernels_gateway web" in cmd]


def serving_worker(gw, sock: KernelSocket) -> int | None:
    """The worker process holding the server end of this websocket's TCP connection."""
    client_port = sock.ws.get_extra_info("sockname")[1]
    wanted = f"0100007F:{gw.port:04X} 0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
    for pid in workers(gw):
        try:
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
        except OSError:
            continue
    return None


async def open_session(http, gw, kernel_id: str, session_id: str, on: int | None = None,
                       avoid: int | None = None) -> tuple[KernelSocket, int]:
    """Open the session's websocket again and again until it lands on worker `on` (or off `avoid`);
    the connections that land elsewhere close at once, as a client that gives up early would."""
    async def attempt():
        try:
            sock = await KernelSocket.open(http, gw, kernel_id, session_id=session_id)
        except (aiohttp.ClientError, AssertionError):
            return None
        worker = serving_worker(gw, sock)
        if worker is None or (on is not None and worker != on) or worker == avoid:
            await sock.close()
            return None
        return sock, worker
    return await eventually(attempt, timeout=60, every=0.05)


async def read_until(sock: KernelSocket, output: Output, until, timeout: float = 60) -> None:
    """Take messages into `output` until `until()` holds, the websocket ends, or time runs out."""
    async with asyncio.timeout(timeout):
        while not until():
            try:
                output.take(await sock.receive())
            except ConnectionError:
                return


async def flood_with_drops(http, gw, drop, n: int, drops: int = 3) -> Output:
    """Start a flood of n numbered lines and drop the websocket `drops` times while it runs, each time
    coming back through the other worker and then through the same one."""
    kernel_id = await start_kernel(http, gw)
    sock, worker = await open_session(http, gw, kernel_id, "s")
    request = sock.message("execute_request", {"code": FLOOD.format(n=n), "silent": False,
                                               "store_history": False, "user_expressions": {}, "allow_stdin": False})
    output = Output(request)
    await sock.send(request)
    for number in range(drops):
        seen = sum(output.lines.values())
        await read_until(sock, output, lambda: sum(output.lines.values()) >= seen + n // (drops + 2))
        await drop(sock, worker, output)
        sock, worker = await open_session(http, gw, kernel_id, "s", **({"avoid": worker} if number % 2 == 0 else {"on": worker}))
    with contextlib.suppress(TimeoutError):
        await read_until(sock, output, lambda: output.done)
    await sock.close()
    print(f"{drop.__name__}: {len(output.lost(n))} of {n} lines lost, {output.repeated()} repeated, "
          f"{len(output.reply)} replies")
    return output


async def close_mid_flood(sock: KernelSocket, worker: int, output: Output) -> None:
    await sock.ws.close()  # a close handshake with frames in flight: the client discards them


async def abort_mid_flood(sock: KernelSocket, worker: int, output: Output) -> None:
    sock.ws._response.connection.transport.abort()  # no close frame: the connection just breaks
    with contextlib.suppress(aiohttp.ClientError):
        await sock.ws.close()


async def stall_then_kill(sock: KernelSocket, worker: int, output: Output) -> None:
    """The worker stops (SIGSTOP); the client reads all that was on its way, then the worker is killed."""
    os.kill(worker, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            while True:
                output.take(await sock.receive(timeout=1))
    finally:
        os.kill(worker, signal.SIGKILL)
    with pytest.raises(ConnectionError):
        while True:
            output.take(await sock.receive(timeout=10))


@pytest.mark.parametrize("drop", [close_mid_flood, abort_mid_flood], ids=["close", "abort"])
async def test_a_flood_survives_drops_with_no_line_lost(start_gateway, http, drop):
    """Mid-flood, a client may have read up to ACK_EVERY - 1 lines past the last ping it answered
    (more than one only in a flood): those can come again, once; nothing is lost."""
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0")
    n, drops = 10_000, 3
    output = await flood_with_drops(http, gw, drop, n, drops)
    assert output.lost(n) == [], len(output.lost(n))
    assert output.repeated() <= drops * ACK_EVERY and max(output.lines.values()) <= 2, output.repeated()
    assert not output.notices
    assert output.done and len(output.reply) == 1


async def test_a_stalled_then_killed_worker_loses_no_line(start_gateway, http):
    """Lines the client read after its worker stopped listening can come again (nobody heard that
    client say it read them), never more than were in flight when the worker stopped; none is lost."""
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0")
    n = 10_000
    output = await flood_with_drops(http, gw, stall_then_kill, n, drops=1)
    assert output.lost(n) == [], len(output.lost(n))
    assert output.repeated() <= MAX_IN_FLIGHT, output.repeated()
    assert output.done and len(output.reply) == 1
    # The dead worker's progress file went once read; the others go with their workers.
    files = await eventually(lambda: _progress_files_match(gw))
    assert len(files) == 2
    assert await gw.stop() == 0 and not list(gw.runtime_dir.glob("progress-*"))


async def _progress_files_match(gw):
    files = sorted(path.name for path in gw.runtime_dir.glob("progress-*"))
    return files if files == sorted(f"progress-{pid}" for pid in workers(gw)) else None


async def test_the_reply_to_a_request_in_flight_comes_back(start_gateway, http):
    """A websocket that drops while its cell runs gets the execute_reply on its return, through the
    other worker, whether it closed or broke."""
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    for number, drop in enumerate((close_mid_flood, abort_mid_flood)):
        session = f"in-flight-{number}"
        sock, worker = await open_session(http, gw, kernel_id, session)
        request = sock.message("execute_request", {"code": "import time; time.sleep(1); print('line 0')",
                                                   "silent": False, "store_history": False,
                                                   "user_expressions": {}, "allow_stdin": False})
        output = Output(request)
        await sock.send(request)
        await drop(sock, worker, output)
        sock, _ = await open_session(http, gw, kernel_id, session, avoid=worker)
        await read_until(sock, output, lambda: output.done, timeout=30)
        await sock.close()
        assert len(output.reply) == 1 and output.reply[0]["content"]["status"] == "ok"
        assert output.lines == Counter({0: 1}) and output.idle


async def test_the_replay_says_what_its_limits_dropped(start_gateway, http):
    gw = await start_gateway("--workers", "2", "--initial-kernels", "0", "--replay-bytes", "200000")
    kernel_id = await start_kernel(http, gw)
    away, worker = await open_session(http, gw, kernel_id, "away")
    _, stdout = await away.execute("print('before')")
    assert stdout == "before\n"
    await away.close()
    other, _ = await open_session(http, gw, kernel_id, "other")
    n = 5000
    request = other.message("execute_request", {"code": FLOOD.format(n=n), "silent": False, "store_history": False,
                                                "user_expressions": {}, "allow_stdin": False})
    output = Output(request)
    await other.send(request)
    await read_until(other, output, lambda: output.done)
    assert output.lost(n) == [] and output.repeated() == 0
    await other.close()

    back, _ = await open_session(http, gw, kernel_id, "away", avoid=worker)
    replayed = Output(request)
    first = await back.receive()
    replayed.take(first)
    await read_until(back, replayed, lambda: replayed.idle, timeout=30)
    await back.close()
    assert replayed.notices and first["content"]["text"] == replayed.notices[0], "the notice comes first"
    found = re.search(r"(\d+) output messages \((\d+) bytes\) were dropped", replayed.notices[0])
    assert found and "--replay-bytes" in replayed.notices[0]
    kept = sorted(replayed.lines)
    assert kept == list(range(kept[0], n)) and replayed.repeated() == 0  # the newest output, whole
    # The dropped: the cell's busy status and execute_input, and every line before the first kept one.
    assert int(found[1]) == kept[0] + 2 and int(found[2]) > 0
