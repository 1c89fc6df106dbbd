"""logplex.drains.spool against a real redis-server: order, acks, the byte bound and exact counts."""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from logplex.drains.formats import decode_chunk, encode_chunk
from logplex.drains.spool import Spool
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT

NODE = "node-a"
KEYS = RedisKeys("lp", 0)


def msg(n: int) -> bytes:
    return b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - line %06d" % n


def chunk(frame_id: str, first: int, count: int) -> tuple[bytes, int]:
    """A spool chunk as the worker writes it, holding messages first .. first+count-1."""
    return encode_chunk([msg(i) for i in range(first, first + count)], frame_id, 1000.0), count


class SpoolTests(unittest.TestCase):
    timeout = 20

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.server = redis_server

    def setUp(self) -> None:
        self.redis = connect(parse_redis_url(self.server.url), poolsize=1, reply_timeout=5)
        self.addCleanup(self.redis.disconnect)

    def spool(self, drain_id: int = 7, node: str = NODE, max_bytes: int = 10**9) -> Spool:
        return Spool(self.redis, drain_id, node, reactor, max_bytes, REDIS_TIMEOUT, keys=KEYS)

    async def raw_chunks(self, spool: Spool) -> list[bytes]:
        return list(await self.redis.lrange(spool.key, 0, -1))

    async def meta(self, spool: Spool) -> dict[bytes, int]:
        raw = await self.redis.hgetall(spool.meta)
        return {k: int(v) for k, v in raw.items()}

    async def assertMetaExact(self, spool: Spool) -> None:
        """The meta hash agrees with the list, byte for byte and message for message."""
        chunks = await self.raw_chunks(spool)
        meta = await self.meta(spool)
        expected_bytes = sum(map(len, chunks))
        expected_messages = sum(len(decode_chunk(c)[1]) for c in chunks)
        self.assertEqual(meta.get(b"bytes", 0), expected_bytes, (meta, len(chunks)))
        self.assertEqual(meta.get(b"messages", 0), expected_messages, (meta, len(chunks)))
        self.assertEqual(await spool.depth(), (len(chunks), expected_messages))
        # And the spool's own idea of its size, which the node's total is made of.
        self.assertEqual(spool.bytes, expected_bytes)

    async def frame_ids(self, spool: Spool) -> list[str]:
        return [decode_chunk(c)[0] for c in await self.raw_chunks(spool)]

    # -- keys -------------------------------------------------------------------------------
    def test_keys_are_per_drain_and_node(self):
        s = self.spool(42, "n1")
        self.assertEqual(s.key, b"lp:spool:42:n1")
        self.assertEqual(s.meta, b"lp:spool:42:n1:meta")
        self.assertEqual(KEYS.spool(42, "n1"), s.key)
        self.assertNotEqual(self.spool(42, "n2").key, s.key)
        self.assertNotEqual(self.spool(43, "n1").key, s.key)

    async def test_spools_of_other_drains_and_nodes_are_separate(self):
        a, b, c = self.spool(1, "n1"), self.spool(1, "n2"), self.spool(2, "n1")
        await a.push(*chunk("fa", 0, 3))
        await b.push(*chunk("fb", 10, 2))
        self.assertEqual(await a.depth(), (1, 3))
        self.assertEqual(await b.depth(), (1, 2))
        self.assertEqual(await c.depth(), (0, 0))
        self.assertFalse(await c.ack("fa"))
        self.assertTrue(await b.ack("fb"))
        self.assertEqual(await a.depth(), (1, 3))

    async def test_every_operation_leaves_the_spool_knowing_its_size(self):
        s = self.spool()
        for i in range(3):
            await s.push(*chunk(f"f{i}", i * 10, 4))
            await self.assertMetaExact(s)
        self.assertTrue(await s.ack("f0"))
        self.assertEqual(s.bytes, sum(map(len, await self.raw_chunks(s))))
        nxt = await s.ack_next("f1")
        self.assertEqual(decode_chunk(nxt)[0], "f2")
        self.assertEqual(s.bytes, sum(map(len, await self.raw_chunks(s))))
        self.assertIsNone(await s.ack_next("f2"))
        self.assertEqual(s.bytes, 0)
        await s.push(*chunk("f3", 30, 4))
        await s.delete()
        self.assertEqual(s.bytes, 0)

    async def test_a_tighter_bound_for_one_push_drops_the_oldest_of_this_spool_only(self):
        s, other = self.spool(1), self.spool(2)
        for i in range(3):
            await other.push(*chunk(f"o{i}", i * 10, 4))
            await s.push(*chunk(f"s{i}", i * 10, 4))
        one = len(chunk("s9", 90, 4)[0])
        # The node's total is nearly used up: this push may keep about two chunks.
        dropped = await s.push(*chunk("s3", 30, 4), max_bytes=2 * one)
        self.assertEqual(dropped, 8)
        self.assertEqual(await self.frame_ids(s), ["s2", "s3"])
        self.assertEqual(await self.frame_ids(other), ["o0", "o1", "o2"])
        await self.assertMetaExact(s)
        # A bound looser than the spool's own changes nothing.
        self.assertEqual(await s.push(*chunk("s4", 40, 4), max_bytes=10**12), 0)

    # -- order ------------------------------------------------------------------------------
    async def test_empty(self):
        s = self.spool()
        self.assertEqual(await s.depth(), (0, 0))
        self.assertIsNone(await s.head())
        self.assertFalse(await s.ack("nothing"))
        self.assertEqual(await self.redis.exists(s.key), 0)
        self.assertEqual(await self.redis.exists(s.meta), 0)

    async def test_push_head_ack_in_order(self):
        s = self.spool()
        pushed = [chunk("f1", 0, 3), chunk("f2", 3, 1), chunk("f3", 4, 5)]
        for data, count in pushed:
            self.assertEqual(await s.push(data, count), 0)
        self.assertEqual(await s.depth(), (3, 9))
        await self.assertMetaExact(s)
        seen = []
        for (data, count), frame_id in zip(pushed, ["f1", "f2", "f3"]):
            head = await s.head()
            self.assertEqual(head, data)
            got_id, messages, created = decode_chunk(head)
            self.assertEqual((got_id, created), (frame_id, 1000.0))
            seen.extend(messages)
            # head() only reads: asking again gives the same chunk.
            self.assertEqual(await s.head(), data)
            self.assertTrue(await s.ack(frame_id))
            await self.assertMetaExact(s)
        self.assertEqual(seen, [msg(i) for i in range(9)])
        self.assertIsNone(await s.head())
        self.assertEqual(await s.depth(), (0, 0))
        # The last ack leaves no keys behind.
        self.assertEqual(await self.redis.exists(s.key), 0)
        self.assertEqual(await self.redis.exists(s.meta), 0)

    async def test_ack_of_a_wrong_frame_id_does_nothing(self):
        s = self.spool()
        await s.push(*chunk("f1", 0, 2))
        await s.push(*chunk("f2", 2, 2))
        before = (await self.raw_chunks(s), await self.meta(s))
        # Not the head (f2 is second), a prefix of the head's id, an extension
        # of it, and something unrelated: none of them removes anything.
        for wrong in ("f2", "f", "f1x", "1", "zzz", ""):
            self.assertFalse(await s.ack(wrong), wrong)
            self.assertEqual((await self.raw_chunks(s), await self.meta(s)), before, wrong)
        self.assertTrue(await s.ack("f1"))
        # Acking the same frame twice (a late duplicate) does not eat the next chunk.
        self.assertFalse(await s.ack("f1"))
        self.assertEqual(await self.frame_ids(s), ["f2"])
        await self.assertMetaExact(s)

    async def test_ack_next_acks_and_answers_the_next_chunk_in_one_call(self):
        s = self.spool()
        pushed = [chunk("f1", 0, 2), chunk("f2", 2, 1)]
        for data, count in pushed:
            await s.push(data, count)
        self.assertEqual(await s.ack_next("f1"), pushed[1][0])
        await self.assertMetaExact(s)
        # A frame id that is not the head removes nothing, and says what is.
        self.assertEqual(await s.ack_next("f1"), pushed[1][0])
        self.assertIsNone(await s.ack_next("f2"))
        self.assertEqual(await self.redis.exists(s.meta), 0)

    async def test_frame_ids_with_lua_pattern_characters(self):
        s = self.spool()
        odd = "a-b.c%d+e"
        await s.push(*chunk(odd, 0, 1))
        await s.push(*chunk("aXb.c%d+e", 1, 1))
        self.assertFalse(await s.ack("a.b.c%d+e"))
        self.assertTrue(await s.ack(odd))
        self.assertEqual(await self.frame_ids(s), ["aXb.c%d+e"])

    async def test_push_at_head(self):
        s = self.spool()
        await s.push(*chunk("f2", 10, 2))
        await s.push(*chunk("f3", 20, 3))
        first, n = chunk("f1", 0, 4)
        self.assertEqual(await s.push(first, n, at_head=True), 0)
        self.assertEqual(await s.head(), first)
        self.assertEqual(await self.frame_ids(s), ["f1", "f2", "f3"])
        self.assertEqual(await s.depth(), (3, 9))
        await self.assertMetaExact(s)

    # -- the byte bound -----------------------------------------------------------------------
    async def test_push_over_the_bound_drops_whole_oldest_chunks_and_counts_them(self):
        chunks = [chunk("f%d" % i, i * 10, i + 1) for i in range(6)]  # 1..6 messages each
        sizes = [len(c) for c, _ in chunks]
        # Room for the last three chunks exactly, not for four.
        bound = sum(sizes[-3:])
        s = self.spool(max_bytes=bound)
        dropped = []
        for data, count in chunks:
            dropped.append(await s.push(data, count))
            await self.assertMetaExact(s)
            meta = await self.meta(s)
            self.assertLessEqual(meta[b"bytes"], bound)
        # f0 (1 message), f1 (2), f2 (3) went, each when the push that no
        # longer fitted came, and each push said exactly how many messages.
        self.assertEqual(sum(dropped), 1 + 2 + 3)
        self.assertEqual(await self.frame_ids(s), ["f3", "f4", "f5"])
        self.assertEqual(await s.depth(), (3, 4 + 5 + 6))
        self.assertEqual(await self.meta(s), {b"bytes": bound, b"messages": 15})

    async def test_the_chunk_being_delivered_is_never_dropped(self):
        chunks = [chunk("f%d" % i, i * 10, 2) for i in range(4)]
        bound = sum(len(c) for c, _ in chunks[:3])
        s = self.spool(max_bytes=bound)
        for data, count in chunks[:3]:
            self.assertEqual(await s.push(data, count), 0)
        # f0 is in flight: the push over the bound drops f1 instead.
        self.assertEqual(await s.push(*chunks[3], protect="f0"), 2)
        self.assertEqual(await self.frame_ids(s), ["f0", "f2", "f3"])
        await self.assertMetaExact(s)
        self.assertTrue(await s.ack("f0"))

    async def test_one_push_can_drop_several_chunks(self):
        small = [chunk("s%d" % i, i, 1) for i in range(5)]
        bound = sum(len(c) for c, _ in small)
        s = self.spool(max_bytes=bound)
        for data, count in small:
            self.assertEqual(await s.push(data, count), 0)
        big, n = chunk("big", 100, 4)
        # The big chunk needs the room of several small ones: exactly as many
        # as it takes go, oldest first.
        need = len(big)
        freed, expect_dropped = 0, 0
        for data, count in small:
            if freed >= need:
                break
            freed += len(data)
            expect_dropped += count
        self.assertGreater(expect_dropped, 1)
        self.assertEqual(await s.push(big, n), expect_dropped)
        self.assertEqual(await self.frame_ids(s),
                         ["s%d" % i for i in range(expect_dropped, 5)] + ["big"])
        await self.assertMetaExact(s)

    async def test_push_at_head_over_the_bound_drops_the_oldest_which_is_that_chunk(self):
        a, b = chunk("fa", 10, 2), chunk("fb", 20, 2)
        s = self.spool(max_bytes=len(a[0]) + len(b[0]))
        await s.push(*a)
        await s.push(*b)
        head, n = chunk("f0", 0, 3)
        # What goes back in front is older than everything spooled: with no
        # room for it, it is the one dropped.
        self.assertEqual(await s.push(head, n, at_head=True), 3)
        self.assertEqual(await self.frame_ids(s), ["fa", "fb"])
        await self.assertMetaExact(s)

    async def test_a_chunk_larger_than_the_bound_alone_is_kept(self):
        s = self.spool(max_bytes=50)
        big, n = chunk("big", 0, 5)
        self.assertGreater(len(big), 50)
        self.assertEqual(await s.push(big, n), 0)
        self.assertEqual(await s.depth(), (1, 5))
        # The next push drops it, and the newcomer (also too big) stays alone.
        bigger, m = chunk("bigger", 5, 6)
        self.assertEqual(await s.push(bigger, m), 5)
        self.assertEqual(await self.frame_ids(s), ["bigger"])
        await self.assertMetaExact(s)

    async def test_counts_stay_exact_through_mixed_operations(self):
        s = self.spool(max_bytes=3000)
        pushed_messages, dropped, acked = 0, 0, 0
        for i in range(40):
            data, count = chunk("m%d" % i, i * 100, 1 + i % 7)
            dropped += await s.push(data, count, at_head=(i % 5 == 4))
            pushed_messages += count
            if i % 3 == 2:
                head = await s.head()
                frame_id, messages, _ = decode_chunk(head)
                self.assertTrue(await s.ack(frame_id))
                acked += len(messages)
            await self.assertMetaExact(s)
        _, held = await s.depth()
        self.assertEqual(pushed_messages, dropped + acked + held)

    # -- delete -------------------------------------------------------------------------------
    async def test_delete_removes_both_keys(self):
        s = self.spool()
        other = self.spool(8)
        await s.push(*chunk("f1", 0, 3))
        await other.push(*chunk("g1", 0, 1))
        self.assertEqual(await self.redis.exists(s.key), 1)
        self.assertEqual(await self.redis.exists(s.meta), 1)
        await s.delete()
        self.assertEqual(await self.redis.exists(s.key), 0)
        self.assertEqual(await self.redis.exists(s.meta), 0)
        self.assertEqual(await s.depth(), (0, 0))
        self.assertIsNone(await s.head())
        # Another drain's spool is untouched; deleting twice is harmless.
        self.assertEqual(await other.depth(), (1, 1))
        await s.delete()

    async def test_a_push_after_delete_starts_a_fresh_count(self):
        s = self.spool()
        await s.push(*chunk("f1", 0, 3))
        await s.delete()
        await s.push(*chunk("f2", 3, 2))
        self.assertEqual(await s.depth(), (1, 2))
        await self.assertMetaExact(s)

    # -- Redis unavailable ----------------------------------------------------------------------
    async def test_operations_fail_within_the_timeout_when_redis_is_gone(self):
        s = Spool(self.redis, 7, NODE, reactor, 10**9, timeout=0.5, keys=KEYS)
        await s.push(*chunk("f1", 0, 1))
        self.server.kill()
        began = reactor.seconds()
        for operation in (lambda: s.push(*chunk("f2", 1, 1)), s.head, lambda: s.ack("f1"), s.depth):
            with self.assertRaises(Exception):
                await operation()
        self.assertLess(reactor.seconds() - began, 4 * 0.5 + 2)
