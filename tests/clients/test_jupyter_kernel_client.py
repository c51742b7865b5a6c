"""Datalayer's jupyter-kernel-client against a gateway with a token: it sends `Authorization: Bearer T`,
which Jupyter Server accepts beside `token T`."""

from __future__ import annotations

import json

from ..conftest import run_script


async def test_jupyter_kernel_client_with_its_default_headers(secured_gateway, http):
    gw = secured_gateway
    report = json.loads(await run_script("tests.clients.run_kernel_client", gw.url, gw.token))

    assert report["printed"]["status"] == "ok"
    assert [o["text"] for o in report["printed"]["outputs"]] == ["42\n"]
    assert report["interrupted"]["status"] == "error"
    assert [o.get("ename") for o in report["interrupted"]["outputs"]] == ["KeyboardInterrupt"]
    assert [o["text"] for o in report["after_restart"]["outputs"]] == ["False\n"]  # a new process
    log = gw.log()
    for event in ("started", "interrupted", "restarted", "shutdown"):
        assert f"Kernel {event}: {report['kernel_id']}" in log
    async with http.get(f"{gw.url}/api/kernels/{report['kernel_id']}", headers=gw.auth) as r:
        assert r.status == 404  # stop() shut it down
