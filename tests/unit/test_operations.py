"""One declaration per operation: the server serves exactly the declared ones, and both sides refuse
the same bad arguments with the same messages."""

from __future__ import annotations

import pytest

from kernels_gateway.config import Config
from kernels_gateway.supervisor import operations
from kernels_gateway.supervisor.client import QUICK, SupervisorClient, deadlines
from kernels_gateway.errors import BadRequest
from kernels_gateway.supervisor.kernels import Kernels
from kernels_gateway.supervisor.server import SupervisorServer


async def test_the_server_serves_every_declared_operation_and_no_other(tmp_path):
    kernels = Kernels(Config(runtime_dir=tmp_path / "run"))
    try:
        server = SupervisorServer(kernels, tmp_path / "run" / "socket")
        assert set(server.ops) == set(operations.OPERATIONS)
        await server.close()
    finally:
        kernels.close()


@pytest.mark.parametrize("op, args, message", [
    ("start", {"name": 3}, "name must be a string"),
    ("start", {"env": "A=1"}, "env must be an object mapping names to string values"),
    ("start", {"env": {"KERNEL_X": 1}}, "env must be an object mapping names to string values"),
    ("execute_submit", {"kernel_id": "k", "code": 1}, "code must be a string"),
    ("execute_submit", {"kernel_id": "k", "code": "1", "metadata": []}, "metadata must be an object"),
    ("execute_submit", {"kernel_id": "k", "code": "1", "timeout": True}, "timeout must be a positive number of seconds"),
    ("execute_wait", {"kernel_id": "k", "request_id": "r", "after": "1"}, "after must be an integer"),
    ("execute_input", {"kernel_id": "k"}, "input must be a string"),
    ("connection_closed", {"kernel_id": "k", "last_msg_id": 7}, "last_msg_id must be a string"),
    ("session_create", {"type": "notebook"}, "Missing field in JSON data: path"),
    ("session_create", {"path": "p"}, "Missing field in JSON data: type"),
    ("session_create", {"path": 1, "type": "t"}, "path must be a string"),
    ("session_update", {"session_id": "s", "kernel_name": 3}, "kernel_name must be a string"),
    ("no-such-op", {}, "unknown operation 'no-such-op'"),
])
async def test_bad_arguments_are_refused_before_they_are_sent(tmp_path, op, args, message):
    with pytest.raises(BadRequest) as refused:
        operations.check(op, args)
    assert refused.value.message == message
    client = SupervisorClient(tmp_path / "nobody-listens", retry_for=0)
    with pytest.raises(BadRequest) as refused:
        await client.request(op, **args)  # refused without a connection: nothing listens there
    assert refused.value.message == message


def test_arguments_get_their_defaults_and_undeclared_ones_are_dropped():
    assert operations.check("execute_wait", {"kernel_id": "k", "request_id": "r", "extra": 1}) == {
        "kernel_id": "k", "request_id": "r", "after": 0}
    assert operations.check("start", {}) == {"name": None, "env": None}


def test_the_deadlines_follow_what_each_operation_waits_for():
    start, shutdown = 60 + QUICK, 2 * 5 + QUICK
    assert deadlines(60, 5) == {"start": start, "shutdown": shutdown, "restart": start + shutdown,
                                "session_create": start + shutdown, "session_update": start + shutdown,
                                "session_delete": shutdown, "connection_opened": QUICK + 5.0}
