"""The small pieces behind the Host check and the access log's redaction."""

from __future__ import annotations

import pytest

from kernels_gateway.gateway.auth import local_only, redact_url


@pytest.mark.parametrize("listening, local", [
    (["127.0.0.1"], True), (["::1"], True), (["127.0.0.2", "::1"], True), (["localhost"], True),
    (["/run/kernels-gateway/web.sock"], True), (["0.0.0.0"], False), (["::"], False), ([""], False),
    (["127.0.0.1", "10.0.0.5"], False), ([], False),
])
def test_local_only(listening, local):
    assert local_only(listening) is local


@pytest.mark.parametrize("url, redacted", [
    ("http://page.example/?token=T", "http://page.example/?token=redacted"),
    ("http://page.example/app?gateway=http://gw:8000/krn&token=T&x=1#frag",
     "http://page.example/app?gateway=http://gw:8000/krn&token=redacted&x=1#frag"),
    ("http://page.example/?tokens=T", "http://page.example/?tokens=T"),
    ("http://page.example/index.html", "http://page.example/index.html"),
    ("not a url", "not a url"),
])
def test_redact_url(url, redacted):
    assert redact_url(url) == redacted
