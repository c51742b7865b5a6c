"""Size limits, on a gateway with small ones: bodies refused before they are read, large websocket
messages closed with 1009, and the kernel unharmed by either."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

import aiohttp
import pytest

from .conftest import Gateway
from .kernel_client import KernelSocket
from .helpers import read_response, request_head

BODY_LIMIT = 4096
MESSAGE_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
async def small():
    gw = Gateway("--max-body-size", str(BODY_LIMIT), "--max-message-size", str(MESSAGE_LIMIT))
    await gw.start()
    yield gw
    assert await gw.stop() == 0
    gw.cleanup()


@pytest.fixture(scope="module")
async def small_kernel(small, http) -> str:
    async with http.get(f"{small.url}/api/kernels") as r:
        return (await r.json())[0]["id"]


def assert_too_large(status: int, headers: dict, body: bytes) -> None:
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"message", "reason"}
    assert str(BODY_LIMIT) in error["message"]


@pytest.mark.parametrize("method, path", [("POST", "/api/kernels"), ("GET", "/api/kernels")])
async def test_declared_length_over_the_limit_is_refused_before_any_body(small, method, path):
    """Only the headers are sent: a server that waited for the body would never answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    try:
        writer.write(request_head(small, method, path, Content_Type="application/json",
                                  Content_Length=str(BODY_LIMIT + 1)))
        async with asyncio.timeout(30):
            assert_too_large(*await read_response(reader))
    finally:
        writer.close()


async def test_a_body_at_the_limit_is_read(small, http):
    body = {"name": "no-such-kernelspec", "pad": ""}
    body["pad"] = "x" * (BODY_LIMIT - len(json.dumps(body)))
    data = json.dumps(body).encode()
    assert len(data) == BODY_LIMIT
    async with http.post(f"{small.url}/api/kernels", data=data, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 404, await r.text()  # read and parsed: the kernelspec is what is wrong


async def test_a_chunked_body_is_cut_off_at_the_limit(small):
    """The chunked body never ends: only a read bounded by the limit can answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    try:
        writer.write(request_head(small, "POST", "/api/kernels", Content_Type="application/json",
                                  Transfer_Encoding="chunked"))
        chunk = b"x" * 1024
        for _ in range(2 * BODY_LIMIT // len(chunk)):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        async with asyncio.timeout(30):
            assert_too_large(*await read_response(reader))
    finally:
        writer.close()


async def test_a_message_over_the_limit_closes_the_websocket_with_1009(small, small_kernel, http):
    sock = await KernelSocket.open(http, small, small_kernel)
    request = sock.message("execute_request", {"code": "#" + "x" * MESSAGE_LIMIT, "silent": False})
    await sock.send(request)
    async with asyncio.timeout(30):
        while (await sock.ws.receive()).type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            pass  # what the kernel published before the close
    assert sock.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    # A message just under the limit goes through, and the kernel is fine.
    sock = await KernelSocket.open(http, small, small_kernel)
    _, stdout = await sock.execute("print(len('" + "x" * (MESSAGE_LIMIT - 1000) + "'))")
    assert stdout == f"{MESSAGE_LIMIT - 1000}\n"
    await sock.close()


async def test_a_frame_declaring_a_huge_length_is_refused_before_its_payload(small, small_kernel):
    """Only a frame header promising a terabyte is sent: the server must answer without waiting for it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(request_head(small, "GET", f"/api/kernels/{small_kernel}/channels", Upgrade="websocket",
                                  Connection="Upgrade", Sec_WebSocket_Key=key, Sec_WebSocket_Version="13"))
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + os.urandom(4))  # FIN, binary, masked
            while True:  # skip whatever the kernel says until the server's close frame
                first, second = await reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await reader.readexactly(8))
                payload = await reader.readexactly(length)
                if first & 0x0F == 0x8:
                    break
        assert struct.unpack("!H", payload[:2])[0] == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        writer.close()
