"""What Thebe needs beside the kernels API: /api/status, the sessions API behind --sessions (Jupyter
Server's shapes and status codes, kept by the supervisor so that every worker sees the same sessions),
and CORS headers on every answer, errors and unknown routes included."""

from __future__ import annotations

import asyncio
import re

import pytest

from .conftest import Gateway, eventually, kernel_pids

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


@pytest.fixture(scope="module")
async def sessions_gateway():
    """Shared by this module's tests, each of which leaves no session and no kernel behind."""
    gw = Gateway("--initial-kernels", "0", "--pool", "none", "--sessions")
    try:
        await gw.start()
        yield gw
        assert await gw.stop() == 0
    finally:
        gw.cleanup()


async def kernels(gw, http) -> list[dict]:
    async with http.get(f"{gw.url}/api/kernels") as r:
        return await r.json()


async def test_status_has_jupyter_servers_shape(gateway, http, kernel):
    async with http.get(f"{gateway.url}/api/status") as r:
        assert r.status == 200
        status = await r.json()
    assert set(status) == {"started", "last_activity", "kernels", "connections"}
    assert ISO.match(status["started"]) and ISO.match(status["last_activity"])
    assert status["last_activity"] >= status["started"]
    assert status["kernels"] == len(await kernels(gateway, http)) >= 1
    assert status["connections"] >= 0


async def test_sessions_are_off_by_default(gateway, http):
    async with http.get(f"{gateway.url}/api/sessions") as r:
        assert r.status == 404
        assert set(await r.json()) == {"message", "reason"}


async def test_a_session_names_a_kernel_by_path(sessions_gateway, http, connect):
    gw = sessions_gateway
    body = {"path": "books/intro.ipynb", "name": "intro.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    async with http.post(f"{gw.url}/api/sessions", json=body) as r:
        assert r.status == 201, await r.text()
        session = await r.json()
        assert r.headers["Location"] == f"/api/sessions/{session['id']}"
    assert set(session) == {"id", "path", "name", "type", "kernel", "notebook"}
    assert (session["path"], session["name"], session["type"]) == ("books/intro.ipynb", "intro.ipynb", "notebook")
    assert session["notebook"] == {"path": "books/intro.ipynb", "name": "intro.ipynb"}
    kernel_id = session["kernel"]["id"]
    assert [k["id"] for k in await kernels(gw, http)] == [kernel_id]
    sock = await connect(kernel_id, gw=gw)
    _, stdout = await sock.execute("kept = 6 * 7\nprint(kept)")
    assert stdout == "42\n"

    # The same path again is the same session, as Jupyter Server answers.
    async with http.post(f"{gw.url}/api/sessions", json={**body, "name": "other"}) as r:
        assert r.status == 201
        assert (await r.json())["id"] == session["id"]
    async with http.get(f"{gw.url}/api/sessions") as r:
        assert [s["id"] for s in await r.json()] == [session["id"]]
    async with http.get(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert (await r.json())["kernel"]["id"] == kernel_id

    async with http.patch(f"{gw.url}/api/sessions/{session['id']}", json={"path": "books/renamed.ipynb"}) as r:
        assert r.status == 200
        renamed = await r.json()
    assert renamed["path"] == "books/renamed.ipynb" and renamed["kernel"]["id"] == kernel_id
    _, stdout = await sock.execute("print(kept)")
    assert stdout == "42\n", "a rename keeps the kernel"

    # Another kernelspec for the session: a new kernel, and the old one shut down.
    async with http.patch(f"{gw.url}/api/sessions/{session['id']}", json={"kernel": {"name": "python3"}}) as r:
        assert r.status == 200
        moved = await r.json()
    assert moved["kernel"]["id"] != kernel_id
    assert [k["id"] for k in await kernels(gw, http)] == [moved["kernel"]["id"]]

    async with http.delete(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert r.status == 204
    assert await kernels(gw, http) == []
    await eventually(lambda: _no_kernel_process(gw))
    async with http.get(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert r.status == 404
        assert (await r.json())["message"] == f"Session not found: {session['id']}"
    async with http.delete(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert r.status == 404


async def _no_kernel_process(gw) -> bool:
    return not kernel_pids(gw.runtime_dir)


async def test_a_session_goes_with_its_kernel(sessions_gateway, http):
    gw = sessions_gateway
    async with http.post(f"{gw.url}/api/sessions", json={"path": "p", "type": "console"}) as r:
        session = await r.json()
    assert session["name"] is None and "notebook" not in session
    async with http.delete(f"{gw.url}/api/kernels/{session['kernel']['id']}") as r:
        assert r.status == 204
    async with http.get(f"{gw.url}/api/sessions") as r:
        assert await r.json() == []
    async with http.get(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert r.status == 404


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("POST", "/api/sessions", None, 400, "No JSON data provided"),
    ("POST", "/api/sessions", {"type": "notebook"}, 400, "Missing field in JSON data: path"),
    ("POST", "/api/sessions", {"path": "p"}, 400, "Missing field in JSON data: type"),
    ("POST", "/api/sessions", {"path": 1, "type": "t"}, 400, "path must be a string"),
    ("POST", "/api/sessions", {"path": "p", "type": "t", "kernel": {"name": "nope"}}, 501,
     "The kernel is not available: No such kernel named nope"),
    ("POST", "/api/sessions", {"path": "p", "type": "t", "kernel": {"id": "00000000-0000-4000-8000-000000000000"}},
     404, "Kernel does not exist: 00000000-0000-4000-8000-000000000000"),
    ("GET", "/api/sessions/not-a-session", None, 404, "Session not found: not-a-session"),
    ("PATCH", "/api/sessions/00000000-0000-4000-8000-000000000000", {"path": "q"}, 404,
     "Session not found: 00000000-0000-4000-8000-000000000000"),
    ("PUT", "/api/sessions", None, 405, "Method Not Allowed"),
])
async def test_bad_session_requests_get_jupyter_servers_answers(sessions_gateway, http, method, path, body,
                                                                status, message):
    gw = sessions_gateway
    async with http.request(method, f"{gw.url}{path}", json=body) as r:
        assert r.status == status
        assert await r.json() == {"message": message, "reason": r.reason}
    assert await kernels(gw, http) == []


async def test_patching_a_session_to_a_missing_kernel_is_400(sessions_gateway, http):
    gw = sessions_gateway
    async with http.post(f"{gw.url}/api/sessions", json={"path": "p", "type": "t"}) as r:
        session = await r.json()
    missing = "00000000-0000-4000-8000-000000000000"
    async with http.patch(f"{gw.url}/api/sessions/{session['id']}", json={"kernel": {"id": missing}}) as r:
        assert r.status == 400
        assert (await r.json())["message"] == f"No such kernel: {missing}"
    async with http.patch(f"{gw.url}/api/sessions/{session['id']}", json={"kernel": {"name": "nope"}}) as r:
        assert r.status == 501
    async with http.get(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert (await r.json())["kernel"]["id"] == session["kernel"]["id"], "a failed change changes nothing"
    async with http.delete(f"{gw.url}/api/sessions/{session['id']}") as r:
        assert r.status == 204


async def test_every_answer_carries_cors_headers(secured_gateway, http):
    """Errors and unknown routes too: a page on an allowed origin can read every answer (Thebe's first
    request, to a route Kernel Gateway does not serve, was blocked for want of them)."""
    gw = secured_gateway
    origin = {"Origin": gw.page_origin}
    cases = [
        ("GET", "/api/status", gw.auth, 200),
        ("GET", "/api/no-such-route", gw.auth, 404),
        ("GET", "/elsewhere/entirely", gw.auth, 404),
        ("HEAD", "/api/no-such-route", gw.auth, 404),
        ("DELETE", "/api/kernelspecs", gw.auth, 405),
        ("HEAD", "/api/kernels/00000000-0000-4000-8000-000000000000/channels", gw.auth, 405),
        ("GET", "/api/no-such-route", {}, 401),
        ("GET", "/api/kernels/00000000-0000-4000-8000-000000000000", gw.auth, 404),
    ]
    for method, path, auth, status in cases:
        async with http.request(method, f"{gw.url}{path}", headers={**origin, **auth}) as r:
            assert r.status == status, (method, path)
            assert r.headers.get("Access-Control-Allow-Origin") == gw.page_origin, (method, path)
            if method != "HEAD" and status != 200:
                assert set(await r.json()) == {"message", "reason"}
        async with http.request(method, f"{gw.url}{path}", headers={"Origin": "http://elsewhere.example", **auth}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    # A preflight for a route nobody serves passes, so that the page gets to read the 404.
    preflight = {**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    async with http.options(f"{gw.url}/api/no-such-route", headers=preflight) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == gw.page_origin


async def test_every_web_worker_sees_the_same_sessions(start_gateway, http):
    """Two web halves on one supervisor: a session made through one is found, and deleted, through the
    other; the same path through both at once makes one session."""
    supervisor = await start_gateway("--initial-kernels", "0", command=("supervisor",), wait_for="Supervisor listening")
    one, two = [await start_gateway("--runtime-dir", str(supervisor.runtime_dir), "--sessions", command=("web",))
                for _ in range(2)]
    body = {"path": "shared.ipynb", "type": "notebook"}
    created = await asyncio.gather(*(http.post(f"{web.url}/api/sessions", json=body) for web in (one, two)))
    ids = {(await r.json())["id"] for r in created}
    assert [r.status for r in created] == [201, 201] and len(ids) == 1
    (session_id,) = ids
    async with http.get(f"{two.url}/api/sessions/{session_id}") as r:
        assert r.status == 200
    async with http.delete(f"{two.url}/api/sessions/{session_id}") as r:
        assert r.status == 204
    async with http.get(f"{one.url}/api/sessions") as r:
        assert await r.json() == []
    assert await kernels(one, http) == []
