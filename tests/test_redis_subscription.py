"""The subscription's catch-up: one PING for those who wait together, never a failure, never a hang."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from logplex.redis.subscription import Subscription


class FakeProtocol:
    connected = True

    def __init__(self):
        self.pings = []

    def ping(self):
        self.pings.append(Deferred())
        return self.pings[-1]


def subscription():
    clock = Clock()
    sub = Subscription(None, lambda channel, message: None, reactor=clock)
    sub._protocol = FakeProtocol()
    return sub, sub._protocol, clock


def test_callers_while_a_ping_is_out_share_the_next_one():
    sub, protocol, _ = subscription()
    first = sub.caught_up(5.0)
    # Asked after the PING left: what they wait for may have come after it.
    second, third = sub.caught_up(5.0), sub.caught_up(5.0)
    assert len(protocol.pings) == 1
    protocol.pings[0].callback(b"pong")
    assert first.called and not second.called and not third.called
    assert len(protocol.pings) == 2
    protocol.pings[1].callback(b"pong")
    assert second.called and third.called and len(protocol.pings) == 2


def test_a_ping_unanswered_or_failed_still_lets_the_callers_go():
    sub, protocol, clock = subscription()
    waited = sub.caught_up(5.0)
    clock.advance(5.0)
    assert waited.called and waited.result is None
    failed = sub.caught_up(5.0)
    protocol.pings[1].errback(ConnectionError("lost"))
    assert failed.called and failed.result is None


def test_without_a_connection_the_callers_go_at_once():
    sub, protocol, _ = subscription()
    protocol.connected = False
    assert sub.caught_up(5.0).called and protocol.pings == []
