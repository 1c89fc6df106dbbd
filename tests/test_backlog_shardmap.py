"""The shard map follower and the admin's wait for nodes, on a Clock and an in-memory Redis."""

from __future__ import annotations

import json
import time

from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT
from logplex.backlog.shardmap import NodesBehind, ShardMapFollower, nodes_behind, wait_for_nodes

KEYS = RedisKeys("lp", 0)


class MemoryRedis:
    """The few commands the follower and the wait send, answered from dicts."""

    def __init__(self) -> None:
        self.strings: dict[bytes, bytes] = {}
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}

    def get(self, key: bytes) -> defer.Deferred:
        return defer.succeed(self.strings.get(key))

    def hgetall(self, key: bytes) -> defer.Deferred:
        return defer.succeed(dict(self.hashes.get(key, {})))

    def change_map(self, version: int, shard_map: dict[str, str]) -> None:
        self.strings[KEYS.shard_map_version] = b"%d" % version
        self.hashes[KEYS.shards] = {k.encode(): v.encode() for k, v in shard_map.items()}


class Gauges:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[name] = value


def follower(redis: MemoryRedis, clock: Clock):
    configured: list[dict[str, str]] = []
    reported: list[int] = []
    gauges = Gauges()
    f = ShardMapFollower(redis, KEYS, configured.append, clock, gauges, interval=1.0,
                         timeout=REDIS_TIMEOUT, on_version=reported.append)
    return f, configured, reported, gauges


def test_a_change_no_notification_told_of_is_followed_at_the_next_check():
    redis, clock = MemoryRedis(), Clock()
    f, configured, reported, gauges = follower(redis, clock)
    f.follow(1, {"shard-0": "redis://a"})
    f.start()
    redis.change_map(2, {"shard-0": "redis://a", "shard-1": "redis://b"})
    clock.advance(0.99)
    assert len(configured) == 1
    clock.advance(0.01)
    assert configured[-1] == {"shard-0": "redis://a", "shard-1": "redis://b"}
    assert (f.version, reported, gauges.values["logplex_shard_map_version"]) == (2, [1, 2], 2)
    # Nothing moved: the next checks reconfigure nothing.
    clock.advance(5.0)
    assert len(configured) == 2 and reported == [1, 2]
    f.stop()


def test_an_empty_map_is_never_followed():
    redis, clock = MemoryRedis(), Clock()
    f, configured, reported, _ = follower(redis, clock)
    f.follow(3, {"shard-0": "redis://a"})
    redis.change_map(4, {})
    f.on_feed(b"shards 4")
    assert configured == [{"shard-0": "redis://a"}] and f.version == 3


def _beat(version: int | None, seen: float, ttl: float = 3.0) -> bytes:
    doc = {"version": "x", "started_at": seen, "seen_at": seen, "ttl": ttl, "api_url": "", "pid": 1}
    if version is not None:
        doc["shard_map_version"] = version
    return json.dumps(doc).encode()


def test_the_wait_names_the_live_nodes_on_an_older_map_and_gives_up_after_its_timeout():
    redis, clock = MemoryRedis(), Clock()
    now = time.time()
    redis.hashes[KEYS.nodes] = {b"a": _beat(5, now), b"b": _beat(4, now), b"old": _beat(None, now),
                                b"dead": _beat(1, now - 60)}
    assert defer.ensureDeferred(nodes_behind(redis, KEYS, 5)).result == ["b", "old"]
    waiting = defer.ensureDeferred(wait_for_nodes(redis, KEYS, 5, 2.0, clock))
    clock.advance(1.0)
    assert not waiting.called
    clock.pump([0.1] * 12)
    failures: list = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].check(NodesBehind)
    assert str(failures[0].value).startswith("Nodes b, old did not report shard map version 5 within 2 s")


def test_the_wait_ends_as_soon_as_the_last_node_follows():
    redis, clock = MemoryRedis(), Clock()
    redis.hashes[KEYS.nodes] = {b"a": _beat(4, time.time())}
    waiting = defer.ensureDeferred(wait_for_nodes(redis, KEYS, 5, 10.0, clock))
    clock.advance(0.1)
    assert not waiting.called
    redis.hashes[KEYS.nodes] = {b"a": _beat(5, time.time())}
    clock.advance(0.1)
    assert waiting.called and waiting.result is None
