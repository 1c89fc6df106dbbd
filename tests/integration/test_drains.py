"""Drains end to end: real node processes deliver to real HTTP(S) and syslog receivers.

The receivers (tests.harness.sinks) are Twisted servers, so these are trial test
cases run by pytest: each test runs in the reactor, and whatever blocks (the
node processes, the API and syslog clients of tests.harness.client)
runs in a thread through deferToThread, leaving the reactor free to answer
the node's drain requests meanwhile.

One node (drains to loopback allowed, quick retries, the test CA trusted) is
shared by the module; the tests that need other settings, or that stop a
node, start their own.
"""

from __future__ import annotations

import base64
import collections
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Any

import pytest
from twisted.internet import defer, reactor

import logplex
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from tests.harness.certs import WRONG_HOSTNAME, TestCA
from tests.harness.client import TS, Node, Sender, stop_node
from tests.harness.procs import RedisServer
from tests.harness.sinks import HttpSink
from tests.harness.syslog_sink import SyslogSink
from tests.harness.trial import NodeCase, http_frame, metric_samples, start_node, texts

SHARED_NODE = "drains-shared"
OVERFLOW_NODE = "drains-overflow"
# Quick retries and a short HTTP timeout keep the outages of these tests to seconds.
FAST = ["--allow-private-drains", "--drain-backoff-max", "1", "--http-drain-timeout", "1"]
L10 = re.compile(
    rb"<172>1 \S+ host heroku logplex - "
    rb"Error L10 \(output buffer overflow\): (\d+) messages dropped since \S+\.\n\Z"
)
L14 = b"Error L14 (certificate validation):"


# -- blocking helpers (run in threads) ----------------------------------------------------
def syslog_frame(drain_token: str, text: str) -> bytes:
    """What a syslog drain writes for it: the drain token as HOSTNAME, NILVALUE MSGID and SD."""
    return f"<134>1 {TS} {drain_token} app web.1 - - {text}\n".encode()


def index_of(frame: bytes) -> int:
    return int(frame.rstrip(b"\n").rsplit(b" ", 1)[1])


def describe_requests(sink: HttpSink) -> list:
    """Each request the sink saw, in short: for failure messages."""
    return [(r.frame_id[:8] if r.frame_id else None, r.status or r.mode, len(r.frames),
             r.frames[0][:70] if r.frames else b"") for r in sink.requests]


# -- the module's shared world ---------------------------------------------------------------
class World:
    def __init__(self, root: str) -> None:
        self.root = root
        self.redis = RedisServer(os.path.join(root, "redis"))
        self.ca = TestCA(os.path.join(root, "ca"))
        self.stranger = TestCA(os.path.join(root, "ca"), name="unrelated CA")
        self.node: Node | None = None
        self._overflow: Node | None = None

    def dir(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)

    def overflow_node(self) -> Node:
        """A node with a tiny drain buffer, spool and batch, started when first needed."""
        if self._overflow is None:
            self._overflow = start_node(
                self.dir("overflow"), self.redis.url, OVERFLOW_NODE, *FAST,
                "--drain-buffer", "10", "--drain-spool-bytes", "20000",
                "--http-drain-target-bytes", "2000")
        return self._overflow

    def stop(self) -> None:
        nodes = [n for n in (self.node, self._overflow) if n is not None]
        self.node = self._overflow = None
        try:
            for node in nodes:
                stop_node(node)
        finally:
            for node in nodes:
                node.proc.kill()


@pytest.fixture(scope="module")
def drain_world():
    root = tempfile.mkdtemp(prefix="logplex-drains-")
    world = World(root)
    world.redis.start()
    try:
        world.node = start_node(world.dir("shared"), world.redis.url, SHARED_NODE, *FAST,
                                "--drain-ca-file", world.ca.ca_path)
        yield world
    finally:
        try:
            world.stop()
        finally:
            world.redis.stop()
        shutil.rmtree(root, ignore_errors=True)


class DrainTests(NodeCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _world(self, drain_world):
        self.world = drain_world
        self.node = drain_world.node

    # -- plumbing ------------------------------------------------------------------------------
    async def add_drain(self, channel_id: str, url: str, node: Node | None = None) -> tuple[int, str]:
        answer = await self.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url}, node)
        self.assertEqual(answer.status, 201, answer)
        doc = answer.json()
        self.assertTrue(doc["token"].startswith("d."), doc)
        return doc["id"], doc["token"]

    async def sender(self, token: str, node: Node | None = None) -> Sender:
        sender = await self.blocking(Sender, (node or self.node).syslog_port, token)
        self.addCleanup(sender.close)
        return sender

    async def send(self, sender: Sender, lines: list[str], **kwargs: Any) -> None:
        await self.blocking(sender.send, lines, **kwargs)

    async def redis_client(self, url: str):
        client = connect(parse_redis_url(url), poolsize=1, reply_timeout=5)
        self.addCleanup(client.disconnect)
        return client

    async def settled(self, node: Node, channel_id: str, drain_id: int, node_name: str,
                      routed: int) -> None:
        """Wait until the node routed `routed` messages in all and the drain holds no overflow
        in memory, with every spool write done (Redis counts what the node counts)."""
        client = await self.redis_client(self.world.redis.url)
        meta = b"lp:spool:%d:%s:meta" % (drain_id, node_name.encode())

        async def look():
            samples = await self.blocking(metric_samples, node)
            state = await self.state(channel_id, drain_id, node)
            spooled = int(await client.hget(meta, "messages") or 0)
            return (samples.get("logplex_messages_routed_total"),
                    samples.get(f'logplex_drain_buffered{{drain="{drain_id}"}}'),
                    state["spool_depth"], spooled)

        await self.until(look, lambda v: v[0] == routed and v[1] <= 10 and v[2] == v[3], 10,
                         "routed, overflow spilled, spool writes done", node)

    # -- 1. an HTTP drain ---------------------------------------------------------------------------
    async def test_http_drain_delivers_in_order_with_logplex_headers(self):
        sink = await self.started(HttpSink(path="/logs"))
        channel_id, token = await self.channel()
        url = f"http://user:pa%20ss@127.0.0.1:{sink.port}/logs?x=1"
        drain_id, drain_token = await self.add_drain(channel_id, url)
        sender = await self.sender(token)
        sent: list[str] = []
        # Three groups, each waited for, so that there are several batches.
        for group in range(3):
            lines = texts(f"g{group}", 100)
            sent += lines
            await self.send(sender, lines)
            await sink.wait_for(len(sent), timeout=10)
        self.assertEqual(sink.messages(), [http_frame(t) for t in sent])

        requests = sink.requests
        self.assertGreaterEqual(len(requests), 3)
        frame_ids = [r.frame_id for r in requests]
        self.assertEqual(len(set(frame_ids)), len(frame_ids), "a Logplex-Frame-Id was used twice")
        credentials = base64.b64encode(b"user:pa ss")
        for r in requests:
            self.assertEqual((r.method, r.path, r.query), (b"POST", b"/logs", {b"x": [b"1"]}))
            self.assertEqual(r.status, 204)
            self.assertIsNone(r.framing_error)
            self.assertEqual(r.headers[b"content-type"], b"application/logplex-1")
            self.assertEqual(r.headers[b"logplex-msg-count"], str(len(r.frames)).encode())
            self.assertRegex(r.frame_id, rb"\A\S{8,}\Z")
            self.assertEqual(r.headers[b"logplex-drain-token"], drain_token.encode())
            self.assertEqual(r.headers[b"user-agent"], b"Logplex/" + logplex.__version__.encode())
            self.assertEqual(r.headers[b"authorization"], b"Basic " + credentials)
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 300,
                                      "delivered reaches 300")
        self.assertEqual((state["dropped"], state["retried"], state["buffered"], state["spool_depth"]),
                         (0, 0, 0, 0))

    # -- 2. a long 503, at ~1000 messages a second -----------------------------------------------
    async def test_outage_of_503s_loses_nothing(self):
        sink = await self.started(HttpSink())
        sink.behave("status", code=503)
        channel_id, token = await self.channel()
        drain_id, _ = await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)
        lines = texts("o", 5000)
        await self.send(sender, lines, rate=1000, chunk=50)
        self.assertEqual(sink.messages(), [])
        # More than the memory buffer (1024) came in: the rest waits in the spool.
        during = await self.state(channel_id, drain_id)
        self.assertGreater(during["spool_depth"], 0, during)
        sink.behave("ok")
        await sink.wait_for(5000, timeout=30)
        got = sink.messages()
        self.assertFalse([m for m in got if b"Error L10" in m], "an L10 with nothing lost")
        self.assertEqual(got, [http_frame(t) for t in lines])
        tries = collections.Counter(r.frame_id for r in sink.requests)
        self.assertTrue(any(n > 1 for n in tries.values()), "no batch was retried")
        for r in sink.requests:
            self.assertIn(r.status, (204, 503))
        state = await self.wait_state(
            channel_id, drain_id, lambda s: s["spool_depth"] == 0 and s["buffered"] == 0,
            "spool and buffer empty after the outage")
        self.assertGreater(state["retried"], 0)
        self.assertEqual(state["dropped"], 0)
        self.assertEqual(state["delivered"], 5000)
        self.assertIn("503", state["last_error"] or "")

    # -- 3. Retry-After, and a refused batch ------------------------------------------------------------
    async def test_retry_after_is_honoured_and_a_400_batch_is_dropped(self):
        sink = await self.started(HttpSink())
        channel_id, token = await self.channel()
        drain_id, _ = await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)
        first = texts("a", 5)
        await self.send(sender, first)
        await sink.wait_for(5)

        k = sink.attempts
        sink.behave("status", code=429, retry_after=2, times=1)
        second = texts("b", 5)
        await self.send(sender, second)
        await sink.wait_for_attempts(k + 1, timeout=5)
        refused_at = reactor.seconds()
        await sink.wait_for_attempts(k + 2, timeout=10)
        retried_at = reactor.seconds()
        waited = retried_at - refused_at
        self.assertGreaterEqual(waited, 1.8, "the retry came before Retry-After: 2 ran out")
        self.assertLess(waited, 4.0)
        refused, retry = sink.requests[k:k + 2]
        self.assertEqual((refused.status, retry.frame_id), (429, refused.frame_id))
        await sink.wait_for(10)

        k = sink.attempts
        sink.behave("status", code=400, times=1)
        third = texts("c", 5)
        await self.send(sender, third)
        await sink.wait_for_attempts(k + 1, timeout=5)
        fourth = texts("d", 5)
        await self.send(sender, fourth)
        await sink.wait_for(16, timeout=5)
        bad = sink.requests[k]
        self.assertEqual(bad.status, 400)
        self.assertEqual(bad.frames, [http_frame(t) for t in third])
        # Refused, so not retried: that frame id never comes again.
        self.assertEqual([r.frame_id for r in sink.requests].count(bad.frame_id), 1)
        # The next delivered batch opens with logplex's L10 for the refused lines.
        *delivered, l10 = sink.messages()[:11]
        self.assertEqual(delivered, [http_frame(t) for t in first + second])
        self.assertIn(b" heroku logplex - Error L10 (output buffer overflow): 5 messages dropped since ", l10)
        self.assertEqual(sink.messages()[11:], [http_frame(t) for t in fourth])
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 15,
                                      "delivered reaches 15")
        self.assertEqual(state["dropped"], 5)
        self.assertGreaterEqual(state["retried"], 1)
        self.assertIn("400", state["last_error"] or "")
        samples = await self.blocking(metric_samples, self.node)
        self.assertEqual(samples.get(f'logplex_drain_dropped_total{{drain="{drain_id}",reason="rejected"}}'), 5)

    # -- 4. dropped connections and hung requests ----------------------------------------------------
    async def test_closed_and_hung_requests_are_retried(self):
        sink = await self.started(HttpSink())
        channel_id, token = await self.channel()
        drain_id, _ = await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)

        sink.behave("close", times=2)
        first = texts("close", 10)
        await self.send(sender, first)
        await sink.wait_for(10, timeout=10)
        self.assertEqual([r.mode for r in sink.requests], ["close", "close", "ok"])
        self.assertEqual(len({r.frame_id for r in sink.requests}), 1)

        sink.behave("hang", times=1)
        second = texts("hang", 10)
        await self.send(sender, second)
        await sink.wait_for_attempts(4, timeout=5)
        hung_at = reactor.seconds()
        await sink.wait_for(20, timeout=10)
        # The node gave up on the hung request after --http-drain-timeout 1.
        self.assertGreaterEqual(reactor.seconds() - hung_at, 0.9)
        hung, retry = sink.requests[3:5]
        self.assertEqual((hung.mode, hung.status), ("hang", None))
        self.assertEqual((retry.frame_id, retry.status), (hung.frame_id, 204))
        self.assertEqual(sink.messages(), [http_frame(t) for t in first + second])
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 20,
                                      "delivered reaches 20")
        self.assertEqual(state["retried"], 3)
        self.assertEqual(state["dropped"], 0)

    # -- 5. HTTPS ------------------------------------------------------------------------------------
    async def test_https_verifies_the_certificate_and_reports_l14(self):
        good = await self.started(HttpSink(tls=self.world.ca.issue(["localhost"])))
        strange = await self.started(HttpSink(tls=self.world.stranger.issue(["localhost"])))
        wrong_host = await self.started(HttpSink(tls=self.world.ca.issue([WRONG_HOSTNAME], ips=[])))

        # A trusted certificate: delivered.
        ok_channel, ok_token = await self.channel()
        await self.add_drain(ok_channel, good.url)
        ok_sender = await self.sender(ok_token)
        await self.send(ok_sender, texts("tls", 5))
        await good.wait_for(5, timeout=10)
        self.assertEqual(good.messages(), [http_frame(t) for t in texts("tls", 5)])

        # An unknown CA, and a trusted CA's certificate for another host: refused.
        bad = {}
        for name, sink in (("stranger", strange), ("wrong-host", wrong_host)):
            channel_id, token = await self.channel()
            drain_id, _ = await self.add_drain(channel_id, sink.url)
            sender = await self.sender(token)
            await self.send(sender, texts(name, 5))
            bad[name] = (channel_id, drain_id)
        for name, (channel_id, drain_id) in bad.items():
            lines = await self.until(lambda: self.backlog(channel_id),
                                     lambda lines: any(L14 in line for line in lines), 10,
                                     f"an L14 in the backlog of the {name} channel")
            [l14] = [line for line in lines if L14 in line]
            self.assertRegex(l14, rb"\A<172>1 \S+ host heroku logplex - Error L14 ")
            state = await self.state(channel_id, drain_id)
            self.assertEqual(state["delivered"], 0)
            self.assertIsNotNone(state["last_error"])
        self.assertEqual((strange.attempts, wrong_host.attempts), (0, 0))

        # Pointed at a good receiver, the drain delivers what it held.
        channel_id, drain_id = bad["stranger"]
        answer = await self.api("PUT", f"/v3/channels/{channel_id}/drains/{drain_id}", {"url": good.url})
        self.assertEqual(answer.status, 200, answer)
        await good.wait_for(10, timeout=5)
        app = [m for m in good.messages() if b" host app " in m]
        self.assertEqual(app, [http_frame(t) for t in texts("tls", 5) + texts("stranger", 5)])
        self.assertEqual(strange.attempts, 0)

    # -- 6. syslog drains ---------------------------------------------------------------------------
    async def check_syslog_drain(self, sink: SyslogSink) -> None:
        channel_id, token = await self.channel()
        drain_id, drain_token = await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)
        first = texts("s", 50)
        await self.send(sender, first)
        await sink.wait_for(50, timeout=10)
        self.assertEqual(sink.frames, [syslog_frame(drain_token, t) for t in first])
        self.assertEqual(sink.connections, 1)

        # The receiver restarts: what the node wrote into the dying connection
        # may be lost (syslog has no acknowledgement), but it reconnects and
        # the messages after that arrive.
        await sink.close_all()
        probes: list[str] = []
        for i in range(100):
            if sink.connections > 1 and len(sink.frames) > 50:
                break
            probe = texts("p", 5, start=5 * i)
            probes += probe
            await self.send(sender, probe)
            await self.sleep(0.1)
        self.assertGreater(sink.connections, 1, "the node did not reconnect")
        last = texts("z", 20)
        await self.send(sender, last)
        expected = [syslog_frame(drain_token, t) for t in first + probes + last]
        await self.until(lambda: defer.succeed(sink.frames),
                         lambda frames: frames[-20:] == expected[-20:], 10,
                         "the messages after the reconnect")
        frames = sink.frames
        # Nothing twice, nothing out of order, nothing that was not sent.
        positions = [expected.index(f) for f in frames]
        self.assertEqual(positions, sorted(set(positions)))
        self.assertEqual(frames[:50], expected[:50])
        state = await self.state(channel_id, drain_id)
        self.assertEqual(state["dropped"], 0)

    async def test_syslog_tcp_drain(self):
        await self.check_syslog_drain(await self.started(SyslogSink()))

    async def test_syslog_tls_drain(self):
        await self.check_syslog_drain(
            await self.started(SyslogSink(tls=self.world.ca.issue(["localhost"]))))

    async def test_a_deleted_syslog_tls_drain_closes_its_connection(self):
        # It used to stay open for good, the receiver's and the node's socket with it:
        # the TLS transport waited for the drain's connection to stop being its producer.
        sink = await self.started(SyslogSink(tls=self.world.ca.issue(["localhost"])))
        channel_id, token = await self.channel()
        drain_id, _ = await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)
        await self.send(sender, texts("s", 5))
        await sink.wait_for(5, timeout=10)
        self.assertEqual(sink.open_connections, 1)
        answer = await self.api("DELETE", f"/v3/channels/{channel_id}/drains/{drain_id}")
        self.assertIn(answer.status, (200, 204), answer)
        await sink.all_closed(timeout=10)

    async def test_syslog_tls_drain_refuses_an_unknown_ca(self):
        sink = await self.started(SyslogSink(tls=self.world.stranger.issue(["localhost"])))
        channel_id, token = await self.channel()
        await self.add_drain(channel_id, sink.url)
        sender = await self.sender(token)
        await self.send(sender, texts("x", 3))
        await self.until(lambda: self.backlog(channel_id),
                         lambda lines: any(L14 in line for line in lines), 10,
                         "an L14 in the backlog")
        self.assertEqual(sink.frames, [])

    # -- 7. overflow: the exact L10 ------------------------------------------------------------------
    async def overflow(self, sink: HttpSink, *, loss_before_first_batch: bool = False) -> dict:
        """Against the small-buffer node, with the sink answering 503: 2000 messages go in.

        By default a first batch is already failing when the burst comes, so
        all the loss happens while that batch waits; with
        loss_before_first_batch, the burst comes first and the first batch is
        made after some loss, then more is lost. Returns what the test needs.
        """
        node = await self.blocking(self.world.overflow_node)
        sink.behave("status", code=503)
        channel_id, token = await self.channel(node)
        drain_id, _ = await self.add_drain(channel_id, sink.url, node)
        sender = await self.sender(token, node)
        routed = (await self.blocking(metric_samples, node)).get("logplex_messages_routed_total", 0)
        lines = texts("v", 2000)
        if loss_before_first_batch:
            # One write of 500: the node reads it in one go, more than its
            # buffer and overflow hold, and loses some before any batch exists.
            await self.send(sender, lines[:500], chunk=500)
            # The first batch leaves at once; the spool overflows while it is
            # retried, so a retry of it carries the L10 (with the count so far).
            await sink.wait_for_attempts(3, timeout=10)
            self.assertTrue(any(r.frames and b"Error L10" in r.frames[0] for r in sink.requests),
                            "precondition: loss before the first batch got through")
            await self.send(sender, lines[500:], chunk=100)
        else:
            await self.send(sender, lines[:20])
            await sink.wait_for_attempts(1, timeout=5)
            self.assertNotIn(b"Error L10", sink.requests[0].frames[0])
            await self.send(sender, lines[20:], chunk=100)
        await self.settled(node, channel_id, drain_id, OVERFLOW_NODE, routed + 2000)
        client = await self.redis_client(self.world.redis.url)
        meta = b"lp:spool:%d:%s:meta" % (drain_id, OVERFLOW_NODE.encode())
        spooled_bytes = int(await client.hget(meta, "bytes") or 0)
        sink.behave("ok")
        state = await self.wait_state(
            channel_id, drain_id,
            # delivered counts the channel's messages; L10 notices are the router's own.
            lambda s: s["spool_depth"] == 0 and s["buffered"] == 0
            and s["delivered"] == len([m for m in sink.messages() if b"Error L10" not in m]),
            "the backlog delivered", timeout=20, node=node)
        got = sink.messages()
        l10s = [m for m in got if b"Error L10" in m]
        app = [m for m in got if b"Error L10" not in m]
        return {"node": node, "drain_id": drain_id, "lines": lines, "state": state, "got": got,
                "l10s": l10s, "app": app, "spooled_bytes": spooled_bytes}

    async def test_overflow_reports_one_exact_l10(self):
        sink = await self.started(HttpSink())
        run = await self.overflow(sink)
        self.assertEqual(len(run["l10s"]), 1, describe_requests(sink))
        [l10] = run["l10s"]
        match = L10.match(l10)
        self.assertIsNotNone(match, l10)
        [l10_request] = [r for r in sink.requests if r.accepted and l10 in r.frames]
        self.assertEqual(l10_request.frames[0], l10, "the L10 is not first in its batch")
        # The loss happened while the first batch was retried: the first
        # delivery after it starts with the L10 (the retry carries it).
        self.assertEqual(run["got"].index(l10), 0)
        app = run["app"]
        dropped = int(match.group(1))
        self.assertGreater(dropped, 0)
        self.assertEqual(dropped, 2000 - len(app))
        indices = [index_of(m) for m in app]
        self.assertEqual(indices, sorted(set(indices)), "delivered out of order or twice")
        self.assertEqual(app, [http_frame(run["lines"][i]) for i in indices])
        self.assertEqual(indices[-1], 1999, "the newest message was dropped")
        samples = await self.blocking(metric_samples, run["node"])
        self.assertEqual(samples.get(f'logplex_drain_l10_total{{drain="{run["drain_id"]}"}}'), 1)
    async def test_overflow_drops_are_counted_in_state_and_metrics(self):
        sink = await self.started(HttpSink())
        run = await self.overflow(sink)
        dropped = 2000 - len(run["app"])
        self.assertGreater(dropped, 0)
        self.assertEqual(run["state"]["dropped"], dropped)
        samples = await self.blocking(metric_samples, run["node"])
        prefix = f'logplex_drain_dropped_total{{drain="{run["drain_id"]}",'
        self.assertEqual(sum(v for k, v in samples.items() if k.startswith(prefix)), dropped)
    async def test_overflow_fills_the_spool_before_dropping_oldest_first(self):
        sink = await self.started(HttpSink())
        run = await self.overflow(sink)
        self.assertGreater(2000 - len(run["app"]), 0)
        # Only what exceeds the spool bound is dropped: so the spool was full,
        # within one chunk (2000 bytes of messages and a header).
        self.assertGreaterEqual(run["spooled_bytes"], 20000 - 2200)
        # Oldest first: after the batch that was in flight, what arrives is
        # the newest messages, without a gap.
        first = len(sink.requests[0].frames)
        rest = [index_of(m) for m in run["app"][first:]]
        self.assertEqual(rest, list(range(2000 - len(rest), 2000)))
    async def test_overflow_reports_one_l10_when_loss_starts_before_the_first_batch(self):
        sink = await self.started(HttpSink())
        run = await self.overflow(sink, loss_before_first_batch=True)
        self.assertEqual(len(run["l10s"]), 1, describe_requests(sink))
        [l10] = run["l10s"]
        self.assertEqual(int(L10.match(l10).group(1)), 2000 - len(run["app"]))

    # -- 8. a graceful restart resumes the spool -------------------------------------------------------
    async def test_restart_mid_outage_resumes_the_spool(self):
        redis = RedisServer(self.world.dir("restart-redis"))
        await self.blocking(redis.start)
        self.addCleanup(self.blocking, redis.stop)
        name = "drains-restart"
        args = [*FAST, "--http-drain-target-bytes", "8000"]
        first = await self.blocking(start_node, self.world.dir("restart-1"), redis.url, name, *args)
        self.addCleanup(self.blocking, first.proc.kill)
        sink = await self.started(HttpSink())
        sink.behave("status", code=503)
        channel_id, token = await self.channel(first)
        drain_id, _ = await self.add_drain(channel_id, sink.url, first)
        sender = await self.sender(token, first)
        lines = texts("r", 3000)
        await self.send(sender, lines, chunk=100)
        await self.wait_state(channel_id, drain_id,
                              lambda s: s["spool_depth"] + s["buffered"] == 3000,
                              "all 3000 held", node=first)
        await sink.wait_for_attempts(sink.attempts + 1, timeout=5)  # mid-outage: a retry in flight
        await self.blocking(stop_node, first)

        client = await self.redis_client(redis.url)
        key = b"lp:spool:%d:%s" % (drain_id, name.encode())
        self.assertEqual(int(await client.hget(key + b":meta", "messages")), 3000,
                         "the stopping node did not spill all it held")

        second = await self.blocking(start_node, self.world.dir("restart-2"), redis.url, name, *args)
        self.addCleanup(self.blocking, stop_node, second)
        sink.behave("ok")
        await sink.wait_for(3000, timeout=20)
        # Repeats of one frame id count once (messages() does that); then exactly what was sent.
        self.assertEqual(sink.messages(), [http_frame(t) for t in lines])
        await self.wait_state(channel_id, drain_id,
                              lambda s: s["spool_depth"] == 0 and s["buffered"] == 0,
                              "the spool emptied", node=second)
        await self.until(lambda: client.exists(key), lambda n: n == 0, 5, "the spool key gone")
        self.assertEqual(await client.exists(key + b":meta"), 0)

    # -- 9. drain changes through the API, live -------------------------------------------------------
    async def test_api_changes_take_effect_within_a_second(self):
        one = await self.started(HttpSink())
        two = await self.started(HttpSink())
        channel_id, token = await self.channel()
        sender = await self.sender(token)
        stop = threading.Event()
        counter = iter(range(10**6))

        def flow() -> None:
            while not stop.is_set():
                sender.send(texts("f", 10, start=next(counter) * 10))
                time.sleep(0.05)

        async def traffic_for(seconds: float) -> None:
            """Keep ~200 messages a second flowing for this long."""
            stop.clear()
            running = self.blocking(flow)
            await self.sleep(seconds)
            stop.set()
            await running

        def sent_after(t: float) -> list[bytes]:
            return [http_frame(text) for text, at in sender.sent_at if at >= t]

        async def arrived(sink: HttpSink, frames: list[bytes], what: str) -> None:
            want = set(frames)
            await self.until(lambda: defer.succeed(want - set(sink.messages())), lambda m: not m, 5,
                             what)

        # Add: messages sent a second after the API answered arrive.
        await traffic_for(0.5)
        drain_id, _ = await self.add_drain(channel_id, one.url)
        added_at = time.monotonic()
        await traffic_for(2)
        later = sent_after(added_at + 1)
        self.assertGreater(len(later), 100)
        await arrived(one, later, "messages sent after the drain was added")
        self.assertEqual(one.messages(), sorted(one.messages(), key=index_of))

        # Update the URL: later messages go to the new receiver, not the old one.
        answer = await self.api("PUT", f"/v3/channels/{channel_id}/drains/{drain_id}", {"url": two.url})
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.json()["url"], two.url)
        moved_at = time.monotonic()
        await traffic_for(2)
        later = sent_after(moved_at + 1)
        await arrived(two, later, "messages sent after the URL changed")
        self.assertFalse(set(later) & set(one.messages()), "the old receiver still gets messages")
        self.assertEqual(two.messages(), sorted(two.messages(), key=index_of))

        # State and metrics agree with what the receivers counted.
        total = len(one.messages()) + len(two.messages())
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == total,
                                      f"delivered reaches {total}")
        self.assertEqual(set(state), {"delivered", "dropped", "retried", "last_error",
                                      "last_error_at", "buffered", "spool_depth", "holding_senders"})
        self.assertEqual((state["dropped"], state["buffered"], state["spool_depth"], state["holding_senders"]),
                         (0, 0, 0, False))
        samples = await self.blocking(metric_samples, self.node)
        self.assertEqual(samples.get(f'logplex_drain_delivered_total{{drain="{drain_id}"}}'), total)
        self.assertEqual(samples.get(f'logplex_drain_spool_depth{{drain="{drain_id}"}}'), 0)
        self.assertEqual(samples.get(f'logplex_drain_buffered{{drain="{drain_id}"}}'), 0)

        # Make it spool, then delete it: no more deliveries, and its spool is freed.
        two.behave("status", code=503)
        client = await self.redis_client(self.world.redis.url)
        key = b"lp:spool:%d:%s" % (drain_id, SHARED_NODE.encode())
        stop.clear()
        running = self.blocking(flow)
        try:
            await self.until(lambda: client.exists(key), lambda n: n == 1, 10, "a spool in Redis")
        finally:
            stop.set()
            await running
        answer = await self.api("DELETE", f"/v3/channels/{channel_id}/drains/{drain_id}")
        self.assertEqual(answer.status, 204, answer)
        deleted_at = time.monotonic()
        two.behave("ok")
        await traffic_for(1.5)
        await self.until(lambda: defer.gatherResults([client.exists(key), client.exists(key + b":meta")]),
                         lambda found: found == [0, 0], 2, "the spool keys gone")
        gone = sent_after(deleted_at + 1)
        # The node has them (they are in the backlog), and had time to send them.
        last = gone[-1].split(b" - ", 1)[1]
        await self.until(lambda: self.backlog(channel_id),
                         lambda lines: any(line.endswith(last) for line in lines), 5,
                         "the last message in the backlog")
        await self.sleep(1.0)
        delivered = set(one.messages()) | set(two.messages())
        self.assertFalse(set(gone) & delivered, "a deleted drain still delivers")
        answer = await self.api("GET", f"/v3/channels/{channel_id}/drains/{drain_id}")
        self.assertEqual(answer.status, 404, answer)

    # -- 10. private addresses need --allow-private-drains -------------------------------------------
    async def test_private_drain_needs_the_flag(self):
        public = await self.blocking(start_node, self.world.dir("public"), self.world.redis.url,
                                     "drains-public")
        self.addCleanup(self.blocking, stop_node, public)
        channel_id, _ = await self.channel(public)
        for url in ("http://127.0.0.1:9/logs", "https://10.1.2.3/logs", "syslog://192.168.0.1:514",
                    "syslog+tls://localhost:6514", "http://[::1]:80/"):
            answer = await self.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url}, public)
            self.assertEqual(answer.status, 422, (url, answer))
            self.assertIn("error", answer.json())
        # The same drain through the node that allows it.
        answer = await self.api("POST", f"/v3/channels/{channel_id}/drains",
                                {"url": "http://127.0.0.1:9/logs"})
        self.assertEqual(answer.status, 201, answer)
        answer = await self.api("DELETE", f"/v3/channels/{channel_id}/drains/{answer.json()['id']}")
        self.assertEqual(answer.status, 204, answer)

    # -- 10. many drains of one endpoint host ---------------------------------------------------------
    async def test_drains_of_one_host_share_a_few_persistent_connections(self):
        # 40 drains, each on its own channel, all on one host:port: a node that
        # opened a connection per POST (it kept only 4 of them between
        # rounds) would pay a connect for nearly every batch.
        sink = await self.started(HttpSink(path="/logs"))
        senders = []
        for i in range(40):
            channel_id, token = await self.channel()
            await self.add_drain(channel_id, f"http://127.0.0.1:{sink.port}/logs/{i}")
            senders.append(await self.sender(token))
        sent = 0
        for round_ in range(5):
            for i, sender in enumerate(senders):
                await self.send(sender, [f"r{round_} d{i:02d} {round_:06d}"])
            sent += len(senders)
            await sink.wait_for(sent, timeout=10)
        self.assertGreaterEqual(sink.attempts, 5 * len(senders))
        # 16: logplex.drains.http.HOST_CONNECTIONS.
        connections = sink._site.connections.total
        self.assertLessEqual(connections, 16, f"{connections} connections for {sink.attempts} POSTs")
        by_path = collections.defaultdict(list)
        for request in sink.requests:
            by_path[request.path].extend(request.frames)
        for i in range(40):
            self.assertEqual(by_path[f"/logs/{i}".encode()],
                             [http_frame(f"r{r} d{i:02d} {r:06d}") for r in range(5)])
