"""Pushback: a drain that keeps up only slowly holds its senders back instead of spooling.

On a Clock, with a transport double whose answers the test gives: the worker
says when it holds senders and when it lets them go; the supervisor turns that
into one Deferred per read; the TCP and HTTP inputs wait for it.
"""

from __future__ import annotations

import base64

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from logplex.drains.policy import Backoff, Outcome
from logplex.drains.supervisor import DrainSettings, DrainSupervisor
from logplex.drains.worker import DrainWorker
from logplex.framing import encode_logplex1, octet_frame
from logplex.ingest.http import LogInput
from logplex.ingest.syslog import SyslogFactory
from logplex.metrics import Metrics
from logplex.model import Drain
from logplex.config.cache import ConfigCache
from logplex.redis.keys import RedisKeys
from logplex.router import Router
from logplex.settings import ListenSettings
from logplex.http.site import LogplexSite
from tests.helpers import (
    LoadedStore,
    RecordingBacklog,
    RecordingTails,
    connect,
    fill_cache,
    make_site_reactor,
    parse_reply,
    raw_request,
)
from tests.drain_doubles import MemorySpool, msg

DRAIN = Drain(7, "app", "d.tok", "https://logs.example.com/")
PUSHBACK = 0.1


class SlowEndpoint:
    """A transport double that answers only when the test says so."""

    def __init__(self):
        self.pending: list[tuple[list[bytes], defer.Deferred]] = []
        self.delivered: list[bytes] = []

    def send(self, messages, frame_id):
        d = defer.Deferred()
        self.pending.append((list(messages), d))
        return d

    def answer(self, outcome=None):
        messages, d = self.pending.pop(0)
        outcome = outcome or Outcome.ok()
        if outcome.delivered:
            self.delivered.extend(messages)
        d.callback(outcome)

    def stop(self):
        return defer.succeed(None)


def make_worker(pushback=PUSHBACK, capacity=100, spool=None, clock=None, max_bytes=None):
    clock = clock if clock is not None else Clock()
    endpoint = SlowEndpoint()
    spool = spool if spool is not None else MemorySpool()
    worker = DrainWorker(DRAIN, endpoint, spool, clock, Metrics(), capacity=capacity,
                         target_bytes=4000, max_bytes=max_bytes, linger=0.25, pushback=pushback,
                         backoff=Backoff(initial=0.5, cap=30, rand=lambda: 0.5))
    worker.start()
    return worker, endpoint, spool, clock


def fill(worker, clock, n=150):
    """A batch in flight and more than the buffer waiting behind it."""
    worker.push([msg(i) for i in range(n)])
    clock.advance(0)


def test_a_full_buffer_behind_a_quick_endpoint_holds_senders_until_half_is_free():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    assert len(endpoint.pending) == 1  # one batch of about 68 lines in flight
    worker.push([msg(i) for i in range(100, 250)])
    assert worker.queue.overflow and worker.holding()
    held = worker.wait()
    assert worker.state()["holding_senders"] is True

    clock.advance(0.01)
    endpoint.answer()  # delivered in 10 ms: the node is behind, not the endpoint
    assert not held.called  # overflow went out, but the buffer is still full
    while not held.called:
        assert endpoint.pending, "the drain stopped sending while senders waited"
        clock.advance(0.01)
        endpoint.answer()
    assert len(worker.queue.memory) <= 50 and not worker.queue.overflow
    assert not worker.holding()
    # Nothing went to the spool: the memory path carried it all, in order.
    assert spool.chunks == []
    while endpoint.pending:
        endpoint.answer()
    clock.advance(1)
    while endpoint.pending:
        endpoint.answer()
    assert endpoint.delivered == [msg(i) for i in range(250)]


def test_senders_are_held_only_once_a_largest_batch_waits_behind_the_one_in_flight():
    # 100 lines (the buffer) are 6 KB; the drain's batches grow to 40 KB. A
    # full buffer alone held senders for every POST in flight, though the
    # next POST would have taken all of it: (b) in bench/peers.py held its
    # senders 0.4-2.4 s of every 15 at half load (p99 up to 20.9 ms).
    worker, endpoint, spool, clock = make_worker(max_bytes=40_000)
    fill(worker, clock, 100)
    assert len(endpoint.pending) == 1
    worker.push([msg(i) for i in range(100, 600)])
    assert worker.queue.overflow and worker.queue.pending_bytes < 40_000
    assert not worker.holding()
    # This read takes overflow past a spool chunk (a largest batch) at once: the
    # sender is held once it is routed, so it waits in memory, not in the spool.
    worker.push([msg(i) for i in range(600, 900)])
    assert worker.queue.overflow_bytes >= 40_000 and worker.holding()
    assert spool.chunks == []
    held = worker.wait()
    clock.advance(0.01)
    endpoint.answer()  # quick: the node is what is behind
    while not held.called:
        assert endpoint.pending, "the drain stopped sending while senders waited"
        clock.advance(0.01)
        endpoint.answer()
    # Let go once half a largest batch is left, with nothing sent through the spool.
    assert worker.queue.pending_bytes <= 20_000
    assert spool.chunks == []
    while endpoint.pending:
        endpoint.answer()
        clock.advance(1)
    assert endpoint.delivered == [msg(i) for i in range(900)]


def test_with_pushback_off_a_full_buffer_spools_and_holds_nobody():
    worker, endpoint, spool, clock = make_worker(pushback=0)
    fill(worker, clock, 100)
    worker.push([msg(i) for i in range(100, 400)])
    assert not worker.holding()
    assert spool.chunks  # the overflow past a chunk went to Redis at once


def test_while_held_the_overflow_waits_in_memory_up_to_four_chunks():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    worker.push([msg(i) for i in range(100, 200)])
    held = worker.wait()
    # A read the sender had in flight when it was held: more than one chunk
    # (4000 bytes, ~68 lines) but less than four stays in memory.
    worker.push([msg(i) for i in range(200, 350)])
    assert spool.chunks == []
    worker.push([msg(i) for i in range(350, 500)])
    assert spool.chunks  # past four chunks the spool bounds memory again
    assert not held.called


def test_a_failing_endpoint_lets_its_senders_go_at_once_and_spools():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    worker.push([msg(i) for i in range(100, 250)])
    held = worker.wait()
    endpoint.answer(Outcome.retry_later("HTTP 503 from the drain endpoint"))
    assert held.called
    assert not worker.holding()
    worker.push([msg(i) for i in range(250, 400)])
    assert not worker.holding()


def test_an_endpoint_slower_than_the_pushback_holds_nobody():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    worker.push([msg(i) for i in range(100, 250)])
    assert worker.holding()
    # The batch in flight is older than the pushback: the endpoint is slow.
    clock.advance(PUSHBACK)
    assert not worker.holding()
    # And once it answered that slowly, the next full buffer holds nobody either.
    endpoint.answer()
    worker.push([msg(i) for i in range(250, 400)])
    assert worker.queue.overflow and not worker.holding()


def test_a_stopped_drain_lets_its_senders_go():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    worker.push([msg(i) for i in range(100, 250)])
    held = worker.wait()
    worker.stop()
    assert held.called


# -- the supervisor: one Deferred per read ------------------------------------------------
class Store:
    def __init__(self, cache):
        self.cache = cache
        self.drain_listeners = []


class Backlogs:
    on_change: list = []

    def pool_for(self, channel_id):
        return None


def make_supervisor():
    clock = Clock()
    cache = ConfigCache()
    metrics = Metrics()
    supervisor = DrainSupervisor(Store(cache), Backlogs(), metrics, clock, "node-1",
                                 DrainSettings(pushback=PUSHBACK), http_client=None, keys=RedisKeys("lp", 0))
    worker, endpoint, _, _ = make_worker(clock=clock)
    supervisor.workers[DRAIN.id] = worker
    supervisor.by_channel[DRAIN.channel_id] = [worker]
    return supervisor, worker, endpoint, clock, metrics


def test_the_supervisor_holds_only_the_channels_whose_drains_are_full():
    supervisor, worker, endpoint, clock, metrics = make_supervisor()
    assert supervisor.hold(["app"]) is None
    supervisor.publish("app", [msg(i) for i in range(100)])
    clock.advance(0)
    supervisor.publish("app", [msg(i) for i in range(100, 250)])
    assert supervisor.hold(["other-channel"]) is None
    held = supervisor.hold(["app", "other-channel"])
    assert held is not None and not held.called
    clock.advance(0.01)
    while not held.called:
        endpoint.answer()
    assert metrics.get("logplex_senders_held_total") == 1
    assert metrics.get("logplex_senders_held_seconds_total") == 0.01


def test_a_hold_never_lasts_longer_than_the_pushback():
    supervisor, worker, endpoint, clock, metrics = make_supervisor()
    supervisor.publish("app", [msg(i) for i in range(100)])
    clock.advance(0)
    supervisor.publish("app", [msg(i) for i in range(100, 250)])
    held = supervisor.hold(["app"])
    clock.advance(PUSHBACK - 0.001)
    assert not held.called
    clock.advance(0.001)
    assert held.called
    # The sender stopped waiting: the drain no longer counts it as held.
    assert worker.state()["holding_senders"] is False
    # And the drain answering later does not fire it twice.
    endpoint.answer()


# -- the inputs wait -----------------------------------------------------------------------
TOKEN = "t.11111111-1111-4111-8111-111111111111"


def line(text: str, appname: str = TOKEN) -> bytes:
    return b"<13>1 2026-11-24T10:00:00+00:00 myhost %s web.1 - - %s" % (appname.encode(), text.encode())


def cooked(text: str) -> bytes:
    return line(text, appname="app")


class Holds:
    """The router's hold hook, in the test's hands: which channels asked, and the Deferred they got."""

    def __init__(self):
        self.asked: list[list[str]] = []
        self.hold: defer.Deferred | None = None

    def __call__(self, channel_ids):
        self.asked.append(list(channel_ids))
        return self.hold


def make_router():
    cache = ConfigCache()
    fill_cache(cache, "app-1", {"app": TOKEN})
    holds = Holds()
    router = Router(cache, RecordingBacklog(), RecordingTails(), Metrics(), hold=holds)
    return router, holds, cache


def test_a_held_syslog_connection_stops_reading_until_the_drain_has_room():
    router, holds, _ = make_router()
    factory = SyslogFactory(router, router.metrics, 1024)
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)

    protocol.dataReceived(octet_frame(line("one")))
    assert holds.asked == [["app-1"]] and transport.producerState == "producing"

    holds.hold = defer.Deferred()
    protocol.dataReceived(octet_frame(line("two")))
    assert transport.producerState == "paused"
    # Routed before the wait: the lines are the node's already.
    assert router.backlogs.messages("app-1") == [cooked("one"), cooked("two")]
    holds.hold.callback(None)
    assert transport.producerState == "producing"


def test_a_connection_lost_while_held_is_not_resumed():
    router, holds, _ = make_router()
    factory = SyslogFactory(router, router.metrics, 1024)
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    holds.hold = defer.Deferred()
    protocol.dataReceived(octet_frame(line("one")))
    assert transport.producerState == "paused"
    protocol.connectionLost(Failure(ConnectionDone()))
    holds.hold.callback(None)
    assert transport.producerState == "paused"
    assert factory.connections == 0


def test_a_held_post_answers_only_when_the_drain_has_room():
    router, holds, cache = make_router()
    metrics = router.metrics
    log_input = LogInput(LoadedStore(cache), router, auth=None, metrics=metrics,
                         listen=ListenSettings(max_body=4096, max_frame=1024))
    site = LogplexSite(log_input.resource(), max_body=4096, reactor=make_site_reactor())
    holds.hold = defer.Deferred()
    auth = b"Basic " + base64.b64encode(b"token:" + TOKEN.encode())
    protocol, transport = connect(site)
    protocol.dataReceived(raw_request(b"POST", b"/logs", {
        b"Authorization": auth, b"Content-Type": b"application/logplex-1"},
        encode_logplex1([line("held")])))
    assert transport.value() == b""  # routed, but the answer waits
    assert router.backlogs.messages("app-1") == [cooked("held")]
    holds.hold.callback(None)
    assert parse_reply(transport.value()).status == 204


def test_a_held_drain_sends_what_it_has_without_waiting_for_the_linger():
    # Held senders cannot fill a batch: waiting the linger would only stretch the hold.
    worker, endpoint, spool, clock = make_worker(capacity=20)
    fill(worker, clock, 20)
    # More than one batch (about 67 lines) behind: the rest must not wait for the linger either.
    worker.push([msg(i) for i in range(20, 120)])
    held = worker.wait()
    clock.advance(0.01)
    endpoint.answer()
    clock.advance(0)
    assert endpoint.pending, "the rest of the buffer waits for the linger"
    while not held.called:
        endpoint.answer()
        clock.advance(0)
    assert clock.seconds() < worker.linger


def test_a_retry_in_flight_holds_nobody():
    worker, endpoint, spool, clock = make_worker()
    fill(worker, clock, 100)
    endpoint.answer(Outcome.retry_later("HTTP 503 from the drain endpoint"))
    clock.advance(1)  # the retry goes out, quickly, like the failure came back
    assert endpoint.pending
    worker.push([msg(i) for i in range(100, 300)])
    assert not worker.holding()
    endpoint.answer()  # it worked again
    worker.push([msg(i) for i in range(300, 500)])
    assert worker.holding()
