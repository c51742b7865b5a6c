"""What a gateway worker uses to talk to the supervisor: one multiplexed connection, rebuilt on demand.

Every request has a deadline, so a supervisor that hangs (stopped, or its event loop stuck) costs a
prompt SupervisorUnavailable, which the gateway answers with 503, rather than a request that never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import operations, wire
from ..errors import GatewayError, SupervisorUnavailable, from_wire

log = logging.getLogger("kernels_gateway.client")

# Seconds for what the supervisor answers at once, from what it holds (get, list, interrupt, ping...).
QUICK = 5.0


def deadlines(start_timeout: float, shutdown_wait: float) -> dict[str, float]:
    """How long each operation that waits (operations.py says for what) may take before the supervisor
    counts as unreachable; QUICK for any other. A start waits for the kernel's start timeout; a shutdown
    for its shutdown request, then SIGTERM, then SIGKILL; a returning session's position may take a
    moment to reach the supervisor's own iopub."""
    waits = {"start": start_timeout + QUICK, "shutdown": 2 * shutdown_wait + QUICK,
             "position": QUICK + wire.FIND_TIMEOUT}
    return {op.name: sum(waits[w] for w in op.waits) for op in operations.OPERATIONS.values() if op.waits}


class SupervisorClient:
    def __init__(self, socket_path: Path, start_timeout: float = 60.0, shutdown_wait: float = 5.0,
                 retry_for: float = 2.0):
        self.socket_path = socket_path
        self.deadlines = deadlines(start_timeout, shutdown_wait)
        self.retry_for = retry_for
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._connect_lock = asyncio.Lock()
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        # Websockets this worker holds open (connection id -> what announced it), announced again to a
        # supervisor that was restarted or reconnected.
        self._opened: dict[str, dict[str, Any]] = {}
        self._on_event: Callable[[dict], None] | None = None

    # -- operations ----------------------------------------------------------------------------

    async def ping(self) -> dict:
        return await self.request("ping")

    async def status(self) -> dict:
        return await self.request("status")

    async def session(self, op: str, **args: Any) -> Any:
        """A sessions operation (create, list, get, update, delete): see supervisor/sessions.py."""
        return await self.request(f"session_{op}", **args)

    async def execution(self, op: str, **args: Any) -> Any:
        """An execute API operation (submit, get, wait, input, list): see supervisor/executions.py."""
        return await self.request(f"execute_{op}", **args)

    async def kernelspecs(self) -> dict:
        return await self.request("kernelspecs")

    async def start(self, name: str | None = None, env: dict | None = None) -> dict:
        return await self.request("start", name=name, env=env)

    async def list(self) -> list[dict]:
        return await self.request("list")

    async def get(self, kernel_id: str) -> dict:
        return await self.request("get", kernel_id=kernel_id)

    async def shutdown(self, kernel_id: str) -> None:
        await self.request("shutdown", kernel_id=kernel_id)

    async def interrupt(self, kernel_id: str) -> None:
        await self.request("interrupt", kernel_id=kernel_id)

    async def restart(self, kernel_id: str) -> dict:
        return await self.request("restart", kernel_id=kernel_id)

    async def connection_info(self, kernel_id: str) -> dict:
        return await self.request("connection_info", kernel_id=kernel_id)

    async def connection_opened(self, kernel_id: str, session_id: str, connection: str,
                                progress: dict | None = None) -> tuple[list[tuple[str, list[bytes]]], bool]:
        """Count a websocket in. What its session missed, as (channel, parts after the signature), and
        whether it is a session coming back (its replay must then be joined to the live output)."""
        announce = {"kernel_id": kernel_id, "session_id": session_id, "connection": connection, "progress": progress}
        found = await self.request("connection_opened", **announce, replay=True)
        self._opened[connection] = announce
        return [(channel, wire.unpack_parts(parts)) for channel, parts in found["missed"]], found["returning"]

    async def connection_closed(self, kernel_id: str, session_id: str, connection: str, last_msg_id: str | None) -> None:
        self._opened.pop(connection, None)
        with contextlib.suppress(SupervisorUnavailable):
            await self.request("connection_closed", kernel_id=kernel_id, session_id=session_id,
                               connection=connection, last_msg_id=last_msg_id)

    async def replay_join(self, kernel_id: str, session_id: str, until: str) -> tuple[list[list[bytes]], str | None]:
        """What lies between a returning session's replay and its first live message `until`; or the
        msg_id up to which the live output repeats the replay."""
        found = await self.request("replay_join", kernel_id=kernel_id, session_id=session_id, until=until)
        return [wire.unpack_parts(parts) for parts in found["missed"]], found["skip_through"]

    async def session_reply(self, kernel_id: str, session_id: str, channel: str, parts: list[bytes]) -> None:
        """Hand over a reply that reached a websocket's sockets after the websocket closed."""
        await self.request("session_reply", kernel_id=kernel_id, session_id=session_id, channel=channel,
                           parts=wire.pack_parts(parts))

    async def follow(self, on_event: Callable[[dict], None], retry_every: float = 0.5) -> None:
        """Receive kernel state events for as long as this runs, reconnecting whenever the supervisor
        goes away and comes back. Whichever request makes a connection subscribes on it first (see
        _announce), so no answer from a restarted supervisor comes before its events do."""
        self._on_event = on_event
        while True:
            try:
                await self.ping()
                if (reader := self._reader_task) is not None:  # None: another request is reconnecting
                    await asyncio.wait([reader])
            except SupervisorUnavailable:
                await asyncio.sleep(retry_every)

    async def metrics(self) -> dict:
        return await self.request("metrics")

    async def relayed(self, counts: list[list], opened: int) -> None:
        await self.request("relayed", counts=counts, opened=opened)

    # -- the connection ------------------------------------------------------------------------

    async def request(self, op: str, **args: Any) -> Any:
        """The supervisor's answer to one operation, its arguments checked before they are sent."""
        args = operations.check(op, args)
        timeout = self.deadlines.get(op, QUICK)
        try:
            async with asyncio.timeout(timeout):
                body = await self._exchange(await self._connect(), op, args)
        except TimeoutError:
            raise self._unavailable(f"no answer to {op} within {timeout:g} s") from None
        except ConnectionError:
            raise self._unavailable("lost the connection") from None
        return _result(body)

    async def _exchange(self, writer: asyncio.StreamWriter, op: str, args: dict[str, Any]) -> dict:
        """Write one request and wait for its reply's body (the reader hands it over)."""
        request_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        try:
            writer.write(wire.encode({"id": request_id, "op": op, "args": args}))
            await writer.drain()
            return await reply
        finally:
            self._pending.pop(request_id, None)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if self._reader_task is not None:  # the broken connection's reader ends with it
                await asyncio.gather(self._reader_task, return_exceptions=True)
                self._reader_task = None
            deadline = asyncio.get_running_loop().time() + self.retry_for
            delay = 0.05
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                    break
                except OSError:
                    if asyncio.get_running_loop().time() + delay > deadline:
                        raise self._unavailable("cannot connect") from None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_replies(reader, writer), name="supervisor-replies")
            await self._announce(writer)
            if writer.is_closing():
                raise self._unavailable("lost the connection")
            return writer

    async def _announce(self, writer: asyncio.StreamWriter) -> None:
        """Subscribe to kernel events if this worker follows them, and count its open websockets in
        again, on a supervisor that may be a new one, before any other request goes out on this
        connection: a client that has its answer may act on it at once (kill the kernel, say), and the
        event that follows must not find the worker still unsubscribed."""
        if self._on_event is not None:
            _result(await self._exchange(writer, "subscribe", {}))
        announces = list(self._opened.values())
        replies = await asyncio.gather(
            *(self._exchange(writer, "connection_opened", operations.check("connection_opened", announce))
              for announce in announces),
            return_exceptions=True,
        )
        for reply, announce in zip(replies, announces):
            try:
                _result(reply)
            except GatewayError as e:
                log.warning("A websocket on kernel %s could not be counted in again: %s", announce["kernel_id"], e.message)

    async def _read_replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (body := await wire.read_frame(reader, wire.REPLY_LIMIT)) is not None:
                if "event" in body:
                    if self._on_event:
                        self._on_event(body.get("data", {}))
                    continue
                reply = self._pending.get(body.get("id"))
                if reply is not None and not reply.done():
                    reply.set_result(body)
        except (wire.WireError, ConnectionError) as e:
            log.warning("Supervisor connection broke: %s", e)
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(self._unavailable("lost the connection"))

    def _unavailable(self, what: str) -> SupervisorUnavailable:
        return SupervisorUnavailable(f"The kernel supervisor is not reachable ({what}: {self.socket_path})")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)


def _result(body: dict | BaseException) -> Any:
    """A reply's result, or the error it carries raised again as the domain error it was."""
    if isinstance(body, BaseException):
        raise body
    if "error" in body:
        error = body["error"]
        raise from_wire(error.get("code", "error"), error.get("message", "supervisor error"))
    return body.get("result")
