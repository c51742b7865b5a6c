"""The websocket's Origin check (gateway/auth.py): browsers apply no CORS to websockets."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from kernels_gateway.gateway.auth import origin_allowed

PAGE = "http://127.0.0.1:9001"


def allowed(origin: str | None, allow: tuple[str, ...] = (PAGE,), host: str = "127.0.0.1:8000") -> bool:
    headers = {"Host": host, **({"Origin": origin} if origin is not None else {})}
    return origin_allowed(make_mocked_request("GET", "/api/kernels/k/channels", headers=headers), allow)


@pytest.mark.parametrize("origin", [None, PAGE, "http://127.0.0.1:8000", "https://127.0.0.1:8000", "HTTP://127.0.0.1:8000"])
def test_no_browser_the_listed_page_and_the_gateways_own_origin_may_open(origin):
    assert allowed(origin)


@pytest.mark.parametrize("origin", ["http://127.0.0.1:9002", "null", "http://127.0.0.1", "http://evil.example",
                                    f"{PAGE}/", "http://127.0.0.1:8000.evil.example"])
def test_any_other_page_may_not(origin):
    assert not allowed(origin)


def test_any_origin_with_a_star_and_none_without_a_list():
    assert allowed("http://evil.example", ("*",))
    assert not allowed(PAGE, ())
    assert allowed("http://Gateway.Example", (), host="gateway.example")
