"""The supervisor's Unix socket server: one dispatch table, domain errors become error codes here only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import progress
from ..kernel_protocol import REPLY_CHANNELS
from ..errors import BadRequest, CannotStart, GatewayError, KernelBusy, SupervisorUnavailable
from . import metrics, operations, replies, wire
from .executions import ExecutionLimits, Executions
from .kernels import Kernels
from .records import valid_kernel_id
from .process import exited, gone
from .sessions import Sessions

log = logging.getLogger("kernels_gateway.supervisor")

_PEERCRED = struct.Struct("3i")
CLOSE_TIMEOUT = 2.0
EXIT_WAIT = 5.0  # seconds a worker whose connection ended may take to be gone
PROGRESS_FILE = re.compile(r"progress-[0-9]{1,10}")


class Client:
    """What the supervisor remembers of one connected gateway worker."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.write_lock = asyncio.Lock()
        # connection id -> kernel_id, session_id and what reads its progress (None: it publishes none)
        self.connections: dict[str, tuple[str, str | None, Callable[[], tuple[str | None, int]] | None]] = {}
        self.requests: set[asyncio.Task] = set()
        self.subscribed = False
        self.progress_files: set[Path] = set()

    async def send(self, body: dict[str, Any]) -> None:
        async with self.write_lock:
            await wire.write_frame(self.writer, body, wire.REPLY_LIMIT)

    def push(self, event: dict[str, Any], name: str = "kernel_state") -> None:
        """Send an event without waiting; the task is owned like a request's."""
        task = asyncio.create_task(self.send({"event": name, "data": event}))
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)


Op = Callable[[dict[str, Any], Client], Awaitable[Any]]


class SupervisorServer:
    def __init__(self, kernels: Kernels, socket_path: Path, execution_limits: ExecutionLimits = ExecutionLimits()):
        self.kernels = kernels
        self.socket_path = socket_path
        self._server: asyncio.Server | None = None
        self._clients: set[Client] = set()
        self._handlers: set[asyncio.Task] = set()
        self.started = time.time()
        self.sessions = Sessions(kernels)
        # What follows a worker's departure: its websockets' replies collected, its progress file removed.
        self._departures: set[asyncio.Task] = set()
        self.executions = Executions(kernels, execution_limits)
        self.ops: dict[str, Op] = {
            "status": self.status,
            "ping": self.ping,
            "kernelspecs": self.kernelspecs,
            "start": self.start,
            "list": self.list,
            "get": self.get,
            "shutdown": self.shutdown,
            "interrupt": self.interrupt,
            "restart": self.restart,
            "connection_info": self.connection_info,
            "connection_opened": self.connection_opened,
            "connection_closed": self.connection_closed,
            "replay_join": self.replay_join,
            "session_reply": self.session_reply,
            "subscribe": self.subscribe,
            "metrics": self.metrics,
            "relayed": self.relayed,
            "hand_over": self.hand_over,
            **self.sessions.ops,
            **self.executions.ops,
        }
        self.orphaned = False  # our gateway is gone: we wait for the next one to take the kernels over
        self.taken_over = asyncio.Event()
        kernels.listeners.add(self._broadcast)
        metrics.watch(kernels)

    # -- operations ----------------------------------------------------------------------------

    async def ping(self, args: dict, client: Client) -> dict:
        return {"pid": os.getpid()}

    async def status(self, args: dict, client: Client) -> dict:
        """Jupyter Server's /api/status: since when, and how busy."""
        kernels = self.kernels.list()
        last = max((kernel.iopub.last_activity for kernel in kernels), default=self.started)
        return {"started": self.started, "last_activity": last, "kernels": len(kernels),
                "connections": sum(kernel.connections for kernel in kernels)}

    async def kernelspecs(self, args: dict, client: Client) -> dict:
        return self.kernels.kernelspecs()

    async def start(self, args: dict, client: Client) -> dict:
        return (await self.kernels.start(args["name"], args["env"])).model()

    async def list(self, args: dict, client: Client) -> list:
        return [kernel.model() for kernel in self.kernels.list()]

    async def get(self, args: dict, client: Client) -> dict:
        return self.kernels.get(args.get("kernel_id")).model()

    async def shutdown(self, args: dict, client: Client) -> None:
        await self.kernels.shutdown(args.get("kernel_id"))

    async def interrupt(self, args: dict, client: Client) -> None:
        await self.kernels.interrupt(args.get("kernel_id"))

    async def restart(self, args: dict, client: Client) -> dict:
        return (await self.kernels.restart(args.get("kernel_id"))).model()

    async def connection_info(self, args: dict, client: Client) -> dict:
        kernel = self.kernels.get(args.get("kernel_id"))
        return {"model": kernel.model(), "connection_info": kernel.connection_info()}

    async def connection_opened(self, args: dict, client: Client) -> dict:
        """A websocket opened; with `replay`, what its session missed while away (iopub output, then
        replies that reached its departed connection), each as [channel, parts]. `progress` names the
        worker's progress file and slot, read should the worker die with the websocket open."""
        kernel_id, session_id = valid_kernel_id(args["kernel_id"]), args["session_id"]
        connection = args["connection"] or f"anonymous-{id(client)}-{len(client.connections)}"
        read = self._progress(args.get("progress"), client)
        missed = await self.kernels.connection_opened(kernel_id, session_id, connection,
                                                      (lambda: read()[0]) if read else None, bool(args.get("replay")))
        client.connections[connection] = (kernel_id, session_id, read)
        return {"missed": [[channel, wire.pack_parts(parts)] for channel, parts in missed.messages],
                "returning": missed.returning}

    def _progress(self, found: Any, client: Client):
        if not isinstance(found, dict):
            return None
        name, slot = found.get("file"), found.get("slot")
        if not isinstance(name, str) or not PROGRESS_FILE.fullmatch(name) or not isinstance(slot, int) or slot < 0:
            raise BadRequest("progress must name a progress file and a slot")
        path = self.kernels.config.runtime_dir / name
        client.progress_files.add(path)
        return lambda: progress.read(str(path), slot)

    async def connection_closed(self, args: dict, client: Client) -> None:
        kernel_id, session_id, connection = valid_kernel_id(args["kernel_id"]), args["session_id"], args["connection"]
        if client.connections.pop(connection, None) is not None:  # a worker says; its progress is not read
            self.kernels.connection_closed(kernel_id, session_id, connection, args["last_msg_id"])

    async def replay_join(self, args: dict, client: Client) -> dict:
        """Where a returning websocket's live output begins against its replay: the messages between
        them, or the msg_id up to which the live output repeats the replay."""
        kernel = self.kernels.get(args.get("kernel_id"))
        session_id, until = args["session_id"], args["until"]
        if not session_id or not until:
            raise BadRequest("session_id and until are required")
        missed, skip_through = await kernel.iopub.replay.join(session_id, until)
        return {"missed": [wire.pack_parts(parts) for parts in missed], "skip_through": skip_through}

    async def session_reply(self, args: dict, client: Client) -> None:
        """A reply that reached a websocket's connection after the websocket closed: kept for its
        session's return, or handed at once to the worker where the session is connected again."""
        kernel = self.kernels.get(args.get("kernel_id"))
        session_id, channel = args["session_id"], args["channel"]
        parts = args.get("parts")
        if not session_id or channel not in REPLY_CHANNELS or not isinstance(parts, list):
            raise BadRequest("session_id, a request channel and parts are required")
        try:
            unpacked = wire.unpack_parts(parts)
        except (TypeError, ValueError):
            raise BadRequest("parts must be base64 strings") from None
        self._deliver_reply(kernel.id, session_id, channel, unpacked)

    def _deliver_reply(self, kernel_id: str, session_id: str, channel: str, parts: list[bytes]) -> None:
        kernel = self.kernels.get(kernel_id)
        if kernel.iopub.replay.reply(session_id, channel, parts):
            return
        for other in self._clients:
            if any(held[:2] == (kernel_id, session_id) for held in other.connections.values()):
                other.push({"kernel_id": kernel_id, "session_id": session_id, "channel": channel,
                            "parts": wire.pack_parts(parts)}, "session_reply")
                return

    async def _collect_replies(self, kernel_id: str, session_id: str, connection: str, requests: int) -> None:
        """Replies for the websocket of a worker that died, from the kernel's sockets, under its identity."""
        try:
            kernel = self.kernels.get(kernel_id)
            await replies.collect(self.kernels.zmq_context, kernel.connection_info(), connection.encode(), requests,
                                  self.kernels.config.replay_age,
                                  lambda channel, parts: self._deliver_reply(kernel_id, session_id, channel, parts))
        except GatewayError:
            pass  # the kernel is gone, and its replies with it

    async def subscribe(self, args: dict, client: Client) -> None:
        """From now on, push this client every kernel state change it cannot see on iopub."""
        client.subscribed = True

    def _broadcast(self, event: dict[str, Any]) -> None:
        for client in self._clients:
            if client.subscribed:
                client.push(event)

    async def metrics(self, args: dict, client: Client) -> dict:
        return metrics.render()

    async def relayed(self, args: dict, client: Client) -> None:
        metrics.add_relayed(args.get("counts"), args.get("opened", 0))

    async def hand_over(self, args: dict, client: Client) -> dict:
        """The next supervisor on this runtime directory asks for our kernels: only an orphan agrees."""
        if not self.orphaned:
            raise KernelBusy("this supervisor serves a running gateway")
        self.taken_over.set()
        return {"pid": os.getpid()}

    def orphan(self) -> None:
        """Our gateway is gone: answer nothing but ping and hand_over from now on."""
        self.orphaned = True
        for name in self.ops.keys() - {"ping", "hand_over"}:
            self.ops[name] = self._orphaned

    async def _orphaned(self, args: dict, client: Client) -> None:
        raise SupervisorUnavailable("this supervisor's gateway is gone; its kernels wait for the next one")

    # -- serving -------------------------------------------------------------------------------

    async def start_serving(self) -> None:
        path = str(self.socket_path)
        if os.path.exists(path):
            if await _answers(path):
                raise CannotStart(f"another supervisor is already listening on {path}")
            os.unlink(path)  # left behind by a supervisor that did not stop cleanly
        old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=path, limit=wire.MAX_FRAME)
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        self.kernels.listeners.discard(self._broadcast)
        for departure in self._departures:
            departure.cancel()
        await asyncio.gather(*self._departures, return_exceptions=True)
        await self.executions.close()
        if self._server:
            self._server.close()
        for client in list(self._clients):
            client.writer.close()
        # Closing their connections ends the handlers; cancelling them would make asyncio's stream
        # machinery log the cancellation as an error, so that is only the fallback.
        if self._handlers:
            _, stuck = await asyncio.wait(self._handlers, timeout=CLOSE_TIMEOUT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server:
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):  # ours: only what we bound is removed
                os.unlink(self.socket_path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        self._handlers.add(handler)
        client = Client(writer)
        self._clients.add(client)
        try:
            if not _same_user(writer):
                log.warning("Refused a control connection from another user")
                return
            while (frame := await wire.read_frame(reader)) is not None:
                task = asyncio.create_task(self._answer(frame, client))
                client.requests.add(task)
                task.add_done_callback(client.requests.discard)
        except wire.WireError as e:
            log.warning("Closing a control connection that broke the protocol: %s", e)
            with contextlib.suppress(ConnectionError, wire.WireError):
                await client.send({"error": {"code": "bad_request", "message": str(e)}})
        except ConnectionError:
            pass
        finally:
            for task in list(client.requests):
                task.cancel()
            await asyncio.gather(*client.requests, return_exceptions=True)
            # A worker that went away took its websockets with it; their sessions may come back, and
            # their progress, published by the worker, says where they had read to.
            for connection, (kernel_id, session_id, read) in client.connections.items():
                last_msg_id, requests = read() if read else (None, 0)
                self.kernels.connection_closed(kernel_id, session_id, connection, last_msg_id)
                if requests and session_id:
                    self._after_departure(self._collect_replies(kernel_id, session_id, connection, requests))
            for path in client.progress_files:
                self._after_departure(_remove_once_abandoned(path))
            self._clients.discard(client)
            writer.close()
            self._handlers.discard(handler)

    def _after_departure(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._departures.add(task)
        task.add_done_callback(self._departures.discard)

    async def _answer(self, frame: dict[str, Any], client: Client) -> None:
        reply: dict[str, Any] = {"id": frame.get("id")}
        started = time.monotonic()
        try:
            name = frame.get("op")
            op = self.ops.get(name) if isinstance(name, str) else None
            if op is None:
                raise BadRequest(f"unknown operation {str(frame.get('op'))[:50]!r}")
            args = frame.get("args") or {}
            if not isinstance(args, dict):
                raise BadRequest("args must be an object")
            reply["result"] = await op(operations.check(name, args), client)
        except GatewayError as e:
            reply["error"] = {"code": e.code, "message": e.message}
        except Exception as e:
            log.exception("Operation %s failed", frame.get("op"))
            reply["error"] = {"code": "error", "message": f"internal error: {type(e).__name__}"}
        metrics.request_done(frame.get("op"), self.ops, "error" not in reply, time.monotonic() - started)
        with contextlib.suppress(ConnectionError):
            try:
                await client.send(reply)
            except wire.WireError as e:
                await client.send({"id": reply["id"], "error": {"code": "error", "message": str(e)}})


async def _remove_once_abandoned(path: Path) -> None:
    """A worker's progress file, once read, if that worker (its pid is in the name) is gone. Its
    connection ends as it exits, a moment before it is gone; one that lives on (it reconnects) keeps it."""
    pid = int(path.name.rpartition("-")[2])
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(exited(pid), EXIT_WAIT)
    if gone(pid):
        path.unlink(missing_ok=True)


def _same_user(writer: asyncio.StreamWriter) -> bool:
    sock = writer.get_extra_info("socket")
    _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid == os.getuid()


async def _answers(path: str) -> bool:
    try:
        _reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True
