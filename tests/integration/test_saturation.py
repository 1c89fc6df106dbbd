"""Signals to scale on, on a real node: time senders are held shows under their listener, lag and busy are there.

One node on a Redis of the module's own, with a drain buffer of 64 messages
and --drain-pushback 2 (as in test_pushback.py): a drain endpoint that
answers slowly fills the buffer at the first read of a flood, and the
node holds the sender back until the drain has room.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from tests.harness.client import Node, basic, logplex1, syslog_message
from tests.harness.procs import RedisServer
from tests.harness.client import Sender, stop_node
from tests.harness.trial import NodeCase, metric_samples, start_node, texts
from tests.harness.sinks import HttpSink

NODE = "saturation"


@pytest.fixture(scope="module")
def saturation_node():
    root = tempfile.mkdtemp(prefix="logplex-saturation-")
    redis = RedisServer(os.path.join(root, "redis"))
    redis.start()
    node = None
    try:
        # Batches of 8-16 KiB: a drain holds its senders once its buffer is full and a largest
        # batch waits behind the one in flight, so these tests' floods of 1,000-2,000 lines are held.
        node = start_node(tempfile.mkdtemp(dir=root), redis.url, NODE, "--allow-private-drains",
                          "--drain-buffer", "64", "--drain-pushback", "2",
                          "--http-drain-target-bytes", "8192", "--http-drain-max-bytes", "16384")
        yield node
    finally:
        try:
            if node is not None:
                stop_node(node)
        finally:
            if node is not None:
                node.proc.kill()
            redis.stop()
            shutil.rmtree(root, ignore_errors=True)


class SaturationTests(NodeCase):
    channel_prefix = "saturation"
    timeout = 60

    @pytest.fixture(autouse=True)
    def _node(self, saturation_node):
        self.node: Node = saturation_node

    async def samples(self) -> dict[str, float]:
        return await self.blocking(metric_samples, self.node)

    async def slow_drained_channel(self) -> tuple[HttpSink, str]:
        """A channel whose one drain answers each request 0.3 s late: (its sink, the channel's token)."""
        sink = await self.started(HttpSink())
        sink.behave("slow", delay=0.3)
        channel_id, token = await self.channel()
        answer = await self.api("POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url})
        self.assertEqual(answer.status, 201, answer)
        drain_id = answer.json()["id"]
        await self.until(lambda: self.api("GET", f"/v3/channels/{channel_id}/drains/{drain_id}"),
                         lambda a: a.status == 200 and a.json().get("state") is not None, 5,
                         "the node runs the new drain")
        return sink, token

    async def test_a_held_syslog_sender_shows_under_its_listener(self):
        sink, token = await self.slow_drained_channel()
        listener = f'{{listener="syslog:{self.node.proc.syslog_port}"}}'
        before = await self.samples()
        sender = await self.blocking(Sender, self.node.syslog_port, token)
        self.addCleanup(sender.close)
        lines = texts("s", 2000)
        await self.blocking(sender.send, lines, chunk=500)
        # While the drain delivers, the sender is held: the seconds grow
        # during the hold, not only when it ends.
        during = await self.until(
            self.samples, lambda s: s.get("logplex_ingress_held" + listener, 0) >= 1, 10,
            "the syslog connection counted as held now")
        self.assertGreater(during["logplex_ingress_held_seconds_total" + listener],
                           before.get("logplex_ingress_held_seconds_total" + listener, 0))
        await sink.wait_for(len(lines), timeout=30)
        after = await self.until(
            self.samples, lambda s: s.get("logplex_ingress_held" + listener, 0) == 0, 10,
            "the syslog connection no longer held")
        seconds = after["logplex_ingress_held_seconds_total" + listener] \
            - before.get("logplex_ingress_held_seconds_total" + listener, 0)
        holds = after["logplex_ingress_holds_total" + listener] \
            - before.get("logplex_ingress_holds_total" + listener, 0)
        self.assertGreater(holds, 0)
        # 2,000 lines through a drain that takes 0.3 s a request: held for seconds, not milliseconds.
        self.assertGreater(seconds, 0.5, (holds, during))
        # The node's unlabelled counter (per hold, from the drains) saw the same holds.
        self.assertGreater(after["logplex_senders_held_seconds_total"],
                           before.get("logplex_senders_held_seconds_total", 0))
        # Nothing of the HTTP input's.
        self.assertEqual(after.get('logplex_ingress_held_seconds_total{listener="logs"}', 0),
                         before.get('logplex_ingress_held_seconds_total{listener="logs"}', 0))

    async def test_a_held_post_shows_under_the_logs_listener(self):
        sink, token = await self.slow_drained_channel()
        listener = '{listener="logs"}'
        before = await self.samples()
        body = logplex1(syslog_message(token, "web.1", t) for t in texts("p", 1000))
        began = time.monotonic()
        answer = await self.blocking(self.node.post_logs, body, auth=basic("token", token))
        took = time.monotonic() - began
        self.assertEqual(answer.status, 204, answer)
        after = await self.samples()
        self.assertEqual(after["logplex_ingress_holds_total" + listener]
                         - before.get("logplex_ingress_holds_total" + listener, 0), 1)
        seconds = after["logplex_ingress_held_seconds_total" + listener] \
            - before.get("logplex_ingress_held_seconds_total" + listener, 0)
        # The answer waited at least the drain's first 0.3 s answer; the
        # node counts no more than the sender waited.
        self.assertGreaterEqual(seconds, 0.25)
        self.assertLessEqual(seconds, took)
        self.assertEqual(after["logplex_ingress_held" + listener], 0)
        await sink.wait_for(1000, timeout=30)

    async def test_lag_and_busy_are_on_metrics_for_the_node(self):
        worker = f'{{worker="{NODE}"}}'
        samples = await self.until(
            self.samples, lambda s: s.get("logplex_worker_cpu_ratio" + worker, 0) > 0, 5,
            "a first busy sample (one a second)")
        for name in ("logplex_worker_busy_ratio", "logplex_worker_cpu_ratio"):
            self.assertTrue(0 <= samples[name + worker] <= 1, (name, samples[name + worker]))
        # An idle node's reactor runs its timers about on time.
        self.assertLess(samples["logplex_reactor_lag_seconds" + worker], 0.5)
        self.assertGreaterEqual(samples["logplex_reactor_lag_max_seconds" + worker],
                                samples["logplex_reactor_lag_seconds" + worker])
