"""Spool adoption: which nodes are departed (sans-IO), the atomic move, and the lease, on a real redis-server."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from logplex.drains.adoption import SpoolAdopter, departed, is_live
from logplex.drains.formats import decode_chunk, encode_chunk
from logplex.drains.spool import Spool
from logplex.drains.supervisor import DrainSupervisor
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT

KEYS = RedisKeys("lp", 0)
NOW = 1_000_000.0


def beat(seen_at: float, ttl: float = 3.0) -> dict:
    return {"seen_at": seen_at, "ttl": ttl, "version": "x", "started_at": 0.0}


# -- which nodes are departed ------------------------------------------------------------------
def test_a_live_node_and_this_node_are_never_departed():
    registry = {"a": beat(NOW - 1), "me": beat(NOW - 100)}
    assert departed({"a", "me"}, registry, "me", NOW, {}, 2.0) == []


def test_a_stale_heartbeat_counts_from_when_its_ttl_ran_out():
    registry = {"a": beat(NOW - 4.0)}  # gone since NOW - 1
    assert departed({"a"}, registry, "me", NOW, {}, 2.0) == []
    assert departed({"a"}, registry, "me", NOW + 1.0, {}, 2.0) == ["a"]


def test_a_node_with_no_entry_counts_from_when_it_was_first_missed():
    absent: dict[str, float] = {}
    assert departed({"a"}, {}, "me", NOW, absent, 2.0) == []
    assert absent == {"a": NOW}
    assert departed({"a"}, {}, "me", NOW + 1.9, absent, 2.0) == []
    assert departed({"a"}, {}, "me", NOW + 2.0, absent, 2.0) == ["a"]
    # Back again: forgotten; then gone again: counted afresh.
    assert departed({"a"}, {"a": beat(NOW + 2.5)}, "me", NOW + 3.0, absent, 2.0) == []
    assert absent == {}
    # No longer a spooler (all its spools adopted): forgotten too.
    departed({"b"}, {}, "me", NOW, absent, 2.0)
    departed(set(), {}, "me", NOW, absent, 2.0)
    assert absent == {}


names = st.sampled_from(["a", "b", "c", "me"])


@given(spoolers=st.sets(names), seen=st.dictionaries(names, st.floats(0, 200)),
       adopt_after=st.floats(0.1, 100), absent=st.dictionaries(names, st.floats(NOW - 200, NOW)))
def test_departed_only_ever_names_spoolers_that_are_not_live_and_not_this_node(spoolers, seen, adopt_after,
                                                                              absent):
    registry = {name: beat(NOW - ago) for name, ago in seen.items()}
    out = departed(spoolers, registry, "me", NOW, dict(absent), adopt_after)
    assert out == sorted(out)
    for name in out:
        assert name in spoolers and name != "me"
        assert not is_live(registry.get(name), NOW)


# -- the move and the lease, on a real redis-server -----------------------------------------------
def msg(n: int) -> bytes:
    return b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - line %06d" % n


def chunk(frame_id: str, first: int, count: int) -> tuple[bytes, int]:
    return encode_chunk([msg(i) for i in range(first, first + count)], frame_id, 1000.0), count


class FakeWorker:
    """What adopt_spool needs of a DrainWorker."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.inflight = None
        self.spool_allowance = None
        self.spool_chunks = self.spool_messages = 0
        self.lost = 0
        self.queue = self
        self.kicked = 0

    def _op(self, fn):
        return defer.maybeDeferred(fn)

    def _kick(self):
        self.kicked += 1

    def count_lost(self, n, why):
        self.lost += n


class FakeSupervisor:
    def __init__(self, workers) -> None:
        self.workers = workers

    # The supervisor's own move, on fake workers.
    adopt_spool = DrainSupervisor.adopt_spool


class FakeRegistry:
    def __init__(self, redis, node) -> None:
        self.redis, self.node = redis, node

    def heartbeat(self):
        return self.redis.hset(KEYS.nodes, self.node, json.dumps(beat(time.time())))


class FakeMetrics:
    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def inc(self, name, n=1):
        self.counts[name] = self.counts.get(name, 0) + n


class AdoptionTests(unittest.TestCase):
    timeout = 20

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.server = redis_server

    def setUp(self) -> None:
        self.redis = connect(parse_redis_url(self.server.url), poolsize=2, reply_timeout=5)
        self.addCleanup(self.redis.disconnect)

    def spool(self, node: str, drain_id: int = 7, max_bytes: int = 10**9) -> Spool:
        return Spool(self.redis, drain_id, node, reactor, max_bytes, REDIS_TIMEOUT, keys=KEYS)

    async def texts(self, spool: Spool) -> list[bytes]:
        return [m for c in await self.redis.lrange(spool.key, 0, -1) for m in decode_chunk(c)[1]]

    async def test_a_departed_spool_goes_to_the_tail_of_this_one_in_order_and_is_gone(self):
        theirs, mine = self.spool("a"), self.spool("b")
        await theirs.push(*chunk("a1", 0, 3))
        await theirs.push(*chunk("a2", 3, 2))
        await mine.push(*chunk("b1", 100, 2))
        recorded = []
        mine.on_first_write = recorded.append
        self.assertEqual(await mine.adopt("a"), (2, 5, 0, 0))
        self.assertEqual(await self.texts(mine), [msg(100), msg(101)] + [msg(i) for i in range(5)])
        self.assertEqual(await mine.depth(), (3, 7))
        self.assertEqual(await theirs.depth(), (0, 0))
        self.assertFalse(await self.redis.exists(theirs.meta))
        # Nothing left: a second adoption (another node, or a returning one) moves nothing.
        self.assertEqual(await self.spool("c").adopt("a"), (0, 0, 0, 0))

    async def test_over_the_bound_the_oldest_go_but_never_the_chunk_being_delivered(self):
        theirs = self.spool("a")
        await theirs.push(*chunk("a1", 0, 3))
        await theirs.push(*chunk("a2", 3, 3))
        mine = self.spool("b")
        await mine.push(*chunk("b1", 100, 3))
        size = len(chunk("b1", 100, 3)[0])
        # Room for two chunks: b1 is in flight (protected), so a1 is dropped.
        answer = await mine.adopt("a", protect="b1", max_bytes=2 * size + 10)
        self.assertEqual(answer, (2, 6, 1, 3))
        self.assertEqual(await self.texts(mine), [msg(100), msg(101), msg(102), msg(3), msg(4), msg(5)])
        self.assertEqual(await mine.depth(), (2, 6))

    async def test_one_adopter_per_departed_node_and_a_returning_node_stops_it(self):
        theirs = self.spool("a")
        await theirs.push(*chunk("a1", 0, 4))
        await self.redis.sadd(KEYS.spoolers, "a")
        await self.redis.sadd(KEYS.spooled_drains("a"), "7")
        adopters = []
        for name in ("b", "c"):
            worker = FakeWorker(self.spool(name))
            adopters.append((SpoolAdopter(self.redis, FakeSupervisor({7: worker}), FakeRegistry(self.redis, name),
                                          name, reactor, FakeMetrics(), 2.0, 5.0, keys=KEYS), worker))
        (b, b_worker), (c, c_worker) = adopters
        # c holds the lease: b adopts nothing.
        await self.redis.set(KEYS.adoption_lease("a"), "c")
        self.assertEqual(await b.adopt("a"), 0)
        await self.redis.delete(KEYS.adoption_lease("a"))
        # a came back (a fresh heartbeat): b backs off.
        await FakeRegistry(self.redis, "a").heartbeat()
        self.assertEqual(await b.adopt("a"), 0)
        self.assertEqual(await theirs.depth(), (1, 4))
        await self.redis.hdel(KEYS.nodes, "a")
        # Gone: b takes it all, counts it, forgets a, and lets go of the lease.
        self.assertEqual(await b.adopt("a"), 4)
        self.assertEqual((b_worker.spool_chunks, b_worker.spool_messages, b_worker.kicked), (1, 4, 1))
        self.assertEqual(b.metrics.counts, {"logplex_spool_adopted_total": 4})
        self.assertEqual(await self.redis.smembers(KEYS.spoolers), set())
        self.assertIsNone(await self.redis.get(KEYS.adoption_lease("a")))
        self.assertEqual(await c.adopt("a"), 0)
        self.assertEqual(c_worker.spool_messages, 0)

    async def test_a_starting_node_waits_while_its_spools_are_being_adopted(self):
        adopter = SpoolAdopter(self.redis, FakeSupervisor({}), FakeRegistry(self.redis, "a"), "a", reactor,
                               FakeMetrics(), 2.0, 1.0, keys=KEYS)
        await self.redis.set(KEYS.adoption_lease("a"), "b")
        waiting = defer.ensureDeferred(adopter.wait_own_lease())
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertFalse(waiting.called)
        # It heartbeat before looking: an adopter would see it and back off.
        self.assertTrue(await self.redis.hexists(KEYS.nodes, "a"))
        await self.redis.delete(KEYS.adoption_lease("a"))
        await waiting
