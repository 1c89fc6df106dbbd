"""logplex.drains.httpclient: a host's connections shared by its drains, and a connection's life.

In memory, with a Clock and StringTransports, as in test_drains_http.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from logplex.drains.http import HttpDrainTransport
from logplex.drains.http1 import MalformedAnswer
from logplex.drains.httpclient import (
    IDLE_TIMEOUT, ClosedBeforeAnswer, DrainConnections, DrainHttpClient, DrainTarget, ExchangeTimeout,
)
from logplex.model import Drain
from tests.drain_doubles import LINE, TIMEOUT, Connection, Wire


class HostConnectionTests(SynchronousTestCase):
    """The drains of one host share at most `per_host` connections, each kept; the rest wait their turn."""

    PER_HOST = 2

    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        connections = DrainConnections(self.wire, self.clock, kept=self.PER_HOST)
        self.client = DrainHttpClient(connections, self.clock, per_host=self.PER_HOST)

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
        # Only the idle connections' sweep is left: no stall check.
        self.assertEqual({c.func.__name__ for c in self.clock.getDelayedCalls()}, {"_sweep"})

    def test_other_hosts_do_not_wait_for_a_busy_one(self):
        for i, drain in enumerate(self.drains(4, "busy.example.com")):
            drain.send([LINE], f"busy-{i}")
        other = self.drains(1, "quiet.example.com")[0].send([LINE], "quiet-0")
        self.assertEqual(len(self.wire.connections), 3)
        self.answer(self.wire.connections[2])
        self.assertTrue(self.successResultOf(other).delivered)


class CountingWrites(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class ConnectionTests(SynchronousTestCase):
    """One DrainConnection's life: a request written whole, its answer read, then kept or dropped."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.wire = Wire()
        self.connections = DrainConnections(self.wire, self.clock)
        self.client = DrainHttpClient(self.connections, self.clock)
        self.target = DrainTarget.of(b"http://drains.example.com/logs?x=1",
                                     {b"Logplex-Drain-Token": [b"d.tok\r\nEvil: 1"]})

    def post(self, frame_id: str = "frame-1", body: bytes = b"12 <13>1 x - -") -> defer.Deferred:
        return self.client.post(self.target, self.target.request(body, 1, frame_id), TIMEOUT)

    def idle(self) -> int:
        return self.connections.idle(self.target.key)

    def test_the_request_is_one_write_of_head_and_body(self):
        transport = CountingWrites()
        self.wire.transport = lambda: transport
        self.post()
        self.assertEqual(transport.writes, 1)
        self.assertEqual(transport.value(), (
            b"POST /logs?x=1 HTTP/1.1\r\nHost: drains.example.com\r\nLogplex-Drain-Token: d.tok  Evil: 1\r\n"
            b"Content-Length: 14\r\nLogplex-Msg-Count: 1\r\nLogplex-Frame-Id: frame-1\r\n\r\n12 <13>1 x - -"))

    def test_a_whole_answer_keeps_the_connection_for_the_next_post(self):
        d = self.post()
        [connection] = self.wire.connections
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.body, answer.cut), (200, b"ok", False))
        self.assertEqual(self.idle(), 1)
        connection.transport.clear()
        d = self.post("frame-2")
        self.assertEqual(self.idle(), 0)
        self.assertIn(b"frame-2", connection.transport.value())
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 204)
        self.assertEqual(len(self.wire.connections), 1)

    def test_a_cut_body_drops_the_connection(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 500 Oops\r\nContent-Length: 9999\r\n\r\n" + b"e" * 5000)
        self.assertTrue(self.successResultOf(d).cut)
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual(self.idle(), 0)

    def test_bytes_after_the_answer_drop_the_connection(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 204)
        self.assertTrue(connection.transport.disconnected)
        self.post("frame-2")
        self.assertEqual(len(self.wire.connections), 2)

    def test_bytes_while_idle_drop_the_connection(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")  # an answer to nothing
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual(self.idle(), 0)

    def test_an_idle_connection_the_endpoint_closed_is_not_used(self):
        d = self.post()
        self.wire.connections[0].answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        self.wire.connections[0].close()
        self.assertEqual(self.idle(), 0)
        self.post("frame-2")
        self.assertEqual(len(self.wire.connections), 2)

    def test_a_kept_connection_closed_before_the_answer_fails_the_post_without_retry(self):
        d = self.post()
        self.wire.connections[0].answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        d = self.post("frame-2")
        self.wire.connections[0].close()  # the endpoint's close crossed the request
        failure = self.failureResultOf(d, ClosedBeforeAnswer)
        self.assertIn("closed the connection before answering", failure.getErrorMessage())
        self.assertEqual(len(self.wire.connections), 1, "the POST was sent again")

    def test_a_malformed_answer_fails_the_post_and_drops_the_connection(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        self.failureResultOf(d, MalformedAnswer)
        self.assertTrue(connection.transport.disconnected)
        self.assertEqual(self.idle(), 0)

    def test_a_body_to_the_close_is_an_answer_and_the_connection_is_not_kept(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.0 503 Busy\r\n\r\nnot now")
        self.assertNoResult(d)
        connection.close()
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.body, answer.cut), (503, b"not now", False))
        self.assertEqual(self.idle(), 0)

    def test_the_timeout_drops_the_connection_and_names_the_phase(self):
        d = self.post()
        connection = self.wire.connections[0]
        connection.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n.\r\n")
        self.clock.advance(TIMEOUT)
        failure = self.failureResultOf(d, ExchangeTimeout)
        self.assertEqual(failure.getErrorMessage(), "HTTP 200, then a body that did not end within 5 s")
        self.assertTrue(connection.transport.disconnected)
        connection.answer(b"0\r\n\r\n")  # late: thrown away
        self.assertEqual(self.idle(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_drops_the_connection_and_the_timer(self):
        d = self.post()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        connection = self.wire.connections[0]
        self.assertTrue(connection.transport.disconnected)
        connection.settle()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelling_while_connecting_cancels_the_connect(self):
        cancelled = []
        self.wire.connect = lambda factory: defer.Deferred(cancelled.append)
        d = self.post()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failed_connect_fails_the_post(self):
        self.wire.connect = lambda factory: defer.fail(ConnectionRefusedError("refused"))
        self.failureResultOf(self.post(), ConnectionRefusedError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_connections_close_after_the_idle_timeout_on_one_timer(self):
        sends = [self.post(f"frame-{i}") for i in range(3)]
        for connection in self.wire.connections:
            connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        [self.successResultOf(d) for d in sends]
        self.assertEqual(self.idle(), 3)
        self.clock.advance(60)
        d = self.post("frame-3")  # takes the last kept; answered, it is fresh again
        self.wire.connections[2].answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(IDLE_TIMEOUT - 60)
        self.assertEqual(self.idle(), 1)
        self.assertEqual([c.transport.disconnected for c in self.wire.connections], [True, True, False])
        self.clock.advance(60)
        self.assertEqual(self.idle(), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_more_than_kept_connections_idle_per_host(self):
        connections = DrainConnections(self.wire, self.clock, kept=2)
        client = DrainHttpClient(connections, self.clock)
        sends = [client.post(self.target, self.target.request(b"", 0, f"f{i}"), TIMEOUT) for i in range(3)]
        for connection in self.wire.connections:
            connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        [self.successResultOf(d) for d in sends]
        self.assertEqual(connections.idle(self.target.key), 2)
        self.assertEqual([c.transport.disconnected for c in self.wire.connections], [True, False, False])


class GateOrderTests(SynchronousTestCase):
    def test_a_drain_callback_that_waits_does_not_hold_its_hosts_connection(self):
        # A POST that waited for the gate has the drain's callbacks before the
        # gate's bookkeeping; one of them waiting (a spool ack) must not keep
        # the next POST of the host waiting for the stall check.
        clock, wire = Clock(), Wire()
        client = DrainHttpClient(DrainConnections(wire, clock, kept=1), clock, per_host=1)
        target = DrainTarget.of(b"http://drains.example.com/logs", {})
        first = client.post(target, target.request(b"", 0, "f1"), TIMEOUT)
        second = client.post(target, target.request(b"", 0, "f2"), TIMEOUT)
        second.addCallback(lambda _: defer.Deferred())  # never fires
        third = client.post(target, target.request(b"", 0, "f3"), TIMEOUT)
        [connection] = wire.connections
        for frame in (b"f2", b"f3"):
            connection.transport.clear()
            connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
            self.assertIn(frame, connection.transport.value())
        connection.answer(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(first)
        self.assertEqual(self.successResultOf(third).code, 204)
        self.assertEqual(client.queued(target.key), 0)
