"""logplex.drains.httpclient: an answer's body kept to its bound, and a host's connections shared by its drains.

In memory, with a Clock and StringTransports, as in test_drains_http.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool, ResponseDone

from logplex.drains.http import HttpDrainTransport
from logplex.drains.httpclient import ANSWER_BYTES, DrainAgent, DrainHttpClient, _FirstBytes
from logplex.model import Drain
from tests.drain_doubles import LINE, TIMEOUT, Connection, Wire


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
