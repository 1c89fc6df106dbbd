"""HTTP drains against endpoints that answer anything: in memory, with a Clock and StringTransports.

The drain's real Agent, pool and connection bound run here; only the
sockets are StringTransports, which the tests read the requests from and
write the endpoint's answers into.
"""

from __future__ import annotations

import gzip

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool, ResponseDone
from zope.interface import implementer
from twisted.web.iweb import IAgentEndpointFactory

from logplex.drains.http import ANSWER_WIRE_BYTES, HttpDrainTransport, _BoundedEndpoint, load_trust_root
from logplex.drains.httpclient import ANSWER_BYTES, DrainAgent, DrainHttpClient, _FirstBytes
from logplex.model import Drain

LINE = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - hello"
TIMEOUT = 5.0


class Connection:
    """One connection the drain made: what it wrote, and a way to answer."""

    def __init__(self, protocol, transport: StringTransport) -> None:
        self.protocol = protocol  # the connection bound, with HTTP under it
        self.transport = transport
        self.lost = False

    def written(self) -> bytes:
        return self.transport.value()

    def headers(self) -> dict[bytes, bytes]:
        head = self.written().split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        return {name.lower(): value.strip() for name, _, value in (h.partition(b":") for h in head)}

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.settle()

    def settle(self) -> None:
        """What the reactor would do after a read: a connection the drain dropped is lost."""
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionAborted()))

    def close(self) -> None:
        self.lost = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


@implementer(IAgentEndpointFactory)
class Wire:
    """Endpoints whose every connection is a StringTransport, bounded as the node's are."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def endpointForURI(self, uri):
        return _BoundedEndpoint(self, ANSWER_WIRE_BYTES)

    def connect(self, factory) -> defer.Deferred:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append(Connection(protocol, transport))
        return defer.succeed(protocol)


class HttpDrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        pool = HTTPConnectionPool(self.clock, persistent=True)
        pool.retryAutomatically = False
        self.client = DrainHttpClient(DrainAgent.usingEndpointFactory(self.clock, self.wire, pool=pool), self.clock)
        self.drain = self.transport_for(1, "http://drains.example.com/logs")

    def transport_for(self, drain_id: int, url: str) -> HttpDrainTransport:
        return HttpDrainTransport(Drain(drain_id, "app", f"d.tok{drain_id}", url), self.client, self.clock,
                                  timeout=TIMEOUT)

    def send(self, transport: HttpDrainTransport | None = None) -> defer.Deferred:
        return (transport or self.drain).send([LINE], "frame-1")

    # -- what is sent --------------------------------------------------------------------------
    def test_a_2xx_is_delivered_and_the_connection_kept(self):
        d = self.send()
        [connection] = self.wire.connections
        headers = connection.headers()
        self.assertEqual(headers[b"accept-encoding"], b"identity")
        self.assertNotIn(b"cookie", headers)
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertTrue(self.successResultOf(d).delivered)
        self.assertFalse(connection.transport.disconnecting)
        self.send()
        self.assertEqual(len(self.wire.connections), 1, "a good connection was not reused")

    def test_the_request_on_the_wire_is_whole_for_every_batch_of_a_drain(self):
        # The URL is parsed and the drain's headers encoded once, when it starts:
        # every batch still goes out with all of them, and its own count and frame id.
        drain = self.transport_for(3, "http://user:pa%20ss@drains.example.com:8080/logs/3?x=1")
        for n, frame_id in ((1, "frame-a"), (2, "frame-b")):
            d = drain.send([LINE] * n, frame_id)
            connection = self.wire.connections[-1]
            request_line = connection.written().split(b"\r\n", 1)[0]
            self.assertEqual(request_line, b"POST /logs/3?x=1 HTTP/1.1")
            headers = connection.headers()
            self.assertEqual(headers[b"host"], b"drains.example.com:8080")
            self.assertEqual(headers[b"logplex-msg-count"], b"%d" % n)
            self.assertEqual(headers[b"logplex-frame-id"], frame_id.encode())
            self.assertEqual(headers[b"logplex-drain-token"], b"d.tok3")
            self.assertEqual(headers[b"authorization"], b"Basic dXNlcjpwYSBzcw==")
            self.assertEqual(headers[b"content-type"], b"application/logplex-1")
            body = connection.written().split(b"\r\n\r\n", 1)[1]
            self.assertEqual(int(headers[b"content-length"]), len(body))
            self.assertEqual(body.count(b" hello\n"), n)
            connection.transport.clear()
            connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
            self.assertTrue(self.successResultOf(d).delivered)
        self.assertEqual(len(self.wire.connections), 1)

    def test_a_cookie_set_by_one_endpoint_is_never_sent(self):
        other = self.transport_for(2, "http://drains.example.com/other")
        d = self.send(other)
        self.wire.connections[0].answer(
            b"HTTP/1.1 204 No Content\r\nSet-Cookie: session=tenant-b; Path=/\r\n\r\n")
        self.assertTrue(self.successResultOf(d).delivered)
        self.wire.connections[0].transport.clear()
        self.send()
        [connection] = self.wire.connections  # the same connection, reused
        self.assertIn(b"logplex-frame-id", connection.headers())
        self.assertNotIn(b"cookie", connection.headers())

    # -- what is read of the answer ------------------------------------------------------------
    def test_a_long_body_is_cut_and_its_connection_dropped(self):
        d = self.send()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        connection.answer(b"x" * 60_000)
        self.assertTrue(self.successResultOf(d).delivered)
        self.assertTrue(connection.transport.disconnected, "the rest of the body would be read")
        self.send()
        self.assertEqual(len(self.wire.connections), 2, "a connection with a body unread was reused")

    def test_a_gzip_body_is_not_inflated(self):
        d = self.send()
        body = gzip.compress(b"the receiver is down " * 100)
        self.wire.connections[0].answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Encoding: gzip\r\n"
                                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.retry)
        self.assertEqual(outcome.error, "HTTP 503 from the drain endpoint")

    def test_an_error_body_is_quoted_in_last_error_on_one_line(self):
        d = self.send()
        body = b"unknown drain token\r\n\x1b[31mrejected\x00" + b"." * 5000
        self.wire.connections[0].answer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                                        % (len(body), body))
        outcome = self.successResultOf(d)
        self.assertFalse(outcome.retry)
        self.assertTrue(outcome.error.startswith(
            "HTTP 400 from the drain endpoint: unknown drain token [31mrejected ...."), outcome.error)
        self.assertLess(len(outcome.error), 300)
        self.assertTrue(outcome.error.isprintable())

    def test_a_redirect_is_a_failed_delivery_and_not_followed(self):
        d = self.send()
        self.wire.connections[0].answer(
            b"HTTP/1.1 303 See Other\r\nLocation: http://169.254.169.254/latest\r\nContent-Length: 0\r\n\r\n")
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.retry)
        self.assertEqual(outcome.error, "HTTP 303 from the drain endpoint: redirects are not followed; point "
                                        "the drain at the URL it redirects to (http://169.254.169.254/latest)")
        self.assertEqual(len(self.wire.connections), 1)
        self.assertEqual(self.wire.connections[0].written().count(b"HTTP/1.1\r\n"), 1)

    def test_an_endless_header_section_is_cut(self):
        d = self.send()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\n")
        for _ in range(ANSWER_WIRE_BYTES // 1000 + 1):
            if connection.lost:
                break
            connection.answer(b"X-Junk: " + b"a" * 990 + b"\r\n")
        self.assertTrue(connection.transport.disconnected)
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.retry)
        self.assertIn("an answer of more than 64 KiB", outcome.error)

    # -- time ----------------------------------------------------------------------------------
    def test_the_timeout_bounds_a_silent_endpoint(self):
        d = self.send()
        self.clock.advance(TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        outcome = self.successResultOf(d)
        self.assertEqual((outcome.retry, outcome.error), (True, "no answer within 5 s"))
        self.assertTrue(self.wire.connections[0].transport.disconnected)

    def test_the_timeout_bounds_a_trickled_body(self):
        d = self.send()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(int(TIMEOUT) - 1):
            connection.answer(b".")
            self.clock.advance(1)
        self.assertNoResult(d)
        self.clock.advance(1)
        outcome = self.successResultOf(d)
        self.assertEqual((outcome.retry, outcome.error),
                         (True, "HTTP 200, then a body that did not end within 5 s"))
        self.assertTrue(connection.transport.disconnected)
        connection.settle()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_answer_in_time_cancels_the_timer(self):
        d = self.send()
        self.wire.connections[0].answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        self.assertFalse([c for c in self.clock.getDelayedCalls() if c.getTime() == TIMEOUT])

    def test_stop_ends_a_pending_send(self):
        d = self.send()
        self.drain.stop()
        self.assertEqual(self.successResultOf(d).error, "stopped")
        self.assertTrue(self.wire.connections[0].transport.disconnected)


class BodyStub:
    """The transport a response body's reader is given: it only records being stopped."""

    def __init__(self) -> None:
        self.stopped = 0

    def stopProducing(self) -> None:
        self.stopped += 1


@given(body=st.binary(max_size=3 * ANSWER_BYTES), cuts=st.lists(st.integers(0, 3 * ANSWER_BYTES)))
def test_a_body_is_kept_to_the_limit_however_it_arrives(body, cuts):
    results = []
    reader = _FirstBytes(ANSWER_BYTES, results.append)
    stub = BodyStub()
    reader.makeConnection(stub)
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    for start, end in zip(edges, edges[1:]):
        reader.dataReceived(body[start:end])
    reader.connectionLost(Failure(ResponseDone()))
    [(kept, cut)] = results  # told once, however the body ended
    assert kept == body[:ANSWER_BYTES]
    assert cut == (len(body) > ANSWER_BYTES)
    assert stub.stopped == (1 if cut else 0)


def test_a_ca_file_without_certificates_is_refused(tmp_path):
    path = tmp_path / "empty.pem"
    path.write_text("not a certificate\n")
    try:
        load_trust_root(str(path))
    except ValueError as e:
        assert f"--drain-ca-file {path} holds no PEM certificate" in str(e)
    else:
        raise AssertionError("a CA file with no certificate was accepted")


class HostConnectionTests(SynchronousTestCase):
    """The drains of one host share at most `per_host` connections, each kept; the rest wait their turn."""

    PER_HOST = 2

    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        pool = HTTPConnectionPool(self.clock, persistent=True)
        pool.retryAutomatically = False
        pool.maxPersistentPerHost = self.PER_HOST
        agent = DrainAgent.usingEndpointFactory(self.clock, self.wire, pool=pool)
        self.client = DrainHttpClient(agent, self.clock, per_host=self.PER_HOST)

    def drains(self, n: int, host: str = "drains.example.com") -> list[HttpDrainTransport]:
        return [HttpDrainTransport(Drain(i, "app", f"d.tok{i}", f"http://{host}/logs/{i}"), self.client,
                                   self.clock, timeout=TIMEOUT) for i in range(n)]

    def answer(self, connection: Connection) -> None:
        connection.transport.clear()
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_five_drains_of_one_host_use_two_connections_and_every_batch_gets_through(self):
        sends = [drain.send([LINE], f"frame-{i}") for i, drain in enumerate(self.drains(5))]
        self.assertEqual(len(self.wire.connections), 2)
        for _ in range(3):
            for connection in self.wire.connections:
                if connection.written():
                    self.answer(connection)
        self.assertTrue(all(self.successResultOf(d).delivered for d in sends))
        self.assertEqual(len(self.wire.connections), 2, "a connection was not reused")
        self.assertEqual(self.client.queued((b"http", b"drains.example.com", 80)), 0)

    def test_a_waiting_post_goes_out_in_arrival_order_and_its_timeout_starts_then(self):
        drains = self.drains(3)
        first, second = drains[0].send([LINE], "frame-0"), drains[1].send([LINE], "frame-1")
        self.clock.advance(TIMEOUT - 1)
        third = drains[2].send([LINE], "frame-2")
        self.assertEqual(self.client.queued((b"http", b"drains.example.com", 80)), 1)
        self.answer(self.wire.connections[0])
        self.successResultOf(first)
        # Its connection was handed on: the third POST is on it now, with its own whole timeout.
        self.assertIn(b"frame-2", self.wire.connections[0].written())
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(second).error, "no answer within 5 s")
        self.clock.advance(TIMEOUT - 1.5)
        self.assertNoResult(third)
        self.answer(self.wire.connections[0])
        self.assertTrue(self.successResultOf(third).delivered)

    def test_a_drain_stopped_while_its_post_waits_frees_its_place(self):
        drains = self.drains(3)
        sends = [drain.send([LINE], f"frame-{i}") for i, drain in enumerate(drains)]
        drains[2].stop()
        self.assertEqual(self.successResultOf(sends[2]).error, "stopped")
        self.answer(self.wire.connections[0])
        self.answer(self.wire.connections[1])
        self.assertEqual(len(self.wire.connections), 2)
        self.assertFalse(any(b"frame-2" in c.written() for c in self.wire.connections))
        self.assertEqual(self.client.queued((b"http", b"drains.example.com", 80)), 0)

    def test_when_a_host_answers_nothing_for_a_second_waiting_drains_get_connections_of_their_own(self):
        # Two hung drains of a host must not hold up its other drains for the whole timeout.
        drains = self.drains(4)
        sends = [drain.send([LINE], f"frame-{i}") for i, drain in enumerate(drains)]
        self.assertEqual(len(self.wire.connections), 2)
        self.clock.advance(0.9)
        self.assertEqual(len(self.wire.connections), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.wire.connections), 4)
        for connection in self.wire.connections[2:]:
            self.answer(connection)
        self.assertTrue(self.successResultOf(sends[2]).delivered)
        self.assertTrue(self.successResultOf(sends[3]).delivered)
        self.assertNoResult(sends[0])
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.successResultOf(sends[0]).error, "no answer within 5 s")
        # Only the pool's idle timers of the kept connections are left: no stall check.
        self.assertEqual({c.func.__name__ for c in self.clock.getDelayedCalls()}, {"_removeConnection"})

    def test_other_hosts_do_not_wait_for_a_busy_one(self):
        for i, drain in enumerate(self.drains(4, "busy.example.com")):
            drain.send([LINE], f"busy-{i}")
        other = self.drains(1, "quiet.example.com")[0].send([LINE], "quiet-0")
        self.assertEqual(len(self.wire.connections), 3)
        self.answer(self.wire.connections[2])
        self.assertTrue(self.successResultOf(other).delivered)
