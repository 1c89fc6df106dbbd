"""Tests for logplex.http.site: Request-Id, body limits and the deadlines of a request, driven in memory."""

from __future__ import annotations

import uuid

import pytest
from twisted.internet import defer

from logplex.http.routing import Dispatcher, HttpError, Reply, route
from logplex.http.site import LogplexSite
from tests.helpers import captured_log, connect, http_exchange, make_site_reactor, parse_reply, raw_request

MAX_BODY = 64


class Backend:
    """A few routes behind a LogplexSite: what the site's limits are seen through."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

        async def thing(request, name):
            return Reply(200, {"thing": name})

        async def slow(request):
            self.pending.append(defer.Deferred())
            return await self.pending[-1]

        async def body(request):
            return Reply(200, {"too_large": request.body_too_large, "stored": len(request.content.read())})

        async def boom(request):
            raise RuntimeError("a bug")

        async def teapot(request):
            raise HttpError(418, "A teapot.")

        table = [("GET", "/things/([a-z0-9]+)", thing), ("GET", "/slow", slow), ("POST", "/body", body),
                 ("GET", "/boom", boom), ("GET", "/http-error", teapot)]
        self.site = LogplexSite(Dispatcher([route(*row) for row in table]), max_body=MAX_BODY,
                                reactor=make_site_reactor())

    def get(self, path: bytes, method: bytes = b"GET", headers=None, body: bytes = b"", chunks=None):
        return http_exchange(self.site, raw_request(method, path, headers, body, chunks))


@pytest.fixture
def app() -> Backend:
    return Backend()


# --- Request-Id ------------------------------------------------------------------


def test_a_request_id_is_generated(app):
    first = app.get(b"/things/a").header(b"request-id")
    second = app.get(b"/nothing").header(b"request-id")
    assert uuid.UUID(first.decode()) != uuid.UUID(second.decode())


def test_a_request_id_is_echoed(app):
    for path in (b"/things/a", b"/nothing", b"/boom", b"/http-error"):
        with captured_log():
            reply = app.get(path, headers={b"Request-Id": b"abc-123"})
        assert reply.header(b"request-id") == b"abc-123"


# --- LimitedRequest: bodies are bounded ----------------------------------------


def test_a_body_within_max_body_is_stored(app):
    reply = app.get(b"/body", method=b"POST", body=b"x" * MAX_BODY)
    assert reply.json() == {"too_large": False, "stored": MAX_BODY}
    chunked = app.get(b"/body", method=b"POST", chunks=[b"x" * 30, b"y" * 30])
    assert chunked.json() == {"too_large": False, "stored": 60}


def test_a_content_length_over_max_body_is_not_stored(app):
    reply = app.get(b"/body", method=b"POST", body=b"x" * (MAX_BODY + 1))
    assert reply.json() == {"too_large": True, "stored": 0}


def test_a_chunked_body_growing_over_max_body_stops_being_stored(app):
    reply = app.get(b"/body", method=b"POST", chunks=[b"x" * 40] * 5)
    body = reply.json()
    assert body["too_large"] is True
    assert body["stored"] <= MAX_BODY


# --- LimitedChannel: every request head must arrive in time -------------------

HEADER_TIMEOUT = 2.0
IDLE_TIMEOUT = 30.0


class TimedSite:
    """A LogplexSite with short header and idle timeouts on a fake clock."""

    def __init__(self) -> None:
        self.app = Backend()
        self.clock = make_site_reactor()
        self.site = LogplexSite(self.app.site.resource, reactor=self.clock, header_timeout=HEADER_TIMEOUT,
                                request_timeout=10.0, idle_timeout=IDLE_TIMEOUT)

    def connect(self):
        return connect(self.site)

    def slow_clients(self, part: str) -> float:
        return self.site.metrics.get("logplex_http_slow_clients_total", part=part)


def aborted(transport) -> bool:
    """Whether the node aborted (rather than closed) the connection."""
    # StringTransport.abortConnection sets `disconnected` (its docstring says `aborted`).
    return getattr(transport, "disconnected", False)


@pytest.fixture
def timed() -> TimedSite:
    return TimedSite()


def test_a_connection_that_sends_nothing_is_cut_off_after_the_header_timeout(timed):
    protocol, transport = timed.connect()
    timed.clock.advance(HEADER_TIMEOUT - 0.1)
    assert not transport.disconnecting
    timed.clock.advance(0.2)
    assert aborted(transport)
    assert timed.slow_clients("headers") == 1


def test_a_request_line_trickled_a_byte_at_a_time_is_cut_off(timed):
    """Twisted's idle timeout restarts with every byte; the head deadline does not."""
    protocol, transport = timed.connect()
    for byte in b"GET /things/abcdefghijklmnopqrstuvwxyz HTTP/1.1":
        if transport.disconnecting:
            break
        protocol.dataReceived(bytes([byte]))
        timed.clock.advance(0.25)
    assert aborted(transport)
    assert timed.clock.seconds() <= HEADER_TIMEOUT + 0.25
    assert transport.value() == b""
    assert timed.slow_clients("headers") == 1


def test_headers_trickled_after_a_prompt_request_line_are_cut_off(timed):
    protocol, transport = timed.connect()
    protocol.dataReceived(b"GET /things/a HTTP/1.1\r\n")
    for _ in range(10):
        protocol.dataReceived(b"X-A: b\r\n")
        timed.clock.advance(0.5)
    assert aborted(transport)
    assert timed.slow_clients("headers") == 1


def test_a_prompt_request_is_answered_and_its_deadline_cancelled(timed):
    protocol, transport = timed.connect()
    protocol.dataReceived(raw_request(b"GET", b"/things/a"))
    assert parse_reply(transport.value()).json() == {"thing": "a"}
    # Silent after its answer: the idle timeout governs, not the header timeout.
    timed.clock.advance(IDLE_TIMEOUT - 1)
    assert not transport.disconnecting
    timed.clock.advance(2)
    assert transport.disconnecting and not aborted(transport)
    assert timed.slow_clients("headers") == 0


def test_the_next_request_on_a_keep_alive_connection_is_timed_from_its_first_byte(timed):
    protocol, transport = timed.connect()
    protocol.dataReceived(raw_request(b"GET", b"/things/a"))
    transport.clear()
    timed.clock.advance(HEADER_TIMEOUT * 3)  # idle, not slow
    assert not transport.disconnecting
    protocol.dataReceived(b"GET /things/b HT")
    timed.clock.advance(HEADER_TIMEOUT - 0.1)
    protocol.dataReceived(b"TP/1.1\r\n")
    assert not transport.disconnecting
    timed.clock.advance(0.2)
    assert aborted(transport)
    assert transport.value() == b""


def test_a_keep_alive_client_that_is_prompt_each_time_is_never_cut_off(timed):
    protocol, transport = timed.connect()
    for thing in (b"a", b"b", b"c"):
        transport.clear()
        protocol.dataReceived(raw_request(b"GET", b"/things/" + thing))
        assert parse_reply(transport.value()).json() == {"thing": thing.decode()}
        timed.clock.advance(HEADER_TIMEOUT * 2)
    assert not transport.disconnecting


def test_a_request_pipelined_behind_a_slow_answer_is_timed_once_it_is_read(timed):
    """Bytes buffered while the node still answers the previous request are not the client's delay."""
    protocol, transport = timed.connect()
    protocol.dataReceived(raw_request(b"GET", b"/slow") + raw_request(b"GET", b"/things/z"))
    timed.clock.advance(HEADER_TIMEOUT * 3)
    assert not transport.disconnecting
    timed.app.pending.pop().callback(Reply(200, {"slow": True}))
    replies = transport.value()
    assert b'{"slow": true}' in replies and b'{"thing": "z"}' in replies
    assert not transport.disconnecting


def test_the_body_has_its_own_deadline_once_the_head_is_in(timed):
    protocol, transport = timed.connect()
    protocol.dataReceived(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    timed.clock.advance(HEADER_TIMEOUT * 2)
    assert not transport.disconnecting
    timed.clock.advance(10)
    assert aborted(transport)
    assert timed.slow_clients("body") == 1
    assert timed.slow_clients("headers") == 0
