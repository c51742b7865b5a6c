"""Hostile clients: websockets that stop answering, more websockets than file descriptors, headers sent
a byte at a time, requests aiohttp cannot parse, JSON nested beyond recursion, and settings that
cannot go together. Each against a real gateway; none may crash it, hang it, or fill its log."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import socket

import aiohttp
import pytest

from kernels_gateway.supervisor import wire

from .conftest import eventually, kernel_pids
from .kernel_client import KernelSocket
from .helpers import children, read_response, request_head


async def the_kernel(http, gw) -> str:
    async with http.get(f"{gw.url}/api/kernels") as r:
        return (await r.json())[0]["id"]


async def connections(http, gw, kernel_id: str) -> int:
    async with http.get(f"{gw.url}/api/kernels/{kernel_id}") as r:
        return (await r.json())["connections"]


async def raw_websocket(gw, kernel_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket by hand, whose client will never read or answer a ping: a half-open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(request_head(gw, "GET", f"/api/kernels/{kernel_id}/channels", Upgrade="websocket",
                              Connection="Upgrade", Sec_WebSocket_Key=key, Sec_WebSocket_Version="13"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


# -- keepalive -----------------------------------------------------------------------------------


async def test_a_websocket_that_stops_answering_pings_is_closed(start_gateway, http):
    """Kernel Gateway's variable sets the interval; a client that answers pings stays, one that
    does not is closed and no longer counted."""
    gw = await start_gateway(env={"KG_WS_PING_INTERVAL_SECS": "2"})
    kernel_id = await the_kernel(http, gw)
    answering = await KernelSocket.open(http, gw, kernel_id)  # aiohttp answers pings while it reads
    reader, writer = await raw_websocket(gw, kernel_id)
    try:
        assert await connections(http, gw, kernel_id) == 2

        async def half_open_one_dropped() -> bool:
            await answering.execute("1")  # keeps reading, as a live client does
            return await connections(http, gw, kernel_id) == 1

        # The raw client never reads: the server's pings go unanswered, and the server gives up on it.
        await eventually(half_open_one_dropped, timeout=30)
        await asyncio.wait_for(reader.read(), 30)  # what was sent before the server closed it, then the end
        assert reader.at_eof()
        _, stdout = await answering.execute("print('still here')")
        assert stdout == "still here\n"
    finally:
        writer.close()
        await answering.close()


# -- file descriptors ----------------------------------------------------------------------------


FD_LIMIT = 256
WEBSOCKETS = 400


def web_worker(gw) -> int:
    [pid] = [pid for pid, cmdline in children(gw.process.pid).items() if " web " in cmdline]
    return pid


async def test_out_of_file_descriptors_refuses_cleanly_and_recovers(start_gateway):
    gw = await start_gateway()
    # The hard limit too: the gateway raises its soft limit to the hard one at start-up.
    resource.prlimit(web_worker(gw), resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * WEBSOCKETS + soft), hard))  # the clients' side
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            kernel_id = await the_kernel(http, gw)
            outcomes: list[object] = []
            opened: list[aiohttp.ClientWebSocketResponse] = []

            async def open_one() -> None:
                try:
                    opened.append(await http.ws_connect(f"{gw.ws_url}/api/kernels/{kernel_id}/channels"))
                    outcomes.append(101)
                except aiohttp.WSServerHandshakeError as e:
                    outcomes.append((e.status, e.headers.get("Content-Type", "")))
                except (aiohttp.ClientError, OSError) as e:
                    outcomes.append(repr(e))

            async with asyncio.timeout(90):
                await asyncio.gather(*(open_one() for _ in range(WEBSOCKETS)))
                refused = [o for o in outcomes if o != 101]
                assert opened and refused, outcomes
                assert set(refused) == {(503, "application/json; charset=utf-8")}, set(map(str, refused))
                # Once the burst is over, websockets open up to the reserve, and no further.
                for _ in range(FD_LIMIT):
                    await open_one()
                    if outcomes[-1] != 101:
                        break
                assert outcomes[-1] == (503, "application/json; charset=utf-8"), outcomes[-1]
                # With those still open: health answers, and a new websocket is told why not.
                async with http.get(f"{gw.url}/api/health") as r:
                    assert r.status == 200
                upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
                async with http.get(f"{gw.url}/api/kernels/{kernel_id}/channels", headers=upgrade) as r:
                    assert r.status == 503
                    assert "file descriptors" in (await r.json())["message"]
                for ws in opened:
                    await ws.close()
                # Recovered: a websocket opens and its kernel answers.
                sock = await eventually(lambda: _try_open(http, gw, kernel_id), timeout=30)
                _, stdout = await sock.execute("print(6 * 7)")
                assert stdout == "42\n"
                await sock.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    log = gw.log()
    assert "Traceback" not in log
    warnings = re.findall(r"Out of file descriptors", log)
    assert 1 <= len(warnings) <= 10, warnings  # one line per 10 s at most, not one per event


async def _try_open(http, gw, kernel_id):
    try:
        return await KernelSocket.open(http, gw, kernel_id)
    except aiohttp.WSServerHandshakeError:
        return None


# -- slow and malformed requests -----------------------------------------------------------------


SLOW_CONNECTIONS = 300


async def test_headers_sent_a_byte_at_a_time_are_cut_off(start_gateway, http):
    gw = await start_gateway("--idle-connection-timeout", "2", "--initial-kernels", "0")
    head = request_head(gw, "GET", "/api")
    streams = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(SLOW_CONNECTIONS)]
    closed = 0

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        try:
            for byte in head[:-1]:  # never the last byte: the request never completes
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof() or await _closed_within(reader, 0.5):
                    closed += 1
                    return
        except ConnectionError:
            closed += 1
        finally:
            writer.close()

    async with asyncio.timeout(90):
        slow = asyncio.gather(*(trickle(*stream) for stream in streams))
        async with http.get(f"{gw.url}/api/health") as r:  # the others are served meanwhile
            assert r.status == 200
        await slow
    assert closed == SLOW_CONNECTIONS  # every one closed by the server before it finished its head


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


MALFORMED = [
    (b"EVIL\x01 /api?token=ECHO HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /api?token=ECHO HTTP/7.0\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /api?token=ECHO" + b"x" * 10_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    (b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Echo: ECHO" + b"x" * 10_000 + b"\r\n\r\n", 400),
    (b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-ECHO-%d: 1\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET /api HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header ECHO\r\n\r\n", 400),
]


@pytest.mark.parametrize("request_bytes, status", MALFORMED, ids=["method", "version", "long line", "long header",
                                                                  "too many headers", "bad header"])
async def test_requests_aiohttp_cannot_parse_get_json_errors(gateway, request_bytes, status):
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(request_bytes)
        async with asyncio.timeout(30):
            got, headers, body = await read_response(reader)
    finally:
        writer.close()
    assert got == status
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"message", "reason"}
    assert b"ECHO" not in body.upper()  # nothing of the request is quoted back


# -- JSON nested beyond recursion ----------------------------------------------------------------


DEEP = "[" * 100_000 + "]" * 100_000


async def test_deeply_nested_json_is_a_400_in_the_web_half(gateway, http):
    body = '{"name": "python3", "env": {"KERNEL_X": ' + DEEP + "}}"
    async with http.post(f"{gateway.url}/api/kernels", data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert "nested too deeply" in (await r.json())["message"]
    assert "RecursionError" not in gateway.log()


async def test_deeply_nested_json_is_a_protocol_error_in_the_supervisor(gateway):
    path = str(gateway.runtime_dir / "supervisor.sock")
    reader, writer = await asyncio.open_unix_connection(path, limit=wire.REPLY_LIMIT)
    try:
        data = ('{"id": 1, "op": "ping", "args": ' + DEEP + "}").encode()
        writer.write(len(data).to_bytes(4, "big") + data)
        async with asyncio.timeout(30):
            reply = await wire.read_frame(reader, wire.REPLY_LIMIT)
            assert reply["error"]["code"] == "bad_request" and "nested too deeply" in reply["error"]["message"]
            assert await reader.read() == b""  # and that one connection is closed
    finally:
        writer.close()
    reader, writer = await asyncio.open_unix_connection(path)  # the others carry on
    try:
        await wire.write_frame(writer, {"id": 2, "op": "ping"})
        async with asyncio.timeout(30):
            assert "result" in await wire.read_frame(reader, wire.REPLY_LIMIT)
    finally:
        writer.close()
    assert "RecursionError" not in gateway.log()


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, env", [
    (("--allow-origin", "*", "--allow-credentials"), {}),
    ((), {"KG_ALLOW_ORIGIN": "*", "KG_ALLOW_CREDENTIALS": "true"}),
])
async def test_any_origin_with_credentials_is_refused_at_start(start_gateway, args, env):
    gw = await start_gateway(*args, env=env, wait_for="--allow-credentials cannot go with --allow-origin '*'")
    assert gw.process.wait(timeout=30) == 1
    assert kernel_pids(gw.runtime_dir) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()


@pytest.mark.parametrize("args, code", [(("--pool", "python3"), 2), (("--pool", "none,python3=one"), 2)])
async def test_a_bad_pool_is_refused_before_anything_starts(start_gateway, args, code):
    gw = await start_gateway(*args, wait_for="--pool takes NAME=N")
    assert gw.process.wait(timeout=30) == code  # argparse's usage error
    assert "Supervisor" not in gw.log()  # no child was started
    assert kernel_pids(gw.runtime_dir) == []
