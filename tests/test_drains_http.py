"""HTTP drains against endpoints that answer anything: in memory, with a Clock and StringTransports.

The drain's real client, connections and answer parser run here; only the
sockets are StringTransports, which the tests read the requests from and
write the endpoint's answers into.
"""

from __future__ import annotations

import gzip

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from logplex.drains.http import HttpDrainTransport, load_trust_root
from logplex.drains.http1 import ANSWER_WIRE_BYTES
from logplex.drains.httpclient import DrainConnections, DrainHttpClient
from logplex.model import Drain
from tests.drain_doubles import LINE, TIMEOUT, Wire




class HttpDrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        self.client = DrainHttpClient(DrainConnections(self.wire, self.clock), self.clock)
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

    def test_a_malformed_answer_is_a_failed_delivery_that_says_so(self):
        d = self.send()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
        outcome = self.successResultOf(d)
        self.assertTrue(outcome.retry)
        self.assertEqual(outcome.error, "an answer that is not HTTP/1.1 (a bad or conflicting Content-Length: "
                                        "b'2, 3'): the connection was dropped")
        self.assertTrue(connection.transport.disconnected)

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


def test_a_ca_file_without_certificates_is_refused(tmp_path):
    path = tmp_path / "empty.pem"
    path.write_text("not a certificate\n")
    try:
        load_trust_root(str(path))
    except ValueError as e:
        assert f"--drain-ca-file {path} holds no PEM certificate" in str(e)
    else:
        raise AssertionError("a CA file with no certificate was accepted")
