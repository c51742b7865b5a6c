"""The outbox between kernel sockets and a websocket: bounded, and loud when it must drop."""

from __future__ import annotations

import json

from kernels_gateway.gateway.outbox import Outbox


def message(msg_type: str, size: int = 0, parent: str = "p") -> list[bytes]:
    return [json.dumps({"msg_type": msg_type, "msg_id": "m"}).encode(),
            json.dumps({"msg_id": parent}).encode(), b"{}", b"x" * size]


async def test_order_kept_under_the_limit():
    box = Outbox(limit=1000)
    box.put("iopub", message("stream", 10))
    box.put("shell", message("execute_reply"))
    assert [(await box.get())[0] for _ in range(2)] == ["iopub", "shell"]


async def test_output_over_the_limit_is_dropped_and_announced():
    box = Outbox(limit=1000)
    box.put("iopub", message("stream", 900, parent="first"))
    box.put("iopub", message("stream", 500, parent="lost-1"))  # over: dropped
    box.put("iopub", message("stream", 500, parent="lost-2"))  # over: dropped
    box.put("iopub", message("status"))  # never dropped
    box.put("shell", message("execute_reply", 300))  # never dropped
    channel, body = await box.get()
    assert json.loads(body[1])["msg_id"] == "first"
    channel, body = await box.get()  # backlog now under half the limit: the notice comes first
    notice = json.loads(body[3])
    assert channel == "iopub" and json.loads(body[0])["msg_type"] == "stream"
    assert notice["name"] == "stderr" and "2 output messages" in notice["text"]
    assert json.loads(body[1])["msg_id"] == "lost-1"
    kinds = [json.loads((await box.get())[1][0])["msg_type"] for _ in range(2)]
    assert kinds == ["status", "execute_reply"]
