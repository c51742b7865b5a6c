"""Promises kept under load: kernels flooding output, clients reading slowly or sending without pause,
messages larger than the buffers. Every flood runs for a few seconds and is then interrupted or shut
down; answers are awaited with generous timeouts, never timed."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from kernels_gateway.supervisor.client import SupervisorClient

from .conftest import eventually
from .kernel_client import KernelSocket
from .helpers import json_of, start_kernel

# Many small messages: each flush waits for the kernel's iopub thread to send what was written.
FLOOD = "while True: print('x' * 100, flush=True)"
# As many as the kernel can send: stream messages published straight from the cell, no flush to wait for.
RAW_FLOOD = (
    "k, parent = get_ipython().kernel, get_ipython().parent_header\n"
    "while True: k.session.send(k.iopub_socket, 'stream', {'name': 'stdout', 'text': 'x' * 100}, parent=parent)"
)
ANSWER = 10.0  # what "answers while the flood runs" allows; without the fix, the answer never comes
BATCH = 50  # messages a test reader takes before it lets the test's own probes run


class Reader:
    """Reads one websocket until cancelled, as fast as it can or with a pause after each message;
    counts stdout bytes, keeps drop notices, and remembers the replies it saw."""

    def __init__(self, sock: KernelSocket, pause: float = 0.0):
        self.sock, self.pause = sock, pause
        self.stdout = 0
        self.notices: list[str] = []
        self.replies: dict[str, dict] = {}  # parent msg_id -> reply content
        self.idle: set[str] = set()  # parent msg_ids whose idle arrived
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        count = 0
        while True:
            msg = await self.sock.receive(timeout=60)
            parent = msg["parent_header"].get("msg_id")
            kind = msg["header"]["msg_type"]
            text = msg["content"].get("text", "")
            if kind == "stream" and text.startswith("[kernels-gateway]"):
                self.notices.append(text)
            elif kind == "stream":
                self.stdout += len(msg["content"]["text"])
            elif msg["channel"] == "shell":
                self.replies[parent] = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                self.idle.add(parent)
            count += 1
            if self.pause:
                await asyncio.sleep(self.pause)
            elif count % BATCH == 0:
                await asyncio.sleep(0)  # a websocket with frames buffered returns them without yielding

    async def start(self, code: str) -> str:
        request = self.sock.message("execute_request", {"code": code, "silent": False})
        await self.sock.send(request)
        return request["header"]["msg_id"]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.sock.close()


async def _answers(http, url: str) -> bool:
    async with asyncio.timeout(ANSWER):
        async with http.get(url) as response:
            return response.status == 200


async def test_floods_starve_neither_rest_nor_the_supervisor_nor_other_websockets(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0")
    flooding = [await start_kernel(http, gw) for _ in range(3)]
    quiet = await start_kernel(http, gw)
    readers = [Reader(await KernelSocket.open(http, gw, k, max_msg_size=0)) for k in flooding]
    other = await KernelSocket.open(http, gw, quiet)
    supervisor = SupervisorClient(gw.runtime_dir / "supervisor.sock")
    try:
        cells = [await reader.start(RAW_FLOOD) for reader in readers]
        await eventually(lambda: _all_flowing(readers), timeout=30)
        for _ in range(3):
            for path in ("/api", "/api/kernels", f"/api/kernels/{flooding[0]}", "/api/health"):
                assert await _answers(http, gw.url + path), path
            async with asyncio.timeout(ANSWER):
                assert (await supervisor.ping())["pid"]
            reply, stdout = await other.execute("print(6 * 7)", timeout=ANSWER)
            assert reply["content"]["status"] == "ok" and stdout == "42\n"
        for kernel_id, reader, cell in zip(flooding, readers, cells):
            async with asyncio.timeout(ANSWER):
                async with http.post(f"{gw.url}/api/kernels/{kernel_id}/interrupt") as response:
                    assert response.status == 204
            await eventually(lambda: _replied(reader, cell), timeout=ANSWER)
            assert reader.replies[cell]["ename"] == "KeyboardInterrupt"
        assert all(reader.stdout > 0 and not reader.notices for reader in readers)
    finally:
        for reader in readers:
            await reader.stop()
        await other.close()
        await supervisor.close()


async def _all_flowing(readers: list[Reader]) -> bool:
    return all(reader.stdout > 10_000 for reader in readers)


async def _replied(reader: Reader, msg_id: str) -> bool:
    return msg_id in reader.replies


async def test_a_slow_reader_is_told_in_band_while_the_flood_goes_on(start_gateway, http):
    """A reader slower than the flood: the backlog must not sit at the bound forever, one message in
    for each one out, with the notice never sent. Dropping lasts until half the backlog is sent, and
    the notice takes the place of what was lost."""
    gw = await start_gateway("--initial-kernels", "0", "--max-output-buffer", str(256 << 10))
    kernel_id = await start_kernel(http, gw)
    # 100 messages a second, a few times slower than the kernel sends lines of this size.
    reader = Reader(await KernelSocket.open(http, gw, kernel_id), pause=0.01)
    try:
        cell = await reader.start("while True: print('x' * 5000, flush=True)")
        await eventually(lambda: _told(reader), timeout=45)  # while the flood goes on
        assert "could not keep up" in reader.notices[0] and "--max-output-buffer" in reader.notices[0]
        async with http.post(f"{gw.url}/api/kernels/{kernel_id}/interrupt") as response:
            assert response.status == 204
        await eventually(lambda: _idle(reader, cell), timeout=90)
        assert "dropped for one websocket" in gw.log()
    finally:
        await reader.stop()


async def _told(reader: Reader) -> bool:
    return bool(reader.notices)


async def _idle(reader: Reader, msg_id: str) -> bool:
    return msg_id in reader.idle


async def _run(sock: KernelSocket, code: str) -> tuple[list[dict], dict]:
    """Every iopub message of a cell up to its idle, and its reply."""
    reply, iopub = await sock.reply_to(sock.message("execute_request", {"code": code, "silent": False}), timeout=60)
    return iopub, reply


async def test_a_message_larger_than_the_output_buffer_reaches_a_client_that_keeps_up(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--max-output-buffer", str(1 << 20))
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id, max_msg_size=0)
    iopub, reply = await _run(sock, "print('y' * 5_000_000)")
    assert reply["content"]["status"] == "ok"
    stdout = "".join(m["content"]["text"] for m in iopub if m["header"]["msg_type"] == "stream")
    assert stdout == "y" * 5_000_000 + "\n"
    await sock.close()


async def test_a_message_too_large_to_send_is_reported_before_the_idle(start_gateway, http):
    gw = await start_gateway("--initial-kernels", "0", "--max-message-size", str(2 << 20))
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id, max_msg_size=0)
    iopub, _ = await _run(sock, "import sys\nprint('before', flush=True)\nprint('z' * 3_000_000)")
    kinds = [(m["header"]["msg_type"], m["content"].get("name")) for m in iopub]
    texts = [m["content"]["text"] for m in iopub if m["header"]["msg_type"] == "stream"]
    assert texts[0] == "before\n"
    assert kinds.index(("stream", "stderr")) < len(kinds) - 1 and kinds[-1] == ("status", None)  # before idle
    notice = texts[1]
    assert "1 output messages" in notice and "3000" in notice.replace(",", "")
    assert "larger than a websocket message may be (--max-message-size" in notice
    assert "dropped for one websocket" in gw.log()
    _, stdout = await sock.execute("print('fine')")
    assert stdout == "fine\n"
    await sock.close()


async def test_a_client_sending_faster_than_its_kernel_reads_blocks_nobody_else(start_gateway, http):
    """A kernel busy with a long cell reads none of the requests its client floods it with; the
    worker sends without blocking, so its other kernels and health checks carry on, and the flooding
    client is only made to wait, losing nothing. Ten thousand requests queued at once would also
    deadlock ipykernel's own threads, which the bound on unanswered requests prevents."""
    gw = await start_gateway("--initial-kernels", "0")
    busy_id, other_id = await start_kernel(http, gw), await start_kernel(http, gw)
    busy = Reader(await KernelSocket.open(http, gw, busy_id))
    other = await KernelSocket.open(http, gw, other_id)
    try:
        await busy.start("import time; time.sleep(15)")
        requests = [busy.sock.message("kernel_info_request", {}) for _ in range(10_000)]

        async def flood() -> None:
            for request in requests:
                await busy.sock.send(request)

        sender = asyncio.create_task(flood())
        await asyncio.sleep(1)  # the kernel's queues are full by now: the worker waits on this client
        for i in range(3):
            reply, stdout = await other.execute(f"print({i})", timeout=ANSWER)
            assert stdout == f"{i}\n"
            assert await _answers(http, f"{gw.url}/api/health")
        async with asyncio.timeout(ANSWER):
            async with http.post(f"{gw.url}/api/kernels/{busy_id}/interrupt") as response:
                assert response.status == 204
        await asyncio.wait_for(sender, 60)
        last = requests[-1]["header"]["msg_id"]
        await eventually(lambda: _replied(busy, last), timeout=90)
        assert sum(r["header"]["msg_id"] in busy.replies for r in requests) == len(requests)
    finally:
        await busy.stop()
        await other.close()


async def test_a_late_status_moves_a_kernel_on_from_starting(start_gateway, http):
    """A kernel's own `starting` status may reach the supervisor after the kernel_info that proved it
    ready; the status of any later request, tracked or not, moves it on, as in Jupyter Server."""
    gw = await start_gateway("--initial-kernels", "0")
    kernel_id = await start_kernel(http, gw)
    sock = await KernelSocket.open(http, gw, kernel_id)
    late_starting = (
        "import threading\nk = get_ipython().kernel\n"
        "threading.Timer(0.5, lambda: k.session.send(k.iopub_socket, 'status', {'execution_state': 'starting'},"
        " ident=b'kernel.late.status')).start()"
    )
    await sock.execute(late_starting)
    url = f"{gw.url}/api/kernels/{kernel_id}"
    await eventually(lambda: _state_is(http, url, "starting"), timeout=10)
    await sock.reply_to(sock.message("kernel_info_request", {}))  # busy and idle, parented by kernel_info
    await eventually(lambda: _state_is(http, url, "idle"), timeout=10)
    await sock.close()


async def _state_is(http, url: str, state: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        return (await json_of(http, "GET", url))[1]["execution_state"] == state
    return False
