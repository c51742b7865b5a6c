"""Code run through the HTTP execute API: one queue per kernel, each execution's outputs, and the results
kept for callers who fetch them later.

Executions live here, beside the kernels, and not in the web workers: a caller may disconnect, or its
worker die, and the execution goes on; any worker fetches its result. Each kernel that is given code
gets a runner task that sends one execute_request at a time on its own shell socket (so that websocket
clients of the kernel never see these replies, nor this runner theirs) and reads the outputs from the
iopub subscription the supervisor already holds. That subscription hears every message of the kernel:
only those whose parent header carries the running execution's msg_id are parsed, which a byte search
finds before any JSON is read.

Bounded: a kernel's executions (queued, running and finished) hold at most `max_bytes` of code and
outputs; past it, the oldest finished results go first, then the oldest outputs of the running one,
which its result counts. Finished results are kept `max_age` seconds. A result that was dropped
answers 404 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from . import metrics
from ..kernel_protocol import KERNEL_RECONNECT_MS, kernel_url
from ..errors import ExecutionNotFound, InputNotPending, KernelBusy, KernelNotFound
from .kernels import Kernels
from .launcher import Kernel

log = logging.getLogger("kernels_gateway.supervisor")

OUTPUT_TYPES = ("stream", "display_data", "execute_result", "error")
MAX_QUEUED = 1000
MAX_EVENTS = 10000  # outputs waiting for a streaming caller that stopped reading
MAX_FORGOTTEN = 1000  # ids of dropped results, remembered to say why they are gone
OVERHEAD = 512  # bytes each execution counts for, outputs aside: no budget for infinitely many
CHECK_EVERY = 1.0  # seconds between checks that the kernel still exists while an execution runs
IDLE_CHECK = 10.0  # the same while none runs
INTERRUPT_GRACE = 5.0  # seconds a timed-out execution's kernel has to answer after its interrupt
IDLE_GRACE = 2.0  # seconds to wait for the idle that follows a reply (a flood may have dropped it)
MAX_WAIT = 2.0  # seconds a streaming worker's wait may last: well within the control deadline


@dataclass(frozen=True)
class ExecutionLimits:
    max_bytes: int = 32 << 20
    max_age: float = 600.0


@dataclass(eq=False)
class Execution:
    id: str
    kernel_id: str
    code: str
    metadata: dict[str, Any]
    timeout: float | None
    streamed: bool
    status: str = "queued"  # queued, running, then ok, error, aborted, timeout, died, restarted
    reason: str = ""
    msg_id: bytes = b""
    execution_count: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # of each output, as the kernel sent its content
    dropped: int = 0
    dropped_bytes: int = 0
    clear_pending: bool = False
    input_request: dict[str, Any] | None = None
    input_parent: dict[str, Any] | None = None  # the input_request's header, as nbmodel shows it
    input_header: dict[str, Any] | None = None  # the same, as the reply's parent
    replied: bool = False
    idle: bool = False
    started: float = 0.0
    finished_at: float = 0.0
    # What a streaming caller has not read yet: [seq, line]; seq counts every line ever added.
    events: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)
    seq: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def emit(self, line: dict[str, Any]) -> None:
        if self.streamed:
            self.seq += 1
            self.events.append((self.seq, line))
            while len(self.events) > MAX_EVENTS:
                self.events.popleft()
        self.changed.set()

    def model(self) -> dict[str, Any]:
        model: dict[str, Any] = {
            "request_id": self.id, "kernel_id": self.kernel_id, "status": self.status,
            "execution_count": self.execution_count, "outputs": self.outputs,
            "cell_id": self.metadata.get("cell_id"), "document_path": self.metadata.get("document_path"),
        }
        if self.reason:
            model["reason"] = self.reason
        if self.input_request is not None:
            model["input_request"] = self.input_request
            model["parent_header"] = self.input_parent
        if self.dropped:
            model["dropped"] = {"outputs": self.dropped, "bytes": self.dropped_bytes}
        return model


class KernelExecutions:
    """One kernel's queue, runner, sockets and results."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.by_id: OrderedDict[str, Execution] = OrderedDict()
        self.forgotten: OrderedDict[str, str] = OrderedDict()
        self.queue: deque[Execution] = deque()
        self.finished: deque[Execution] = deque()  # in the order they ended: the first to be dropped
        self.bytes = 0  # what every execution in by_id holds: OVERHEAD, code and outputs
        self.wake = asyncio.Event()
        self.current: Execution | None = None
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.readers: list[asyncio.Task] = []
        self.runner: asyncio.Task | None = None
        self.identity = b""
        self.observer = None


class Executions:
    def __init__(self, kernels: Kernels, limits: ExecutionLimits = ExecutionLimits()):
        self.kernels = kernels
        self.limits = limits
        self._by_kernel: dict[str, KernelExecutions] = {}
        self._zmq = zmq.asyncio.Context()
        kernels.listeners.add(self._kernel_event)

    @property
    def ops(self) -> dict[str, Any]:
        return {"execute_submit": self.submit, "execute_get": self.get, "execute_wait": self.wait,
                "execute_input": self.answer_input, "execute_list": self.list}

    # -- operations ----------------------------------------------------------------------------

    async def submit(self, args: dict, client: Any) -> dict[str, Any]:
        kernel = self.kernels.get(args.get("kernel_id"))
        code, metadata, timeout = args["code"], args["metadata"], args["timeout"]  # checked: operations.py
        mine = self._for(kernel)
        if len(mine.queue) >= MAX_QUEUED:
            raise KernelBusy(f"{MAX_QUEUED} executions wait already on kernel {kernel.id}")
        execution = Execution(id=str(uuid.uuid4()), kernel_id=kernel.id, code=code, metadata=metadata or {},
                              timeout=timeout, streamed=bool(args.get("stream")))
        mine.by_id[execution.id] = execution
        mine.bytes += OVERHEAD + len(code)
        mine.queue.append(execution)
        mine.wake.set()
        kernel.iopub.last_activity = time.time()  # asked to work: not idle, for the culler
        self._expire(mine)
        self._trim(mine)
        return execution.model()

    async def get(self, args: dict, client: Any) -> dict[str, Any]:
        return self._find(args).model()

    async def wait(self, args: dict, client: Any) -> dict[str, Any]:
        """The lines a streaming caller has not read (after `after`), waiting up to MAX_WAIT seconds for
        one; with the result once the execution is over and every line is read."""
        execution = self._find(args)
        after = args["after"]
        pending = [event for event in execution.events if event[0] > after]
        if not pending and not execution.done.is_set():
            execution.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(execution.changed.wait(), MAX_WAIT)
            pending = [event for event in execution.events if event[0] > after]
        while execution.events and execution.events[0][0] <= after:
            execution.events.popleft()  # read: the caller asks for what follows only
        first = pending[0][0] if pending else execution.seq + 1
        reply: dict[str, Any] = {"lines": [line for _, line in pending], "last": execution.seq,
                                 "missed": max(0, first - after - 1)}
        if execution.done.is_set() and (not pending or pending[-1][0] == execution.seq):
            reply["result"] = execution.model()
        return reply

    async def answer_input(self, args: dict, client: Any) -> None:
        kernel = self.kernels.get(args.get("kernel_id"))
        value = args["value"]
        mine = self._by_kernel.get(kernel.id)
        execution = mine.current if mine else None
        if execution is None or execution.input_request is None:
            raise InputNotPending(f"No execution waits for input on kernel {kernel.id}")
        execution.input_request = execution.input_parent = None
        kernel.manager.session.send(mine.sockets["stdin"], "input_reply", {"value": value},
                                    parent=execution.input_header)
        execution.status = "running"
        execution.changed.set()
        kernel.iopub.last_activity = time.time()

    async def list(self, args: dict, client: Any) -> list[dict[str, Any]]:
        kernel = self.kernels.get(args.get("kernel_id"))
        mine = self._by_kernel.get(kernel.id)
        return [e.model() for e in mine.by_id.values() if not e.done.is_set()] if mine else []

    def _find(self, args: dict) -> Execution:
        kernel = self.kernels.get(args.get("kernel_id"))
        request_id = args.get("request_id")
        mine = self._by_kernel.get(kernel.id)
        if mine is None or not isinstance(request_id, str):
            raise ExecutionNotFound(str(request_id)[:100], kernel.id)
        self._expire(mine)
        if request_id in mine.by_id:
            return mine.by_id[request_id]
        raise ExecutionNotFound(request_id[:100], kernel.id, mine.forgotten.get(request_id, ""))

    # -- one kernel's runner -------------------------------------------------------------------

    def _for(self, kernel: Kernel) -> KernelExecutions:
        mine = self._by_kernel.get(kernel.id)
        if mine is None or mine.kernel is not kernel:
            mine = self._by_kernel[kernel.id] = KernelExecutions(kernel)
            mine.runner = asyncio.create_task(self._run(mine), name=f"executions-{kernel.id}")
            mine.observer = lambda parts: self._heard(mine, parts)
        kernel.iopub.observer = mine.observer
        return mine

    async def _run(self, mine: KernelExecutions) -> None:
        try:
            while True:
                if not mine.queue:
                    # Woken by a submission, or now and then to let go of a kernel that is gone
                    # (KernelNotFound) and of results past their age.
                    mine.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(mine.wake.wait(), IDLE_CHECK)
                    self.kernels.get(mine.kernel.id)
                    self._expire(mine)
                    continue
                await self._execute_next(mine)
        except KernelNotFound:
            pass
        finally:
            self._close_sockets(mine)
            if self._by_kernel.get(mine.kernel.id) is mine:
                del self._by_kernel[mine.kernel.id]
            if mine.kernel.iopub.observer is mine.observer:
                mine.kernel.iopub.observer = None

    async def _execute_next(self, mine: KernelExecutions) -> None:
        kernel = mine.kernel
        # Never while a restart or an interrupt is under way; taken from the queue only then, so that a
        # restart meanwhile ends it with those queued behind it.
        async with kernel.lock:
            self.kernels.get(kernel.id)
            if not mine.queue:
                return
            execution = mine.queue.popleft()
            shell = self._socket(mine, "shell")
            self._socket(mine, "stdin")
            message = kernel.manager.session.msg("execute_request", {
                "code": execution.code, "silent": False, "store_history": True,
                "user_expressions": {}, "allow_stdin": True, "stop_on_error": False,
            })
            execution.msg_id = message["header"]["msg_id"].encode()
            execution.status, execution.started = "running", time.monotonic()
            mine.current = execution
            kernel.manager.session.send(shell, message)
        execution.changed.set()
        deadline = execution.started + execution.timeout if execution.timeout else None
        try:
            while not execution.done.is_set():
                if execution.replied and not execution.idle:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(execution.done.wait(), IDLE_GRACE)
                    self._finish(execution)
                    break
                wait = CHECK_EVERY if deadline is None else max(0.0, min(CHECK_EVERY, deadline - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(execution.done.wait(), wait)
                self.kernels.get(kernel.id)  # KernelNotFound once it is shut down
                if deadline is not None and time.monotonic() >= deadline and not execution.done.is_set():
                    await self._time_out(mine, execution)
        finally:
            mine.current = None

    async def _time_out(self, mine: KernelExecutions, execution: Execution) -> None:
        log.info("Execution %s on kernel %s ran out of time; interrupting the kernel", execution.id, mine.kernel.id)
        execution.status, execution.reason = "timeout", f"interrupted after {execution.timeout:g} s"
        with contextlib.suppress(Exception):
            await self.kernels.interrupt(mine.kernel.id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(execution.done.wait(), INTERRUPT_GRACE)
        if not execution.done.is_set():
            execution.reason += "; the kernel did not answer the interrupt"
            self._finish(execution)

    def _finish(self, execution: Execution, status: str | None = None, reason: str = "") -> None:
        if execution.done.is_set():
            return
        if status:
            execution.status, execution.reason = status, reason
        execution.input_request = execution.input_parent = None
        execution.finished_at = time.time()
        execution.done.set()
        mine = self._by_kernel.get(execution.kernel_id)
        if mine is not None and execution.id in mine.by_id:
            mine.finished.append(execution)
        execution.changed.set()
        seconds = time.monotonic() - execution.started if execution.started else 0.0
        metrics.execution_done(execution.status, seconds)

    # -- what the kernel says ------------------------------------------------------------------

    def _heard(self, mine: KernelExecutions, parts: list[bytes]) -> None:
        """An iopub message (header, parent_header, metadata, content, ...): only the running
        execution's are read, found by their parent's msg_id before any parsing."""
        execution = mine.current
        if execution is None or execution.msg_id not in parts[1]:
            return
        if json.loads(parts[1]).get("msg_id") != execution.msg_id.decode():
            return
        msg_type = json.loads(parts[0]).get("msg_type")
        if msg_type == "status":
            if json.loads(parts[3]).get("execution_state") == "idle":
                execution.idle = True
                if execution.replied:
                    self._finish(execution)
            return
        if msg_type == "clear_output":
            if json.loads(parts[3]).get("wait"):
                execution.clear_pending = True
            else:
                self._clear(mine, execution)
            return
        if msg_type not in OUTPUT_TYPES:
            return
        if execution.clear_pending:
            self._clear(mine, execution)
        output = _output(msg_type, json.loads(parts[3]))
        execution.outputs.append(output)
        execution.sizes.append(len(parts[3]))
        mine.bytes += len(parts[3])
        execution.emit(output)
        self._trim(mine)

    def _clear(self, mine: KernelExecutions, execution: Execution) -> None:
        execution.clear_pending = False
        mine.bytes -= sum(execution.sizes)
        execution.outputs.clear()
        execution.sizes.clear()
        execution.emit({"output_type": "clear_output"})

    def _replied(self, mine: KernelExecutions, channel: str, raw: list[bytes]) -> None:
        session = mine.kernel.manager.session
        try:
            _, frames = session.feed_identities(raw)
            message = session.deserialize(frames)
        except Exception as e:  # a message we cannot read is not one of ours to act on
            log.warning("Kernel %s: unreadable %s message ignored (%s)", mine.kernel.id, channel, e)
            return
        execution = mine.current
        if execution is None or message["parent_header"].get("msg_id") != execution.msg_id.decode():
            return
        if channel == "stdin" and message["header"]["msg_type"] == "input_request":
            execution.input_request = {"prompt": message["content"].get("prompt", ""),
                                       "password": bool(message["content"].get("password"))}
            header = dict(message["header"])
            date = header.get("date")
            header["date"] = date.isoformat() if hasattr(date, "isoformat") else str(date or "")
            execution.input_parent = header
            execution.input_header = message["header"]
            execution.status = "input"
            execution.emit({"input_request": execution.input_request})
            return
        if channel == "shell" and message["header"]["msg_type"] == "execute_reply":
            content = message["content"]
            execution.execution_count = content.get("execution_count")
            execution.replied = True
            if execution.status != "timeout":
                execution.status = content.get("status", "error")
            if execution.idle:
                self._finish(execution)
            execution.changed.set()

    # -- sockets -------------------------------------------------------------------------------

    def _socket(self, mine: KernelExecutions, channel: str) -> zmq.asyncio.Socket:
        if channel not in mine.sockets:
            if not mine.sockets:
                mine.identity = uuid.uuid4().hex.encode()
            sock = self._zmq.socket(zmq.DEALER)
            sock.linger = 0
            sock.reconnect_ivl = KERNEL_RECONNECT_MS
            sock.identity = mine.identity  # shell and stdin alike: input requests find their way back
            sock.connect(kernel_url(mine.kernel.connection_info(), channel))
            mine.sockets[channel] = sock
            mine.readers.append(asyncio.create_task(self._read(mine, channel, sock), name=f"exec-{channel}"))
        return mine.sockets[channel]

    async def _read(self, mine: KernelExecutions, channel: str, sock: zmq.asyncio.Socket) -> None:
        while True:
            self._replied(mine, channel, await sock.recv_multipart())

    def _close_sockets(self, mine: KernelExecutions) -> None:
        for reader in mine.readers:
            reader.cancel()
        for sock in mine.sockets.values():
            sock.close()
        mine.sockets, mine.readers = {}, []

    # -- restarts, deaths and retention --------------------------------------------------------

    def _kernel_event(self, event: dict[str, Any]) -> None:
        """A kernel that dies or is restarted ends what runs on it, and what waits: it would run on a
        process that lost the state the code expects."""
        mine = self._by_kernel.get(event.get("kernel_id"))
        if mine is None:
            return
        if "connection_info" in event:
            self._close_sockets(mine)  # a warm kernel may have taken over, on other endpoints
            return
        state = event.get("execution_state")
        if event.get("hold"):
            status, why = "restarted", "the kernel was restarted"
        elif state in ("restarting", "dead"):
            status, why = "died", "the kernel died" + (" and is restarting" if state == "restarting" else "")
        else:
            return
        ended = [mine.current] if mine.current else []
        ended += list(mine.queue)
        mine.queue.clear()
        for execution in ended:
            running = execution is mine.current
            self._finish(execution, status, f"{why} {'during' if running else 'before'} the execution")

    def _expire(self, mine: KernelExecutions) -> None:
        """Drop the results kept longer than max_age."""
        oldest = time.time() - self.limits.max_age
        while mine.finished and mine.finished[0].finished_at < oldest:
            self._forget(mine, mine.finished.popleft(), f"its result was kept {self.limits.max_age:g} s")

    def _trim(self, mine: KernelExecutions) -> None:
        """Keep the kernel under max_bytes: drop the oldest results, then the oldest outputs of the
        running execution, which its result counts. Cheap enough to run at every output."""
        while mine.bytes > self.limits.max_bytes and mine.finished:
            self._forget(mine, mine.finished.popleft(),
                         f"kernel {mine.kernel.id} holds at most {self.limits.max_bytes} bytes of results")
        current = mine.current
        while current and mine.bytes > self.limits.max_bytes and current.outputs:
            current.outputs.pop(0)
            size = current.sizes.pop(0)
            current.dropped += 1
            current.dropped_bytes += size
            mine.bytes -= size

    def _forget(self, mine: KernelExecutions, execution: Execution, why: str) -> None:
        del mine.by_id[execution.id]
        mine.bytes -= OVERHEAD + len(execution.code) + sum(execution.sizes)
        mine.forgotten[execution.id] = why
        while len(mine.forgotten) > MAX_FORGOTTEN:
            mine.forgotten.popitem(last=False)

    async def close(self) -> None:
        self.kernels.listeners.discard(self._kernel_event)
        runners = [mine.runner for mine in self._by_kernel.values() if mine.runner]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        self._zmq.destroy(linger=0)


def _output(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """An iopub message's content as an nbformat output."""
    if msg_type == "stream":
        return {"output_type": "stream", "name": content.get("name", "stdout"), "text": content.get("text", "")}
    if msg_type == "error":
        return {"output_type": "error", "ename": content.get("ename", ""), "evalue": content.get("evalue", ""),
                "traceback": content.get("traceback", [])}
    output = {"output_type": msg_type, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
    if msg_type == "execute_result":
        output["execution_count"] = content.get("execution_count")
    return output

