"""Tests for logplex.http.routing: the Dispatcher, replies, read_json and JSON errors, driven in memory."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from logplex.http.routing import STREAMING, Dispatcher, HttpError, Reply, read_json, route
from logplex.http.site import LogplexSite
from tests.helpers import captured_log, connect, http_exchange, make_site_reactor, parse_reply, raw_request

MAX_BODY = 64


class Conflict(Exception):
    """An application error the error_map turns into an answer."""


class LateCrash(Exception):
    """A handler failing after its client has gone."""


class App:
    """Handlers that exercise each path of the Dispatcher; slow ones wait on ``pending``."""

    def __init__(self) -> None:
        self.clock = task.Clock()
        self.pending: list[defer.Deferred] = []
        self.requests: list = []
        self.site = LogplexSite(
            Dispatcher(
                [
                    route("GET", "/things/([a-z0-9]+)", self.get_thing),
                    route("DELETE", "/things/([a-z0-9]+)", self.get_thing),
                    route("GET", "/things/([a-z0-9]+)/parts/([0-9]+)", self.get_part),
                    route("GET", "/http-error", self.http_error),
                    route("GET", "/boom", self.boom),
                    route("GET", "/conflict", self.conflict),
                    route("GET", "/stream", self.stream),
                    route("GET", "/slow", self.slow),
                    route("GET", "/later", self.later),
                    route("POST", "/body", self.body),
                    route("POST", "/json", self.json),
                    route("POST", "/json-small", self.json_small),
                    route("GET", "/unserializable", self.unserializable),
                ],
                error_map=lambda e: Reply(409, {"error": "It conflicts."}) if isinstance(e, Conflict) else None,
            ),
            max_body=MAX_BODY,
            reactor=make_site_reactor(),
        )

    async def get_thing(self, request, thing):
        return Reply(200, {"thing": thing})

    async def get_part(self, request, thing, part):
        return Reply(200, {"thing": thing, "part": part})

    async def http_error(self, request):
        raise HttpError(418, "The pot is a teapot; use the kettle.", {b"x-brew": b"tea"})

    async def boom(self, request):
        raise RuntimeError("secret internal detail")

    async def conflict(self, request):
        raise Conflict()

    async def stream(self, request):
        self.requests.append(request)
        request.setHeader(b"content-type", b"text/plain")
        request.write(b"first line\n")
        return STREAMING

    async def slow(self, request):
        d = defer.Deferred()
        self.pending.append(d)
        return await d

    async def later(self, request):
        return await task.deferLater(self.clock, 5.0, lambda: Reply(200, {"waited": 5}))

    async def body(self, request):
        return Reply(200, {"too_large": request.body_too_large, "stored": len(request.content.read())})

    async def json(self, request):
        return Reply(200, {"got": read_json(request)})

    async def json_small(self, request):
        return Reply(200, {"got": read_json(request, max_bytes=8)})

    async def unserializable(self, request):
        return Reply(200, {"set": {1, 2}})

    def get(self, path: bytes, method: bytes = b"GET", headers=None, body: bytes = b"", chunks=None):
        return http_exchange(self.site, raw_request(method, path, headers, body, chunks))


@pytest.fixture
def app() -> App:
    return App()


def test_a_route_gets_its_groups(app):
    reply = app.get(b"/things/abc")
    assert reply.status == 200
    assert reply.header(b"content-type") == b"application/json"
    assert reply.json() == {"thing": "abc"}
    assert app.get(b"/things/abc/parts/7").json() == {"thing": "abc", "part": "7"}


def test_percent_escapes_in_a_path_are_decoded_before_matching(app):
    assert app.get(b"/things/%61bc").json() == {"thing": "abc"}
    assert app.get(b"/things/abc/parts/%37").json() == {"thing": "abc", "part": "7"}


def test_an_escaped_slash_never_splits_a_segment(app):
    # /things/abc%2Fparts%2F7 is one segment, not /things/abc/parts/7.
    reply = app.get(b"/things/abc%2Fparts%2F7")
    assert reply.status == 404


@pytest.mark.parametrize("path", [b"/nothing", b"/things/", b"/things/ABC", b"/things/abc/extra", b"/"])
def test_an_unknown_path_is_a_json_404(app, path):
    reply = app.get(path)
    assert reply.status == 404
    assert "There is nothing at" in reply.json()["error"]


def test_a_known_path_with_another_method_is_405_with_allow(app):
    reply = app.get(b"/things/abc", method=b"PUT", body=b"{}")
    assert reply.status == 405
    assert reply.header(b"allow") == b"DELETE, GET"
    assert "PUT" in reply.json()["error"]
    assert app.get(b"/body", method=b"GET").header(b"allow") == b"POST"


def test_head_is_served_by_the_get_route_without_a_body(app):
    protocol, transport = connect(app.site)
    protocol.dataReceived(raw_request(b"HEAD", b"/things/abc"))
    data = transport.value()
    reply = parse_reply(data, head=True)
    assert reply.status == 200
    assert int(reply.header(b"content-length")) == len(b'{"thing": "abc"}')
    assert data.endswith(b"\r\n\r\n")


def test_http_error_becomes_json_with_its_status_and_headers(app):
    reply = app.get(b"/http-error")
    assert reply.status == 418
    assert reply.json() == {"error": "The pot is a teapot; use the kettle."}
    assert reply.header(b"x-brew") == b"tea"


def test_error_map_turns_an_application_error_into_its_answer(app):
    reply = app.get(b"/conflict")
    assert reply.status == 409
    assert reply.json() == {"error": "It conflicts."}


def test_an_unexpected_exception_is_a_logged_500_without_a_traceback(app):
    with captured_log() as events:
        reply = app.get(b"/boom")
    assert reply.status == 500
    assert set(reply.json()) == {"error"}
    assert b"secret internal detail" not in reply.body
    assert b"Traceback" not in reply.body
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["path"] == b"/boom"


def test_a_streaming_handler_keeps_the_request_open(app):
    protocol, transport = connect(app.site)
    protocol.dataReceived(raw_request(b"GET", b"/stream"))
    reply = parse_reply(transport.value())
    assert reply.status == 200
    assert reply.body == b"first line\n"
    assert not reply.complete
    assert not transport.disconnecting
    request = app.requests[0]
    request.write(b"second line\n")
    request.finish()
    reply = parse_reply(transport.value())
    assert reply.complete
    assert reply.body == b"first line\nsecond line\n"


def test_an_async_handler_answers_when_its_clock_moves(app):
    protocol, transport = connect(app.site)
    protocol.dataReceived(raw_request(b"GET", b"/later"))
    assert transport.value() == b""
    app.clock.advance(5)
    assert parse_reply(transport.value()).json() == {"waited": 5}


@pytest.mark.parametrize("outcome", ["reply", "http-error", "crash"])
def test_a_client_leaving_before_the_handler_finishes_is_no_error(app, outcome):
    protocol, transport = connect(app.site)
    protocol.dataReceived(raw_request(b"GET", b"/slow"))
    assert transport.value() == b""
    protocol.connectionLost(Failure(ConnectionDone()))
    with captured_log() as events:
        pending = app.pending.pop()
        if outcome == "reply":
            pending.callback(Reply(200, {"late": True}))
        elif outcome == "http-error":
            pending.errback(HttpError(400, "Too late."))
        else:
            pending.errback(LateCrash())
    assert transport.value() == b""
    # Writing to the gone request would log a RuntimeError from twisted.web.
    assert [e for e in events if "log_failure" in e and not e["log_failure"].check(LateCrash)] == []


def test_a_reply_that_cannot_be_written_is_a_500(app):
    with captured_log():
        protocol, transport = connect(app.site)
        protocol.dataReceived(raw_request(b"GET", b"/unserializable"))
    assert transport.value(), "the client got no answer at all"
    assert parse_reply(transport.value()).status == 500


# --- read_json -----------------------------------------------------------


def test_read_json(app):
    assert app.get(b"/json", method=b"POST", body=b'{"a": [1, 2]}').json() == {"got": {"a": [1, 2]}}
    assert app.get(b"/json", method=b"POST", body=b"").json() == {"got": {}}
    assert app.get(b"/json", method=b"POST", body=b"  \n").json() == {"got": {}}


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b'{"a": 1} trailing'])
def test_read_json_invalid_is_400(app, body):
    reply = app.get(b"/json", method=b"POST", body=body)
    assert reply.status == 400
    assert reply.json()["error"].startswith("The body is not valid JSON")


def test_read_json_too_large_is_413(app):
    over_site_limit = app.get(b"/json", method=b"POST", body=b'{"a": "%s"}' % (b"x" * MAX_BODY))
    assert over_site_limit.status == 413
    over_handler_limit = app.get(b"/json-small", method=b"POST", body=b'{"a": "123456"}')
    assert over_handler_limit.status == 413
    assert app.get(b"/json-small", method=b"POST", body=b'{"a": 1}').json() == {"got": {"a": 1}}
