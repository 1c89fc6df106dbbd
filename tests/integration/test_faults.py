"""Issue #4's faults, with real processes: a config Redis down, a shard down, a node killed.

Nodes a, b and c on one config Redis and two shard Redis (tests.harness.cluster),
shared by the module; the node-kill test runs last since c stays dead.

The Redis servers of these tests run without persistence. A production Redis
has it, so before an outage the test has the server write its dataset
(SAVE, or a save on shutdown) and it loads that when it starts again on the
same port: what is tested is logplex riding out the outage, not Redis losing
its data.

These are trial test cases (the drain sink is a Twisted server): everything
that blocks runs in a thread, and the outage windows are reactor sleeps.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet import reactor, task, threads
from twisted.trial import unittest

from logplex.backlog.ring import ShardRing
from tests.harness.cluster import (
    Pacer,
    Sender,
    World,
    backlog,
    backlog_keys,
    metric_sum,
    numsub,
    open_tail,
    ordered_subsequence,
    persist,
    redis,
    texts_of,
    try_backlog,
    wait_until,
    warm,
)
from tests.harness.client import basic, http_request, unique
from tests.harness.sinks import HttpSink

OUTAGE = 10.0


@pytest.fixture(scope="module")
def world():
    w = World("faults")
    try:
        w.start()
        yield w
    finally:
        w.stop()


class FaultTests(unittest.TestCase):
    timeout = 90

    @pytest.fixture(autouse=True)
    def _world(self, world):
        self.world = world

    # -- plumbing --------------------------------------------------------------------------------
    def blocking(self, fn, *args, **kwargs):
        return threads.deferToThread(fn, *args, **kwargs)

    async def sleep_until(self, moment: float) -> None:
        """The deliberate outage window: sleep (in the reactor) until time.monotonic() == moment."""
        await task.deferLater(reactor, max(0.0, moment - time.monotonic()), lambda: None)

    async def until(self, fetch, done, timeout: float, what: str):
        """wait_until in a thread: for fetches that block."""
        return await self.blocking(wait_until, fetch, done, timeout, what)

    async def drained(self, sink: HttpSink, counts: dict[str, int], timeout: float, what: str) -> list[bytes]:
        """The sink's messages once it has counts[procid] lines of each sender (polled in the reactor)."""
        deadline = time.monotonic() + timeout
        while True:
            messages = sink.messages()
            have = {procid: len(texts_of(messages, procid)) for procid in counts}
            if all(have[p] >= n for p, n in counts.items()):
                return messages
            if time.monotonic() >= deadline:
                self.fail(f"{what}: not within {timeout} s; the sink has {have} of {counts}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def sink(self) -> HttpSink:
        sink = HttpSink()
        await sink.start()
        self.addCleanup(sink.stop)
        return sink

    async def channel_with_drain(self, sink: HttpSink, channel_id: str | None = None):
        """A channel made on a with an `app` token and a drain to sink, known to every node."""
        w = self.world
        channel_id = channel_id or unique("fault")
        answer = await self.blocking(w.a.api, "PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        self.assertEqual(answer.status, 201, answer)
        token = answer.json()["tokens"]["app"]
        answer = await self.blocking(w.a.api, "POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url})
        self.assertEqual(answer.status, 201, answer)
        path = f"/v3/channels/{channel_id}/drains/{answer.json()['id']}"
        for node in (w.b, w.c):
            await self.until(lambda: node.api("GET", path).status, lambda s: s == 200, 2.0,
                             f"the drain on {node.proc.name}")
        return channel_id, token

    async def tail(self, creator, reader, channel_id):
        tail = await self.blocking(open_tail, creator, reader, channel_id)
        self.addCleanup(tail.close)
        return tail

    async def senders(self, token: str, *names: str) -> dict[str, Sender]:
        out = {}
        for name in names:
            out[name] = await self.blocking(Sender, self.world.nodes[name], token, f"s{name}")
            self.addCleanup(out[name].close)
        return out

    async def pacer(self, senders: list[Sender], tag: str, rate: float = 50) -> Pacer:
        pacer = Pacer(senders, tag, rate=rate)
        self.addCleanup(pacer.stopped.set)
        return pacer

    def assert_all_in_order(self, received: list[str], sender: Sender, where: str) -> None:
        self.assertEqual(received, sender.sent, f"{where}: {sender.procid}'s lines, all and in order")

    def api_error(self, answer) -> str:
        self.assertEqual(answer.status, 503, answer)
        doc = answer.json()
        self.assertIsInstance(doc, dict, answer)
        self.assertIsInstance(doc.get("error"), str, answer)
        return doc["error"]

    # -- 8. the config Redis down for 10 s -----------------------------------------------------------
    async def test_1_config_redis_down_ingest_tails_drains_go_on_writes_503_then_recover(self):
        w = self.world
        a, b, c = w.a, w.b, w.c
        sink = await self.sink()
        channel_id, token = await self.channel_with_drain(sink)
        described = (await self.blocking(a.api, "GET", f"/v3/channels/{channel_id}")).json()
        tail_a = await self.tail(a, a, channel_id)
        tail_b = await self.tail(a, b, channel_id)
        await self.blocking(warm, tail_b, a, token)
        await self.blocking(warm, tail_a, b, token)
        senders = await self.senders(token, "a", "b", "c")
        sa, sb, sc = senders["a"], senders["b"], senders["c"]
        # 20 lines a second each: the backlog (1500 lines) holds all of them at the end.
        pacer = await self.pacer([sa, sb, sc], "cfg", rate=20)
        await sink.wait_for(30, timeout=5)

        await self.blocking(persist, w.cfg)
        w.cfg.kill()
        down = time.monotonic()
        # API writes answer 503 with an error sentence, within the Redis timeout and a margin.
        for node, method, path, body in [
            (a, "PUT", f"/v3/channels/{unique('during')}", {"tokens": ["app"]}),
            (b, "POST", f"/v3/channels/{channel_id}/tokens", {"name": "more"}),
            (c, "POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url + "?2"}),
        ]:
            began = time.monotonic()
            answer = await self.blocking(node.api, method, path, body)
            self.assertIn("config Redis", self.api_error(answer))
            self.assertLess(time.monotonic() - began, 3.0, f"{method} {path} on {node.proc.name}")
        # Reads of the config come from every node's cache; backlogs from the shards.
        for node in (a, b, c):
            answer = await self.blocking(node.api, "GET", f"/v3/channels/{channel_id}")
            self.assertEqual((answer.status, answer.json()), (200, described))
        self.assertTrue(texts_of(await self.blocking(backlog, b, channel_id), "sc"))

        await self.sleep_until(down + OUTAGE - 2.0)
        # Late in the outage: what was sent by then reached the local tails and the drain.
        mark = {s.procid: len(s.sent) for s in (sa, sb, sc)}
        await self.until(lambda: (len(tail_a.texts("sa")), len(tail_b.texts("sb"))),
                         lambda n: n[0] >= mark["sa"] and n[1] >= mark["sb"], 1.5,
                         "the local tails of a and b during the outage")
        await self.drained(sink, mark, 1.5, "the drain during the outage")
        await self.sleep_until(down + OUTAGE)
        w.cfg.restart()
        up = time.monotonic()

        # Recovery by itself: writes again, then the change feed again (every node resubscribed).
        made = unique("after")
        answer = await self.until(lambda: a.api("PUT", f"/v3/channels/{made}", {"tokens": ["app"]}),
                                  lambda r: r.status != 503, 15.0, "API writes answer again")
        self.assertEqual(answer.status, 201, answer)
        recovered = time.monotonic() - up
        await self.until(lambda: numsub(w.cfg, "lp:config"), lambda n: n == 3, 5.0, "three feeds back")
        answer = await self.blocking(a.api, "POST", f"/v3/channels/{made}/tokens", {"name": "late"})
        self.assertEqual(answer.status, 200, answer)
        written = time.monotonic()
        for node in (b, c):
            await self.until(lambda: "late" in node.api("GET", f"/v3/channels/{made}").json().get("tokens", {}),
                             bool, max(0.0, written + 1.0 - time.monotonic()), f"a change on a, on {node.proc.name}")
        # The bus carries a's lines to b's tail again (its publishing connection reconnects with
        # txredisapi's back-off, at most 10 s apart), and every node's lines to the others.
        resumed = len(sa.sent)
        await self.until(lambda: tail_b.texts("sa"), lambda t: t and t[-1] in sa.sent[resumed:], 12.0,
                         "a's lines on b's tail after the restart")
        bus_back = time.monotonic() - up
        pacer.stop()
        await self.blocking(w.bus_ready, 12.0)

        # Nothing lost where the design promises it: local tails, the drain, the backlog.
        messages = await self.drained(sink, {s.procid: len(s.sent) for s in (sa, sb, sc)}, 10.0, "the drain")
        for sender in (sa, sb, sc):
            self.assert_all_in_order(texts_of(messages, sender.procid), sender, "the drain")
        got = await self.until(lambda: (tail_a.texts("sa"), tail_b.texts("sb")),
                               lambda t: len(t[0]) >= len(sa.sent) and len(t[1]) >= len(sb.sent), 3.0,
                               "local tails complete")
        self.assert_all_in_order(got[0], sa, "a's own tail")
        self.assert_all_in_order(got[1], sb, "b's own tail")
        # Read on c: the other nodes' last lines reach the shard within a flush interval.
        stored = await self.until(lambda: backlog(c, channel_id), lambda m: all(
            len(texts_of(m, s.procid)) >= len(s.sent) for s in (sa, sb, sc)), 3.0, "the backlog complete")
        for sender in (sa, sb, sc):
            self.assert_all_in_order(texts_of(stored, sender.procid), sender, "the backlog")
        # Across nodes, tails get what the bus carried: in order, possibly with a gap for the outage.
        self.assertTrue(ordered_subsequence(tail_b.texts("sa"), sa.sent))
        self.assertTrue(ordered_subsequence(tail_a.texts("sb"), sb.sent))
        listed = await self.until(lambda: a.api("GET", "/v3/nodes").json(),
                                  lambda v: [n["node"] for n in v] == ["a", "b", "c"], 3.0, "nodes listed again")
        self.assertEqual(len(listed), 3)
        self.gap = {"b's tail misses of a": len(sa.sent) - len(tail_b.texts("sa")),
                    "a's tail misses of b": len(sb.sent) - len(tail_a.texts("sb")),
                    "dropped on a's bus": await self.blocking(metric_sum, a, "logplex_tail_bus_dropped_total"),
                    "writes back after": round(recovered, 1), "a to b's tail back after": round(bus_back, 1)}
        print("config outage:", self.gap)

    # -- /v3/nodes during a config outage ----------------------------------------------------------------
    async def test_2_nodes_list_answers_503_promptly_while_config_redis_is_down(self):
        w = self.world
        await self.blocking(persist, w.cfg)
        w.cfg.kill()
        try:
            answer = await self.blocking(http_request, w.b.api_port, "GET", "/v3/nodes",
                                         headers={"Authorization": basic("admin", "secret")}, timeout=3.0)
            self.api_error(answer)
        finally:
            w.cfg.restart()
            await self.until(lambda: w.a.api("PUT", f"/v3/channels/{unique('back')}", {"tokens": []}).status,
                             lambda s: s == 201, 15.0, "writes again after the restart")
            await self.blocking(w.bus_ready, 12.0)

    # -- 9. one shard down for 10 s ------------------------------------------------------------------------
    async def test_3_shard_down_tails_drains_go_on_backlog_writes_retried(self):
        w = self.world
        a, b, c = w.a, w.b, w.c
        ring = ShardRing(["shard-0", "shard-1"])
        channel_id = unique("fault")
        while ring.shard(channel_id) != "shard-1":
            channel_id = unique("fault")
        other = unique("fault")
        while ring.shard(other) != "shard-0":
            other = unique("fault")
        sink = await self.sink()
        channel_id, token = await self.channel_with_drain(sink, channel_id)
        answer = await self.blocking(a.api, "PUT", f"/v3/channels/{other}", {"tokens": ["app"]})
        other_token = answer.json()["tokens"]["app"]
        tail_b = await self.tail(a, b, channel_id)
        await self.blocking(warm, tail_b, a, token)
        await self.blocking(warm, tail_b, c, token)
        senders = await self.senders(token, "a", "c")
        sa, sc = senders["a"], senders["c"]
        others = await self.blocking(Sender, a, other_token, "other")
        self.addCleanup(others.close)
        pacer = await self.pacer([sa, sc, others], "shard")
        shard = w.shards[1]
        await self.until(lambda: backlog_keys(shard, channel_id), bool, 3.0, "the channel's backlog on shard-1")
        dropped_before = sum([await self.blocking(metric_sum, n, "logplex_backlog_dropped_total")
                              for n in (a, b, c)])

        # Down for 10 s: a real shard keeps its data, so it saves on the way down.
        await self.blocking(redis, shard, "CONFIG", "SET", "save", "3600 1")
        shard.stop()
        down = time.monotonic()
        # Reading that channel's backlog fails promptly; the other shard's channels are fine.
        began = time.monotonic()
        answer = await self.blocking(a.api, "GET", f"/v3/channels/{channel_id}/logs")
        self.assertIn("shard", self.api_error(answer))
        self.assertLess(time.monotonic() - began, 3.0)
        self.assertTrue(texts_of(await self.blocking(backlog, b, other), "other"))

        await self.sleep_until(down + OUTAGE - 2.0)
        mark = {s.procid: len(s.sent) for s in (sa, sc)}
        await self.until(lambda: (len(tail_b.texts("sa")), len(tail_b.texts("sc"))),
                         lambda n: n[0] >= mark["sa"] and n[1] >= mark["sc"], 1.5, "b's tail during the outage")
        await self.drained(sink, mark, 1.5, "the drain during the outage")
        await self.sleep_until(down + OUTAGE)
        shard.restart()
        up = time.monotonic()

        # Recovery by itself: the queued writes land; then stop sending and account for every line.
        resumed = len(sa.sent)
        await self.until(lambda: try_backlog(b, channel_id), lambda m: m is not None and any(
            t in sa.sent[resumed:] for t in texts_of(m, "sa")), 15.0, "backlog writes after the restart")
        recovered = time.monotonic() - up
        pacer.stop()
        expected = len(sa.sent) + len(sc.sent)
        stored = await self.until(lambda: try_backlog(b, channel_id),
                                  lambda m: m is not None and len(texts_of(m, "sa") + texts_of(m, "sc")) >= expected,
                                  5.0, "every line in the backlog")
        dropped = sum([await self.blocking(metric_sum, n, "logplex_backlog_dropped_total")
                       for n in (a, b, c)]) - dropped_before
        for sender in (sa, sc):
            self.assertTrue(ordered_subsequence(texts_of(stored, sender.procid), sender.sent))
        self.assertEqual(len(texts_of(stored, "sa") + texts_of(stored, "sc")) + dropped, expected)
        # Far below the queue's bound: nothing had to be dropped.
        self.assertEqual(dropped, 0)
        for sender in (sa, sc):
            self.assert_all_in_order(texts_of(stored, sender.procid), sender, "the backlog")
        # Tails and the drain never depended on the shard.
        got = await self.until(lambda: (tail_b.texts("sa"), tail_b.texts("sc")),
                               lambda t: len(t[0]) >= len(sa.sent) and len(t[1]) >= len(sc.sent), 3.0,
                               "the tail complete")
        self.assert_all_in_order(got[0], sa, "b's tail")
        self.assert_all_in_order(got[1], sc, "b's tail")
        messages = await self.drained(sink, {s.procid: len(s.sent) for s in (sa, sc)}, 10.0, "the drain")
        for sender in (sa, sc):
            self.assert_all_in_order(texts_of(messages, sender.procid), sender, "the drain")
        print("shard outage: backlog writes back after", round(recovered, 1), "s")

    # -- 10. a node killed with SIGKILL (last: c stays dead) ------------------------------------------------
    async def test_4_node_killed_others_tails_and_drains_unaffected(self):
        w = self.world
        a, b, c = w.a, w.b, w.c
        sink = await self.sink()
        channel_id, token = await self.channel_with_drain(sink)
        tail_b = await self.tail(a, b, channel_id)
        tail_a = await self.tail(c, a, channel_id)
        for node in (a, b, c):
            await self.blocking(warm, tail_b if node is not b else tail_a, node, token)
        await self.blocking(warm, tail_a, c, token)
        senders = await self.senders(token, "a", "b", "c")
        sa, sb, sc = senders["a"], senders["b"], senders["c"]
        pacer = await self.pacer([sa, sb, sc], "kill")
        await sink.wait_for(60, timeout=5)

        c.proc.kill()
        at_kill = {s.procid: len(s.sent) for s in (sa, sb)}
        await self.until(lambda: (len(tail_b.texts("sa")), len(tail_a.texts("sb"))),
                         lambda n: n[0] >= at_kill["sa"] + 50 and n[1] >= at_kill["sb"] + 50, 5.0,
                         "tails keep receiving after the kill")
        answer = await self.blocking(a.api, "PUT", f"/v3/channels/{unique('alive')}", {"tokens": ["app"]})
        self.assertEqual(answer.status, 201, answer)
        pacer.stop()

        messages = await self.drained(sink, {s.procid: len(s.sent) for s in (sa, sb)}, 10.0, "the drain")
        for sender in (sa, sb):
            self.assert_all_in_order(texts_of(messages, sender.procid), sender, "the drain")
        self.assertTrue(ordered_subsequence(texts_of(messages, "sc"), sc.sent))
        for tail, local, remote in ((tail_b, sb, sa), (tail_a, sa, sb)):
            got = await self.until(lambda: (tail.texts(local.procid), tail.texts(remote.procid)),
                                   lambda t: len(t[0]) >= len(local.sent) and len(t[1]) >= len(remote.sent),
                                   3.0, "tails complete")
            self.assert_all_in_order(got[0], local, "a tail")
            self.assert_all_in_order(got[1], remote, "a tail")
            self.assertTrue(ordered_subsequence(tail.texts("sc"), sc.sent))
