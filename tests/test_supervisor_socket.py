"""The supervisor's Unix socket, spoken to directly: broken frames close only the connection that sent
them, requests of the wrong shape get clear errors, and only the owning user is served."""

from __future__ import annotations

import asyncio
import os
import struct
import socket
import warnings

import pytest

from kernels_gateway.supervisor import wire

from .conftest import Gateway

NOBODY = 65534


@pytest.fixture(scope="module")
async def supervisor():
    gw = Gateway("--initial-kernels", "0", command=("supervisor",))
    await gw.start(wait_for="Supervisor listening")
    yield gw
    assert await gw.stop() == 0
    gw.cleanup()


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, supervisor: Gateway) -> "Connection":
        return cls(*await asyncio.open_unix_connection(str(supervisor.runtime_dir / "supervisor.sock")))

    async def ask(self, op: str, **args) -> dict:
        self.writer.write(wire.encode({"id": 1, "op": op, "args": args}))
        async with asyncio.timeout(10):
            return await wire.read_frame(self.reader)

    async def refused(self, data: bytes) -> dict:
        """Send raw bytes and end the stream; the supervisor must answer with an error, then close."""
        self.writer.write(data)
        self.writer.write_eof()
        async with asyncio.timeout(10):
            error = await wire.read_frame(self.reader)
            assert await self.reader.read() == b""
        return error

    def close(self) -> None:
        self.writer.close()


@pytest.mark.parametrize("data, message", [
    (struct.pack("!I", 0xFFFFFFFF), "exceeds"),  # 4 GiB announced, none sent: refused from the prefix alone
    (struct.pack("!I", wire.MAX_FRAME + 1) + b"{", "exceeds"),
    (struct.pack("!I", 5) + b"nope!", "not JSON"),
    (struct.pack("!I", 2) + b"\xff\xfe", "not JSON"),
    (struct.pack("!I", 7) + b"[1,2,3]", "not a JSON object"),
    (struct.pack("!I", 10) + b"{}", "inside a frame"),
    (b"\x00\x00", "inside a length prefix"),
])
async def test_a_broken_frame_closes_only_its_connection(supervisor, data, message):
    bystander = await Connection.open(supervisor)
    assert "pid" in (await bystander.ask("ping"))["result"]
    offender = await Connection.open(supervisor)
    try:
        error = await offender.refused(data)
        assert error["error"]["code"] == "bad_request"
        assert message in error["error"]["message"]
        assert "pid" in (await bystander.ask("ping"))["result"]
        assert (await bystander.ask("list"))["result"] == []
    finally:
        offender.close()
        bystander.close()


@pytest.mark.parametrize("op", ["get", "shutdown", "interrupt", "restart", "connection_info",
                                "connection_opened", "connection_closed"])
@pytest.mark.parametrize("kernel_id", [None, 7, [1], {"a": 1}, "", "../../etc/passwd", "x" * 10_000,
                                       "00000000-0000-0000-0000-00000000000G", "A" * 8 + "-0000-0000-0000-" + "0" * 12])
async def test_kernel_ids_of_any_shape_are_not_found(supervisor, op, kernel_id):
    connection = await Connection.open(supervisor)
    try:
        reply = await connection.ask(op, kernel_id=kernel_id)
        assert reply["error"]["code"] == "kernel_not_found", reply
        assert len(reply["error"]["message"]) < 200
        assert "pid" in (await connection.ask("ping"))["result"]  # the connection lives on
    finally:
        connection.close()


@pytest.mark.parametrize("request_body, code", [
    ({"id": 1, "op": "no-such-op"}, "bad_request"),
    ({"id": 1, "op": ["ping"]}, "bad_request"),
    ({"id": 1, "op": "get", "args": [1]}, "bad_request"),
    ({"id": 1, "op": "start", "args": {"name": 3}}, "bad_request"),
    ({"id": 1, "op": "start", "args": {"env": {"KERNEL_A": 1}}}, "bad_request"),
    ({"id": 1, "op": "start", "args": {"env": {"KERNEL_A=B": "x"}}}, "bad_request"),
])
async def test_requests_of_the_wrong_shape_get_clear_errors(supervisor, request_body, code):
    connection = await Connection.open(supervisor)
    try:
        connection.writer.write(wire.encode(request_body))
        async with asyncio.timeout(10):
            reply = await wire.read_frame(connection.reader)
        assert reply["error"]["code"] == code, reply
    finally:
        connection.close()


def _ping(socket_path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(socket_path))
    except PermissionError:
        return "denied"
    sock.settimeout(10)
    try:
        sock.sendall(wire.encode({"id": 1, "op": "ping"}))
        return "answered" if sock.recv(4096) else "closed"
    except ConnectionError:  # closed before our ping was read
        return "closed"


def as_nobody(socket_path) -> str:
    """Connect and ping as another user, in a forked child (an interpreter under /root could not be
    run by that user); what happened, in one word."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads around: the child only pings
        pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = _ping(socket_path)
        except BaseException as e:
            result = f"failed: {e!r}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        return pipe.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
async def test_only_the_owner_is_served(start_gateway):
    supervisor = await start_gateway("--initial-kernels", "0", command=("supervisor",),
                                     wait_for="Supervisor listening")
    socket_path = supervisor.runtime_dir / "supervisor.sock"
    os.chmod(supervisor.runtime_dir.parent, 0o755)  # the test's temporary folder, so only ours is in the way
    assert as_nobody(socket_path) == "denied"  # the 0700 runtime dir

    # Were the folder and the socket opened up by mistake, the peer credential check still refuses.
    os.chmod(supervisor.runtime_dir, 0o711)
    os.chmod(socket_path, 0o666)
    assert as_nobody(socket_path) == "closed"
    assert "Refused a control connection from another user" in supervisor.log()
