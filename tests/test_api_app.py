"""Tests for logplex.api.app: what the management API's guards let through."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("origin, host, secure, own", [
    (b"http://127.0.0.1:8001", b"127.0.0.1:8001", False, True),
    (b"HTTP://LOCALHOST:8001", b"localhost:8001", False, True),
    (b"https://logs.example", b"logs.example:443", True, True),      # default ports are the same origin
    (b"http://logs.example", b"logs.example", True, False),           # the request came over TLS
    (b"https://api.example", b"10.0.0.5:8001", False, True),          # the --api-url behind a proxy
    (b"https://attacker.example", b"127.0.0.1:8001", False, False),
    (b"http://127.0.0.1:8002", b"127.0.0.1:8001", False, False),
    (b"null", b"127.0.0.1:8001", False, False),
    (b"", b"127.0.0.1:8001", False, False),
    (b"http://[::1]:8001", b"[::1]:8001", False, True),
    (b"http://127.0.0.1:99999", b"127.0.0.1:99999", False, False),    # no such port: garbage
    (b"ftp://127.0.0.1:8001", b"127.0.0.1:8001", False, False),
])
def test_what_counts_as_the_apis_own_origin(origin, host, secure, own):
    from twisted.web.test.requesthelper import DummyRequest

    from logplex.api.app import ManagementApi
    from logplex.settings import Settings

    api = ManagementApi(None, None, None, None, None, Settings(), api_url=lambda: "https://api.example/",
                        reactor=None)
    request = DummyRequest([b""])
    request.requestHeaders.setRawHeaders(b"host", [host])
    request.isSecure = lambda: secure
    assert api._own_origin(request, origin) is own
