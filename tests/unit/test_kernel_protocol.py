"""What both halves say to kernels (kernel_protocol.py): endpoints, message parts, the welcome, the proof."""

from __future__ import annotations

import asyncio
import json

from kernels_gateway.kernel_protocol import (
    DELIMITER, STATUS_TYPE, is_welcome, kernel_url, message_body, message_type, prove_live,
)


def test_kernel_urls():
    ipc = {"transport": "ipc", "ip": "/run/k-1", "shell_port": 3}
    tcp = {"transport": "tcp", "ip": "127.0.0.1", "shell_port": 5555}
    assert kernel_url(ipc, "shell") == "ipc:///run/k-1-3"
    assert kernel_url(tcp, "shell") == "tcp://127.0.0.1:5555"


def test_a_message_body_follows_the_delimiter_and_the_signature():
    body = [b"{}", b"{}", b"{}", b"{}", b"buffer"]
    assert message_body([b"topic", DELIMITER, b"signature", *body]) == body
    assert message_body([b"topic", b"signature", *body]) is None  # no delimiter
    assert message_body([DELIMITER, b"signature", b"{}", b"{}"]) is None  # too short


def test_only_the_headers_that_may_be_of_a_type_are_parsed():
    status = json.dumps({"msg_type": "status"}).encode()
    assert message_type(status, STATUS_TYPE) == "status"
    assert message_type(b"not json at all", STATUS_TYPE) is None  # never parsed
    assert is_welcome(json.dumps({"msg_type": "iopub_welcome"}).encode())
    assert not is_welcome(status)


async def test_the_proof_asks_until_the_subscription_hears_the_kernel():
    heard, asked = asyncio.Event(), []

    async def ask():
        asked.append(len(asked))
        if len(asked) == 3:  # the third request's status comes through
            asyncio.get_running_loop().call_soon(heard.set)

    await asyncio.wait_for(prove_live(heard, ask, 0.01), 5)
    assert asked == [0, 1, 2]
