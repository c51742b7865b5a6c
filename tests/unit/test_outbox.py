"""The outbox between kernel sockets and a websocket: bounded, and loud when it must drop."""

from __future__ import annotations

import json

from kernels_gateway.gateway.outbox import Outbox


def message(msg_type: str, size: int = 0, parent: str = "p") -> list[bytes]:
    return [json.dumps({"msg_type": msg_type, "msg_id": "m"}).encode(),
            json.dumps({"msg_id": parent}).encode(), b"{}", b"x" * size]


async def kinds(box: Outbox, count: int) -> list[str]:
    return [json.loads((await box.get())[1][0])["msg_type"] for _ in range(count)]


async def test_order_kept_under_the_limit():
    box = Outbox(limit=1000, max_message=10_000)
    box.put("iopub", message("stream", 10))
    box.put("shell", message("execute_reply"))
    assert [(await box.get())[0] for _ in range(2)] == ["iopub", "shell"]


async def test_a_message_larger_than_the_limit_reaches_a_client_that_keeps_up():
    box = Outbox(limit=1000, max_message=10_000)
    box.put("iopub", message("stream", 5000))
    box.put("iopub", message("status"))
    channel, body = await box.get()
    assert channel == "iopub" and len(body[3]) == 5000
    assert await kinds(box, 1) == ["status"]


async def test_output_over_the_limit_is_dropped_and_announced_before_the_idle():
    box = Outbox(limit=1000, max_message=10_000)
    box.put("iopub", message("stream", 900, parent="first"))
    box.put("iopub", message("stream", 500, parent="second"))  # less than the limit waits ahead: taken
    box.put("iopub", message("stream", 500, parent="lost-1"))  # over: dropped
    box.put("iopub", message("stream", 10, parent="lost-2"))  # still dropping: the backlog has not halved
    box.put("iopub", message("status"))  # never dropped, and the notice goes first
    box.put("shell", message("execute_reply", 300))  # never dropped
    assert [json.loads((await box.get())[1][1])["msg_id"] for _ in range(2)] == ["first", "second"]
    channel, body = await box.get()
    notice = json.loads(body[3])
    assert channel == "iopub" and json.loads(body[0])["msg_type"] == "stream"
    assert notice["name"] == "stderr" and "2 output messages (" in notice["text"]
    assert "could not keep up" in notice["text"]
    assert json.loads(body[1])["msg_id"] == "lost-1"
    assert await kinds(box, 2) == ["status", "execute_reply"]


async def test_dropping_goes_on_until_half_the_backlog_is_sent():
    box = Outbox(limit=1000, max_message=10_000)
    for _ in range(4):
        box.put("iopub", message("stream", 400))  # the fourth is dropped
    await box.get()  # 800 bytes wait: more than half
    box.put("iopub", message("stream", 10))  # dropped
    await box.get()  # 400 wait: under half
    box.put("iopub", message("stream", 10, parent="after"))
    await box.get()
    notice = json.loads((await box.get())[1][3])["text"]
    assert "2 output messages" in notice
    assert json.loads((await box.get())[1][1])["msg_id"] == "after"


async def test_a_message_too_large_to_send_is_announced_with_its_reason():
    box = Outbox(limit=1000, max_message=100)
    box.put("iopub", message("stream", 200, parent="huge"))
    box.put("iopub", message("status"))
    body = (await box.get())[1]
    assert json.loads(body[1])["msg_id"] == "huge"
    text = json.loads(body[3])["text"]
    assert "1 output messages" in text and "larger than a websocket message may be" in text
    assert await kinds(box, 1) == ["status"]


async def test_the_notice_comes_when_nothing_else_waits():
    box = Outbox(limit=1000, max_message=100)
    box.put("iopub", message("stream", 10))
    box.put("iopub", message("stream", 200))
    assert await kinds(box, 2) == ["stream", "stream"]  # the message, then the notice
