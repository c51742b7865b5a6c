"""The control connection in-process: the supervisor's server with an empty registry, spoken to by the
real client; and the client against a fake supervisor that goes away and comes back."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid

import pytest

from kernels_gateway.config import Config
from kernels_gateway.supervisor.client import SupervisorClient
from kernels_gateway.errors import BadRequest, KernelBusy, KernelNotFound, SupervisorUnavailable
from kernels_gateway.supervisor.kernels import Kernels
from kernels_gateway.supervisor.server import SupervisorServer

from ..helpers import FakeSupervisor


@pytest.fixture
async def served(tmp_path):
    """A SupervisorServer on a socket of its own, with no kernels, and a client of it."""
    config = Config(runtime_dir=tmp_path / "rt")
    kernels = Kernels(config)
    server = SupervisorServer(kernels, config.socket_path)
    await server.start_serving()
    client = SupervisorClient(config.socket_path, retry_for=0.2)
    try:
        yield server, client
    finally:
        await client.close()
        await server.close()
        kernels.close()


async def test_the_server_answers_from_its_registry(served):
    server, client = served
    assert (await client.ping())["pid"] == os.getpid()
    assert await client.list() == []
    assert (await client.status())["kernels"] == 0
    missing = str(uuid.uuid4())
    with pytest.raises(KernelNotFound, match=f"Kernel does not exist: {missing}"):
        await client.get(missing)
    with pytest.raises(KernelNotFound):
        await client.get("../../etc/passwd")  # not an id: never looked up, never a path


async def test_the_server_checks_what_a_client_did_not(served):
    """A request written by hand, past the client's own checks, gets the same refusal."""
    server, client = served
    writer = await client._connect()
    for op, args, message in [("start", {"name": 3}, "name must be a string"),
                              ("no-such-op", {}, "unknown operation 'no-such-op'")]:
        body = await client._exchange(writer, op, args)
        assert body["error"] == {"code": "bad_request", "message": message}


async def test_a_hand_over_only_from_an_orphan(served):
    server, client = served
    with pytest.raises(KernelBusy, match="serves a running gateway"):
        await client.request("hand_over")
    server.orphan()
    assert (await client.request("hand_over"))["pid"] == os.getpid()
    assert server.taken_over.is_set()
    with pytest.raises(SupervisorUnavailable, match="its kernels wait for the next one"):
        await client.list()
    assert (await client.ping())["pid"] == os.getpid()


async def test_a_reconnected_client_counts_its_websockets_in_again_first(tmp_path, caplog):
    socket_path = tmp_path / "supervisor.sock"
    kernel_id = str(uuid.uuid4())
    opened = {"connection_opened": lambda args: {"missed": [], "returning": False}}
    client = SupervisorClient(socket_path, retry_for=0.5)
    try:
        async with FakeSupervisor(socket_path, opened):
            await client.connection_opened(kernel_id, "session", "connection-1")
        with pytest.raises(SupervisorUnavailable):
            await client.ping()  # nobody listens

        def gone(args):
            raise KernelNotFound(args["kernel_id"])

        async with FakeSupervisor(socket_path, {"connection_opened": gone, "ping": lambda args: {"pid": 7}}) as new:
            with caplog.at_level(logging.WARNING, "kernels_gateway.client"):
                assert (await client.ping())["pid"] == 7
        assert [op for op, _ in new.asked] == ["connection_opened", "ping"]
        assert new.asked[0][1]["connection"] == "connection-1"
        assert f"A websocket on kernel {kernel_id} could not be counted in again" in caplog.text
    finally:
        await client.close()



async def test_whichever_request_reconnects_subscribes_to_events_first(tmp_path):
    """A REST request can reconnect to a restarted supervisor while the event follower waits to retry;
    its client may act on the answer at once (kill a kernel), so the connection must be subscribed
    before the answer comes back, or the kernel's `restarting` is pushed to nobody."""
    socket_path = tmp_path / "supervisor.sock"
    client = SupervisorClient(socket_path, retry_for=0.2)
    follower = asyncio.create_task(client.follow(lambda event: None, retry_every=60))
    try:
        await asyncio.sleep(0.5)  # nobody listens: the follower gave up and waits a minute
        async with FakeSupervisor(socket_path, {"ping": lambda args: {"pid": 7}}) as new:
            assert (await client.ping())["pid"] == 7
            assert [op for op, _ in new.asked] == ["subscribe", "ping"]
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await client.close()

async def test_bad_arguments_never_leave_the_client(tmp_path):
    client = SupervisorClient(tmp_path / "nobody.sock", retry_for=0)
    with pytest.raises(BadRequest, match="env must be an object mapping names to string values"):
        await client.start("python3", {"KERNEL_A": 1})


async def test_a_departed_workers_progress_file_goes_once_the_worker_is_gone(tmp_path):
    """A worker's connection ends as it exits, a moment before the process is gone: the file of one
    still exiting goes once it has; that of one that lives on stays."""
    from kernels_gateway.supervisor.server import _remove_once_abandoned

    exiting = subprocess.Popen(["sleep", "60"])
    living = subprocess.Popen(["sleep", "60"])
    try:
        files = {child: tmp_path / f"progress-{child.pid}" for child in (exiting, living)}
        for path in files.values():
            path.write_bytes(b"")
        removals = [asyncio.create_task(_remove_once_abandoned(path)) for path in files.values()]
        await asyncio.sleep(0.2)
        exiting.kill()
        await asyncio.wait_for(removals[0], 5)
        assert not files[exiting].exists() and files[living].exists()
        removals[1].cancel()
        await asyncio.gather(removals[1], return_exceptions=True)
    finally:
        for child in (exiting, living):
            child.kill()
            child.wait()
