"""Tests for logplex.ingest.syslog: the TCP syslog protocol in front of the router."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from logplex.framing import octet_frame
from logplex.ingest.syslog import SyslogFactory
from logplex.metrics import Metrics
from logplex.config.cache import ConfigCache
from logplex.router import Router
from tests.helpers import RecordingBacklog, RecordingTails, fill_cache

WEB_TOKEN = "t.11111111-1111-4111-8111-111111111111"
WORKER_TOKEN = "t.22222222-2222-4222-8222-222222222222"
OTHER_TOKEN = "t.33333333-3333-4333-8333-333333333333"
UNKNOWN_TOKEN = "t.99999999-9999-4999-8999-999999999999"
MAX_FRAME = 1024


def message(token: str, text: str, procid: str = "web.1") -> bytes:
    return b"<13>1 2026-11-24T10:00:00.000000+00:00 myhost %s %s - - %s" % (
        token.encode(), procid.encode(), text.encode())


def cooked(name: str, text: str, procid: str = "web.1") -> bytes:
    return message(name, text, procid)


class Node:
    """A router over in-memory sinks, and a syslog factory in front of it."""

    def __init__(self, live_tails: set[str] = frozenset()) -> None:
        self.cache = ConfigCache()
        fill_cache(self.cache, "app-1", {"app": WEB_TOKEN, "worker": WORKER_TOKEN})
        fill_cache(self.cache, "app-2", {"other": OTHER_TOKEN})
        self.backlog = RecordingBacklog()
        self.tails = RecordingTails(live_tails)
        self.metrics = Metrics()
        self.router = Router(self.cache, self.backlog, self.tails, self.metrics)
        self.factory = SyslogFactory(self.router, self.metrics, MAX_FRAME)

    def connect(self):
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def metric(self, name: str) -> float:
        return self.metrics.get(name)


def disconnect(protocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def node() -> Node:
    return Node()


def test_octet_counted_frames_are_routed_cooked_one_append_per_read(node):
    protocol, transport = node.connect()
    texts = [f"line {i}" for i in range(50)]
    protocol.dataReceived(b"".join(octet_frame(message(WEB_TOKEN, t)) for t in texts))
    assert node.backlog.calls == [("app-1", [cooked("app", t) for t in texts])]
    assert node.metric("logplex_messages_routed_total") == 50
    assert not transport.disconnecting


def test_lf_framed_frames_are_routed_cooked_one_append_per_read(node):
    protocol, _ = node.connect()
    texts = [f"line {i}" for i in range(50)]
    protocol.dataReceived(b"".join(message(WEB_TOKEN, t) + b"\n" for t in texts))
    assert node.backlog.calls == [("app-1", [cooked("app", t) for t in texts])]


def test_frames_split_byte_by_byte_arrive_whole_and_in_order(node):
    protocol, _ = node.connect()
    stream = octet_frame(message(WEB_TOKEN, "one")) + message(WEB_TOKEN, "two") + b"\n"
    stream += octet_frame(message(WEB_TOKEN, "three"))
    for i in range(len(stream)):
        protocol.dataReceived(stream[i:i + 1])
    assert node.backlog.messages("app-1") == [cooked("app", t) for t in ("one", "two", "three")]
    # Each completing byte was its own read, so each message its own append.
    assert len(node.backlog.calls) == 3


@settings(max_examples=75, deadline=None)
@given(
    texts=st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40),
                   min_size=1, max_size=12),
    counted=st.lists(st.booleans(), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=15),
)
def test_any_split_of_a_stream_delivers_the_same_messages_in_order(texts, counted, cuts):
    node = Node()
    protocol, transport = node.connect()
    stream = b""
    for text, octet in zip(texts, counted):
        msg = message(WEB_TOKEN, text)
        stream += octet_frame(msg) if octet else msg + b"\n"
    start = 0
    for cut in sorted(c for c in cuts if c < len(stream)) + [len(stream)]:
        protocol.dataReceived(stream[start:cut])
        start = cut
    assert node.backlog.messages("app-1") == [cooked("app", t) for t in texts]
    assert not transport.disconnecting


def test_mixed_channels_in_one_read_are_grouped_per_channel_keeping_order(node):
    protocol, _ = node.connect()
    sent = [(WEB_TOKEN, "a1"), (OTHER_TOKEN, "b1"), (WORKER_TOKEN, "a2"),
            (OTHER_TOKEN, "b2"), (WEB_TOKEN, "a3")]
    protocol.dataReceived(b"".join(octet_frame(message(tok, t)) for tok, t in sent))
    assert sorted(node.backlog.calls) == [
        ("app-1", [cooked("app", "a1"), cooked("worker", "a2"), cooked("app", "a3")]),
        ("app-2", [cooked("other", "b1"), cooked("other", "b2")]),
    ]


def test_live_tails_get_the_same_batch():
    node = Node(live_tails={"app-2"})
    protocol, _ = node.connect()
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "a")) + octet_frame(message(OTHER_TOKEN, "b")))
    assert node.tails.calls == [("app-2", [cooked("other", "b")])]


def test_unknown_tokens_and_malformed_messages_are_counted_and_the_connection_stays(node):
    protocol, transport = node.connect()
    protocol.dataReceived(
        octet_frame(message(UNKNOWN_TOKEN, "lost"))
        + octet_frame(message(WEB_TOKEN, "kept 1"))
        + octet_frame(b"not syslog at all")
        + b"<13>1 too short\n"
        + octet_frame(message(WEB_TOKEN, "kept 2"))
    )
    assert node.metric("logplex_messages_unknown_token_total") == 1
    assert node.metric("logplex_messages_malformed_total") == 2
    assert node.backlog.calls == [("app-1", [cooked("app", "kept 1"), cooked("app", "kept 2")])]
    assert not transport.disconnecting
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "later")))
    assert node.backlog.messages("app-1")[-1] == cooked("app", "later")


@pytest.mark.parametrize("broken", [
    b"12ab " + message(WEB_TOKEN, "after") + b"\n",   # a count that is not a number
    b"%d " % (MAX_FRAME + 1) + b"x" * (MAX_FRAME + 1),  # a count over max_frame
    b"12345678901234 x",                               # a count with too many digits
])
def test_broken_framing_routes_what_came_before_then_closes(node, broken):
    protocol, transport = node.connect()
    before = octet_frame(message(WEB_TOKEN, "before 1")) + octet_frame(message(WEB_TOKEN, "before 2"))
    after = octet_frame(message(WEB_TOKEN, "after"))
    protocol.dataReceived(before + broken + after)
    assert transport.disconnecting
    assert node.metric("logplex_framing_errors_total") == 1
    assert node.backlog.messages("app-1") == [cooked("app", "before 1"), cooked("app", "before 2")]
    # Whatever the sender still writes before the close is ignored.
    protocol.dataReceived(after)
    assert len(node.backlog.all_messages()) == 2
    # Closing for broken framing is not a partial frame dropped by the sender.
    disconnect(protocol)
    assert node.metric("logplex_partial_frames_dropped_total") == 0
    assert node.factory.connections == 0


def test_an_lf_frame_longer_than_max_frame_closes_the_connection(node):
    protocol, transport = node.connect()
    protocol.dataReceived(b"<13>1 " + b"x" * MAX_FRAME)
    protocol.dataReceived(b"x" * 10)
    assert transport.disconnecting
    assert node.metric("logplex_framing_errors_total") == 1


def test_broken_framing_on_one_connection_leaves_another_alone(node):
    bad, bad_transport = node.connect()
    good, good_transport = node.connect()
    assert node.factory.connections == 2
    good.dataReceived(octet_frame(message(WEB_TOKEN, "good 1"))[:20])
    bad.dataReceived(b"xx1 junk without count\n" + b"9x9 ")
    good.dataReceived(octet_frame(message(WEB_TOKEN, "good 1"))[20:])
    good.dataReceived(octet_frame(message(WEB_TOKEN, "good 2")))
    assert bad_transport.disconnecting
    assert not good_transport.disconnecting
    assert node.backlog.messages("app-1") == [cooked("app", "good 1"), cooked("app", "good 2")]


@pytest.mark.parametrize("partial", [
    octet_frame(message(WEB_TOKEN, "cut short"))[:30],  # inside a counted frame
    b"12",                                               # inside a count
    message(WEB_TOKEN, "no newline yet"),                # inside an LF frame
])
def test_a_sender_leaving_mid_frame_is_counted(node, partial):
    protocol, _ = node.connect()
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "whole")) + partial)
    disconnect(protocol)
    assert node.metric("logplex_partial_frames_dropped_total") == 1
    assert node.backlog.messages("app-1") == [cooked("app", "whole")]
    assert node.factory.connections == 0


def test_a_sender_leaving_between_frames_drops_nothing(node):
    protocol, _ = node.connect()
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "whole")))
    disconnect(protocol)
    assert node.metric("logplex_partial_frames_dropped_total") == 0
    assert node.factory.connections == 0
    assert node.metric("logplex_connections_total") == 1


def test_denied_ingress_closes_the_connection_and_routes_nothing(node):
    node.router.deny_ingress = True
    protocol, transport = node.connect()
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "a")) + octet_frame(message(WEB_TOKEN, "b")))
    assert transport.disconnecting
    assert node.backlog.calls == []
    assert node.metric("logplex_messages_forbidden_total") == 2
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "c")))
    assert node.metric("logplex_messages_forbidden_total") == 2


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=10), digits=st.booleans())
def test_arbitrary_bytes_never_raise_out_of_data_received(chunks, digits):
    node = Node()
    protocol, _ = node.connect()
    if digits:
        # Make counts and near-counts likely, not just LF junk.
        chunks = [b"%d " % len(c) + c for c in chunks]
    for chunk in chunks:
        protocol.dataReceived(chunk)
    disconnect(protocol)
    assert node.factory.connections == 0


def test_a_listener_bound_to_a_token_routes_everything_to_it(node):
    node.factory = SyslogFactory(node.router, node.metrics, MAX_FRAME, token=OTHER_TOKEN)
    protocol, transport = node.connect()
    stock = b"<13>Nov 24 10:00:01 myhost cron[12]: a stock rsyslog line\n"
    protocol.dataReceived(octet_frame(message("myapp", "no token in it")) + stock)
    (channel, lines), = node.backlog.calls
    assert channel == "app-2"
    assert lines[0] == cooked("other", "no token in it")
    assert lines[1].endswith(b" myhost other 12 - - a stock rsyslog line")


def test_a_token_listener_whose_token_is_gone_drops_and_counts(node):
    node.factory = SyslogFactory(node.router, node.metrics, MAX_FRAME, token=UNKNOWN_TOKEN)
    protocol, transport = node.connect()
    protocol.dataReceived(octet_frame(message("x", "lost")))
    assert node.backlog.calls == []
    assert node.metric("logplex_messages_unknown_token_total") == 1
    assert not transport.disconnecting


def test_lines_with_a_token_made_elsewhere_a_moment_ago_wait_for_the_config_with_their_sender():
    from logplex.router import TokenMisses

    node, waits = Node(), []
    node.router.misses = TokenMisses(lambda: waits.append(Deferred()) or waits[-1], Clock().seconds)
    protocol, transport = node.connect()
    token_listener = SyslogFactory(node.router, node.metrics, MAX_FRAME, token=UNKNOWN_TOKEN)
    protocol2 = token_listener.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40001))
    transport2 = StringTransport()
    protocol2.makeConnection(transport2)
    protocol.dataReceived(octet_frame(message(WEB_TOKEN, "a")) + octet_frame(message(UNKNOWN_TOKEN, "b")))
    protocol2.dataReceived(octet_frame(message("x", "c")))
    # Neither connection reads on until the config has caught up; nothing is dropped yet.
    assert transport.producerState == transport2.producerState == "paused"
    assert node.backlog.calls == [("app-1", [cooked("app", "a")])]
    fill_cache(node.cache, "app-3", {"new": UNKNOWN_TOKEN})
    for wait in waits:
        wait.callback(None)
    assert node.backlog.calls[1:] == [("app-3", [cooked("new", "b")]), ("app-3", [cooked("new", "c", "web.1")])]
    assert transport.producerState == transport2.producerState == "producing"
    assert node.metric("logplex_messages_unknown_token_total") == 0
    assert node.metric("logplex_messages_routed_late_total") == 2


FRAME_TIMEOUT = 30.0


def timed_node() -> tuple[Node, Clock]:
    """A node whose listener cuts a frame that takes longer than FRAME_TIMEOUT to arrive."""
    clock = Clock()
    node = Node()
    node.factory = SyslogFactory(node.router, node.metrics, MAX_FRAME,
                                 frame_timeout=FRAME_TIMEOUT, clock=clock)
    return node, clock


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(min_value=1, max_value=8), st.floats(min_value=0.0, max_value=1.0),
                                st.floats(min_value=0.0, max_value=FRAME_TIMEOUT - 0.1)),
                      min_size=5, max_size=60))
def test_a_steady_sender_is_never_cut_while_its_frames_keep_completing(steps):
    # Reads that end at a random point inside a later frame (seldom on a
    # boundary), up to almost FRAME_TIMEOUT apart, for many times the
    # timeout: every frame arrives in at most two reads, so none is late.
    node, clock = timed_node()
    protocol, transport = node.connect()
    frames = [octet_frame(message(WEB_TOKEN, f"steady line {i}")) for i in range(sum(n for n, _, _ in steps) + 1)]
    starts = [0]
    for frame in frames:
        starts.append(starts[-1] + len(frame))
    stream = b"".join(frames)
    sent, index = 0, 0
    for frames_on, fraction, pause in steps:
        index += frames_on
        end = starts[index] + int(fraction * (len(frames[index]) - 1))
        clock.advance(pause)
        protocol.dataReceived(stream[sent:end])
        sent = end
        assert not transport.disconnecting
    protocol.dataReceived(stream[sent:])
    assert node.backlog.messages("app-1") == [cooked("app", f"steady line {i}") for i in range(len(frames))]
    assert node.metrics.get("logplex_syslog_timeouts_total", reason="frame") == 0


def test_a_frame_that_stalls_after_completed_frames_is_cut_one_timeout_after_it_began():
    node, clock = timed_node()
    protocol, transport = node.connect()
    first, second = octet_frame(message(WEB_TOKEN, "one")), octet_frame(message(WEB_TOKEN, "two"))
    protocol.dataReceived(first[:10])
    clock.advance(FRAME_TIMEOUT - 1)
    protocol.dataReceived(first[10:] + second[:10])  # "one" completes; "two" begins now
    clock.advance(FRAME_TIMEOUT - 1)
    assert not transport.disconnecting
    protocol.dataReceived(second[10:12])  # "two" trickles on: no completed frame, no new deadline
    clock.advance(1)
    assert transport.disconnecting
    assert node.metrics.get("logplex_syslog_timeouts_total", reason="frame") == 1
    assert node.backlog.messages("app-1") == [cooked("app", "one")]


def test_a_read_that_ends_on_a_boundary_clears_the_frame_deadline():
    node, clock = timed_node()
    protocol, transport = node.connect()
    frame = octet_frame(message(WEB_TOKEN, "one"))
    protocol.dataReceived(frame[:10])
    protocol.dataReceived(frame[10:])
    clock.advance(FRAME_TIMEOUT * 10)
    assert not transport.disconnecting
    assert clock.getDelayedCalls() == []
