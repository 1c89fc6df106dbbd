"""The cluster bus's tail traffic in memory: each batch names the channel incarnation it was routed to."""

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from logplex.framing import encode_logplex1
from logplex.metrics import Metrics
from logplex.model import SessionSpec
from logplex.tails.cluster import ClusterTails
from logplex.redis.address import RedisAddress
from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT, TailSettings
from logplex.tails.session import TailRegistry, TailSession


KEYS = RedisKeys("lp", 0)


def tail_channel(channel_id: str) -> bytes:
    return KEYS.tail(channel_id)


def msg(text: str) -> bytes:
    return f"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - - {text}".encode()


class Bus:
    """What ClusterTails publishes (tail traffic; interest announcements aside)."""

    def __init__(self) -> None:
        self.published: list[tuple[bytes, bytes]] = []

    def hset(self, *args):
        return defer.succeed(1)

    def publish(self, channel, payload):
        if channel != KEYS.feed:
            self.published.append((channel, payload))
        return defer.succeed(1)


class Connected:
    """The bus subscription's protocol, connected."""

    connected = True

    def subscribe(self, channels):
        return defer.succeed(None)


def heard_by(cluster, metrics) -> TailRegistry:
    """A registry whose first and last tails are told to the ClusterTails cluster() gives."""
    return TailRegistry(metrics, on_first_tail=lambda channel_id: cluster().first_tail(channel_id),
                        on_last_tail=lambda channel_id: cluster().last_tail(channel_id))


def cluster(incarnations: dict[str, str]):
    reactor, metrics = MemoryReactorClock(), Metrics()
    local, bus = heard_by(lambda: tails, metrics), Bus()
    tails = ClusterTails(local, bus, RedisAddress(host="bus"), "a", reactor, metrics, REDIS_TIMEOUT,
                         incarnation_of=incarnations.get, keys=KEYS)
    tails.subscription._protocol = Connected()
    return tails, local, bus, reactor


def tail(local: TailRegistry, incarnation: str) -> list[bytes]:
    written: list[bytes] = []
    session = TailSession(SessionSpec(id=incarnation, channel_id="app", incarnation=incarnation),
                          written.append, Metrics(), TailSettings())
    session.go_live([])
    local.add(session)
    return written


def test_a_batch_for_another_node_names_the_incarnation_it_was_routed_to():
    incarnations = {"app": "first"}
    tails, _, bus, reactor = cluster(incarnations)
    tails.remote["app"] = {"b": 1e12}
    tails.publish("app", [msg("1")])
    incarnations["app"] = "second"
    tails.publish("app", [msg("2")])
    reactor.advance(tails.flush_interval)
    assert bus.published == [(tail_channel("app"), b"a first\n" + encode_logplex1([msg("1")])),
                             (tail_channel("app"), b"a second\n" + encode_logplex1([msg("2")]))]


def test_a_batch_from_another_node_reaches_only_tails_of_the_incarnation_it_names():
    tails, local, _, _ = cluster({})
    first, second = tail(local, "first"), tail(local, "second")
    tails._on_message(tail_channel("app"), b"b second\n" + encode_logplex1([msg("for second")]))
    assert first == [] and len(second) == 1 and b"for second" in second[0]
    # From a node of the previous version: no incarnation, every tail of the name.
    tails._on_message(tail_channel("app"), b"b\n" + encode_logplex1([msg("old node")]))
    assert len(first) == 1 and len(second) == 2
    # A channel stored before identity has the empty incarnation.
    legacy = tail(local, "")
    tails._on_message(tail_channel("app"), b"b \n" + encode_logplex1([msg("legacy")]))
    assert len(legacy) == 1 and len(first) == 1 and len(second) == 2


def test_a_cluster_on_another_db_publishes_and_hears_only_its_own_channel_names():
    reactor, metrics = MemoryReactorClock(), Metrics()
    local, bus = heard_by(lambda: tails, metrics), Bus()
    on_db_5 = RedisKeys("lp", 5)
    tails = ClusterTails(local, bus, RedisAddress(host="bus", db=5), "a", reactor, metrics, REDIS_TIMEOUT,
                         incarnation_of={"app": "one"}.get, keys=on_db_5)
    tails.subscription._protocol = Connected()
    tails.remote["app"] = {"b": 1e12}
    tails.publish("app", [msg("1")])
    reactor.advance(tails.flush_interval)
    assert [channel for channel, _ in bus.published] == [b"lp:5:tail:app"]
    # db 0's tail traffic (pub/sub crosses dbs) is another cluster's: not a line reaches a tail.
    written = tail(local, "one")
    tails._on_message(KEYS.tail("app"), b"b one\n" + encode_logplex1([msg("from db 0")]))
    assert written == [] and metrics.get("logplex_tail_bus_received_total") == 0
    tails._on_message(on_db_5.tail("app"), b"b one\n" + encode_logplex1([msg("from db 5")]))
    assert len(written) == 1 and b"from db 5" in written[0]
