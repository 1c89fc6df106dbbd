"""A config Redis that comes back empty (or another cluster's): no node adopts it, one re-seeds it.

Two real nodes on one config Redis without persistence and one shard Redis; a
channel with a token and an HTTP drain to a sink that fails, so the drain
spools. The config Redis is SIGKILLed and started again empty on the same
port while senders go on: no line may be lost (backlog, and the drain once
the sink recovers), no spool deleted, and the API must answer again (with the
--auth credential) once exactly one node has re-seeded the config.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet import threads
from twisted.trial import unittest

from tests.harness.cluster import (
    Pacer, Sender, World, backlog, metric_sum, redis, texts_of, wait_until,
)
from tests.harness.sinks import HttpSink


@pytest.fixture(scope="module")
def world():
    # Nodes a and b whose drains spool after 50 buffered lines (the default holds 1024).
    w = World("gen", shards=1, node_args=("--drain-buffer", "50"))
    try:
        w.start(("a", "b"))
        yield w
    finally:
        w.stop()


def spool_keys(w: World) -> set[bytes]:
    return {k for k in redis(w.shards[0], "KEYS", "lp:spool:*") if not k.endswith(b":meta")}


class EmptyConfigRedisTests(unittest.TestCase):
    timeout = 90

    @pytest.fixture(autouse=True)
    def _world(self, world):
        self.world = world

    def blocking(self, fn, *args, **kwargs):
        return threads.deferToThread(fn, *args, **kwargs)

    async def test_an_empty_config_redis_is_reseeded_by_one_node_and_nothing_is_lost(self):
        w = self.world
        sink = HttpSink()
        await sink.start()
        self.addCleanup(sink.stop)
        sink.behave("status", code=503)
        channel_id, tokens = await self.blocking(w.channel, w.a, "app")
        answer = await self.blocking(w.a.api, "POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url})
        self.assertEqual(answer.status, 201, answer)
        drain_path = f"/v3/channels/{channel_id}/drains/{answer.json()['id']}"
        await self.blocking(wait_until, lambda: w.b.api("GET", drain_path).status, lambda s: s == 200,
                            2.0, "the drain known to b")

        senders = [Sender(w.a, tokens["app"], "sa"), Sender(w.b, tokens["app"], "sb")]
        pacer = Pacer(senders, "gen", rate=40, batch=4)
        try:
            spooled = await self.blocking(wait_until, lambda: spool_keys(w), bool, 15.0, "a spool")

            # SIGKILL, then the same port again, empty.
            w.cfg.kill()
            assert w.cfg._launch(15)

            def reseeds() -> float:
                return sum(metric_sum(n, "logplex_config_reseeds_total") for n in (w.a, w.b))

            await self.blocking(wait_until, reseeds, lambda n: n >= 1, 15.0, "a re-seed")

            def api_answers() -> list[int]:
                return [n.api("GET", f"/v3/channels/{channel_id}").status for n in (w.a, w.b)]

            statuses = await self.blocking(wait_until, api_answers, lambda s: s == [200, 200], 15.0,
                                           "the API answering with the --auth credential after the re-seed")
            self.assertEqual(statuses, [200, 200])
            # A write works again, on both nodes: each judges the re-seeded config
            # within a second of it (the one that did not re-seed, at its next check).
            for node in (w.a, w.b):
                path = f"/v3/channels/{channel_id}-{node.proc.name}"
                status = await self.blocking(wait_until, lambda: node.api("PUT", path, {"tokens": ["x"]}).status,
                                             lambda s: s in (200, 201), 5.0, f"a write on {node.proc.name}")
                self.assertIn(status, (200, 201))
            await self.blocking(time.sleep, 1.0)  # senders keep sending after the re-seed
        finally:
            pacer.stop()
            for sender in senders:
                sender.close()

        # The spools are still there: nothing treated the drain as deleted.
        self.assertTrue(spooled <= await self.blocking(spool_keys, w), "a spool was deleted")
        reseeds = [await self.blocking(metric_sum, n, "logplex_config_reseeds_total") for n in (w.a, w.b)]
        self.assertEqual(sorted(reseeds), [0, 1], reseeds)
        logs = [n.proc.log_text() for n in (w.a, w.b)]
        self.assertEqual(sum(text.count("config_reseeded") for text in logs), 1)
        # The node that re-seeded refused first (the other may only have seen the re-seeded config).
        self.assertTrue(any("config_refused reason=empty" in text and "config_reseeded" in text for text in logs))

        sent = {s.procid: s.sent for s in senders}
        # The last lines reach the shard within a flush interval.
        messages = await self.blocking(
            wait_until, lambda: backlog(w.a, channel_id, 1500),
            lambda m: all(len(texts_of(m, p)) >= len(lines) for p, lines in sent.items()), 5.0, "the backlog")
        for procid, lines in sent.items():
            got = texts_of(messages, procid)
            self.assertEqual([t for t in lines if t not in set(got)], [], f"lost at the backlog ({procid})")

        sink.behave("ok")
        total = sum(len(v) for v in sent.values())
        await sink.wait_for(total, timeout=30)
        delivered = sink.messages()
        for procid, lines in sent.items():
            got = set(texts_of(delivered, procid))
            self.assertEqual([t for t in lines if t not in got], [], f"lost at the drain ({procid})")

    async def test_a_foreign_config_is_refused(self):
        w = self.world
        channel_id, tokens = await self.blocking(w.channel, w.a, "app")
        ours = await self.blocking(redis, w.cfg, "GET", "lp:cluster")
        self.assertTrue(ours)
        # Another cluster's config lands on this Redis (a wrong restore, a wrong URL).
        await self.blocking(redis, w.cfg, "SET", "lp:cluster", "another-cluster")
        await self.blocking(redis, w.cfg, "INCR", "lp:version")
        # As a restore would: the nodes' connections drop, they reload.
        await self.blocking(redis, w.cfg, "CLIENT", "KILL", "TYPE", "pubsub")

        def write_status() -> int:
            return w.a.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app", "more"]}).status

        status = await self.blocking(wait_until, write_status, lambda s: s == 503, 10.0, "writes refused")
        self.assertEqual(status, 503)
        answer = await self.blocking(w.a.api, "PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        self.assertIn(b"another cluster", answer.body)
        self.assertIn("config_refused reason=foreign", w.a.proc.log_text())
        # Still routing from its cache: the token is known.
        with Sender(w.a, tokens["app"], "sf") as sender:
            sender.send(["still routed"])
        got = await self.blocking(wait_until, lambda: texts_of(backlog(w.a, channel_id), "sf"), bool, 5.0,
                                  "the line in the backlog")
        self.assertEqual(got, ["still routed"])
        health = await self.blocking(w.a.api, "GET", "/healthcheck")
        self.assertEqual(health.status, 200)
        self.assertEqual(health.json()["config"], "refused")
        # Nobody re-seeds over another cluster's config.
        self.assertEqual(await self.blocking(redis, w.cfg, "GET", "lp:cluster"), b"another-cluster")
        # The operator puts this cluster's config back: the nodes adopt it again.
        await self.blocking(redis, w.cfg, "SET", "lp:cluster", ours)
        await self.blocking(redis, w.cfg, "CLIENT", "KILL", "TYPE", "pubsub")
        status = await self.blocking(wait_until, write_status, lambda s: s == 200, 10.0, "writes again")
        self.assertEqual(status, 200)
