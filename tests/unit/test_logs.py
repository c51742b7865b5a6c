"""The JSON log formatter: one line, extras as fields, tracebacks inside the object."""

from __future__ import annotations

import json
import logging
import sys

from kernels_gateway.logs import JsonFormatter


def test_extras_and_tracebacks_stay_on_one_line():
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "Kernel %s failed", ("k1",), sys.exc_info(),
            extra={"kernel_id": "k1", "detail": {"a": [1]}, "path": object()},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "Kernel k1 failed" and entry["level"] == "ERROR" and entry["logger"] == "t"
    assert entry["kernel_id"] == "k1" and entry["detail"] == {"a": [1]}
    assert entry["path"].startswith("<object")
    assert "ValueError: broken\nacross lines" in entry["exception"]
    assert entry["time"].endswith("Z")
