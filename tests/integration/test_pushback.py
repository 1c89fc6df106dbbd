"""Pushback end to end: a drain that is full only because this node is behind holds its senders back.

Real node processes on a real redis-server of the module's own, real
sockets, and the HTTP sink of tests.harness.sinks running in the test's reactor
(trial test cases, as in test_drains.py): whatever blocks runs in a thread
through deferToThread, and every wait is on a condition.

Two nodes share the module, both with a drain buffer of 64 messages, so
that one read of a flood (about 600 messages) fills it:

- "pushback-on": ``--drain-pushback 2``. Two seconds, not the default 0.1:
  the sink answers from this busy test process, and an answer that took
  longer than the pushback would (rightly) stop the holding and spool
  instead; and a hold that may last two seconds is long enough to tell a
  held sender from one that is not with bounds of a second.
- "pushback-off": ``--drain-pushback 0``: the same flood is spooled.

Whether a drain's spool was ever used is not left to sampling: the module's
Redis announces every command on a spool list (keyspace notifications), and
SpoolWatch collects them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable

import pytest
import redis as redis_py
from twisted.internet import defer

from logplex.redis.keys import RedisKeys
from tests.harness.client import Node, basic, http_request, logplex1, octet, syslog_message
from tests.harness.procs import RedisServer
from tests.harness.client import Sender, stop_node
from tests.harness.trial import NodeCase, http_frame, metric_samples, start_node, texts
from tests.harness.sinks import HttpSink

ON_NODE = "pushback-on"
OFF_NODE = "pushback-off"
PUSHBACK = 2.0
BUFFER = 64
# Batches of 8 to 16 KiB: a drain holds its senders once its buffer is full and a largest batch
# waits behind the one in flight, so that floods of a few thousand lines are held.
COMMON = ["--allow-private-drains", "--drain-buffer", str(BUFFER),
          "--http-drain-target-bytes", "8192", "--http-drain-max-bytes", "16384"]
FLOOD = 50_000
HELD = "logplex_senders_held_total"
HELD_SECONDS = "logplex_senders_held_seconds_total"


# -- blocking helpers (run in threads) ----------------------------------------------------
class Flood:
    """One syslog TCP connection that writes all its lines in one sendall, as fast as the node reads."""

    def __init__(self, port: int, token: str, lines: list[str]) -> None:
        self.payload = b"".join(octet(syslog_message(token, "web.1", t)) for t in lines)
        self.count = len(lines)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.written_in: float | None = None  # seconds the sendall took

    def send(self) -> None:
        began = time.monotonic()
        self.sock.sendall(self.payload)
        self.written_in = time.monotonic() - began

    def close(self) -> None:
        self.sock.close()


class SpoolWatch:
    """Every command Redis runs on one drain's spool list, from keyspace notifications.

    The spool is written by a Lua script (RPUSH/LPUSH); each of those is
    announced on ``__keyspace@0__:<key>`` the moment it runs, so an empty
    events() means the spool list was never touched, however briefly.
    """

    def __init__(self, port: int, key: bytes) -> None:
        self.client = redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=10)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(b"__keyspace@0__:" + key)
        deadline = time.monotonic() + 10
        while True:  # the subscription is live once Redis confirms it
            message = self.pubsub.get_message(timeout=1)
            if message is not None and message["type"] == "subscribe":
                break
            assert time.monotonic() < deadline, "no confirmation of the keyspace subscription"
        self._events: list[bytes] = []

    def events(self) -> list[bytes]:
        """The commands announced so far (e.g. b"rpush", b"lpop", b"del")."""
        while True:
            message = self.pubsub.get_message(timeout=0.2)
            if message is None:
                return list(self._events)
            if message["type"] == "message":
                self._events.append(message["data"])

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


def first_difference(got: list[bytes], want: list[bytes]) -> str:
    """'' when equal; else where they part, in a few lines (50,000 frames make no readable diff)."""
    if got == want:
        return ""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return (f"{len(got)} messages for {len(want)} sent; the first difference is at "
                    f"{i}: got {g!r}, sent {w!r}; got[{i}:{i + 3}] = {got[i:i + 3]!r}")
    return f"{len(got)} messages for {len(want)} sent; the last ones got: {got[-3:]!r}"


# -- the module's world --------------------------------------------------------------------
class World:
    def __init__(self, root: str) -> None:
        self.root = root
        self.redis = RedisServer(os.path.join(root, "redis"))
        self.on: Node | None = None
        self.off: Node | None = None

    def dir(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)

    def start(self) -> None:
        self.redis.start()
        client = redis_py.Redis(host="127.0.0.1", port=self.redis.port)
        # K: keyspace channels, l: list commands, g: DEL and the like.
        client.config_set("notify-keyspace-events", "Klg")
        client.close()
        started: dict[str, Node] = {}
        errors: list[BaseException] = []

        def one(name: str, *args: str) -> None:
            try:
                started[name] = start_node(self.dir(name), self.redis.url, name, *COMMON, *args)
            except BaseException as e:  # reported below, after both tried
                errors.append(e)

        # Both at once: a node takes a second or two to come up.
        threads_ = [threading.Thread(target=one, args=(ON_NODE, "--drain-pushback", str(PUSHBACK))),
                    threading.Thread(target=one, args=(OFF_NODE, "--drain-pushback", "0"))]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        self.on, self.off = started.get(ON_NODE), started.get(OFF_NODE)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        nodes = [n for n in (self.on, self.off) if n is not None]
        self.on = self.off = None
        try:
            for node in nodes:
                stop_node(node)
        finally:
            for node in nodes:
                node.proc.kill()
            self.redis.stop()


@pytest.fixture(scope="module")
def pushback_world():
    root = tempfile.mkdtemp(prefix="logplex-pushback-")
    world = World(root)
    try:
        world.start()
        yield world
    finally:
        world.stop()
        shutil.rmtree(root, ignore_errors=True)


class PushbackTests(NodeCase):
    channel_prefix = "pushback"
    timeout = 60

    @pytest.fixture(autouse=True)
    def _world(self, pushback_world):
        self.world = pushback_world
        self.node = pushback_world.on

    # -- plumbing (as in test_drains.py) --------------------------------------------------------
    async def add_drain(self, channel_id: str, url: str, node: Node | None = None) -> int:
        answer = await self.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url}, node)
        self.assertEqual(answer.status, 201, answer)
        drain_id = answer.json()["id"]
        # Drains reach the node's workers through Redis, within a second:
        # wait until this node has a worker (a state) for it.
        await self.until(lambda: self.api("GET", f"/v3/channels/{channel_id}/drains/{drain_id}", node=node),
                         lambda a: a.status == 200 and a.json().get("state") is not None, 5,
                         "the node runs the new drain", node)
        return drain_id

    async def delete_drain(self, channel_id: str, drain_id: int, node: Node | None = None) -> None:
        answer = await self.api("DELETE", f"/v3/channels/{channel_id}/drains/{drain_id}", node=node)
        self.assertEqual(answer.status, 204, answer)

    async def samples(self, node: Node | None = None) -> dict[str, float]:
        return await self.blocking(metric_samples, node or self.node)

    async def held(self, node: Node | None = None) -> tuple[float, float]:
        """(logplex_senders_held_total, logplex_senders_held_seconds_total); 0 before the first hold."""
        samples = await self.samples(node)
        return samples.get(HELD, 0), samples.get(HELD_SECONDS, 0)

    async def flood(self, token: str, lines: list[str], node: Node | None = None) -> Flood:
        flood = await self.blocking(Flood, (node or self.node).syslog_port, token, lines)
        self.addCleanup(flood.close)
        return flood

    async def spool_watch(self, drain_id: int, node_name: str) -> SpoolWatch:
        watch = await self.blocking(SpoolWatch, self.world.redis.port, RedisKeys("lp", 0).spool(drain_id, node_name))
        self.addCleanup(watch.close)
        return watch

    async def run_flood(self, flood: Flood, channel_id: str, drain_id: int, node: Node,
                        sink: HttpSink, timeout: float = 45) -> dict:
        """Send the flood while sampling the drain's state every 50 ms, until the sink has it all.

        Returns the highest spool_depth and buffered seen, whether
        holding_senders was ever seen true, how many samples, and the times.
        """
        began = time.monotonic()
        sending = self.blocking(flood.send)
        seen = {"spool_depth": 0, "buffered": 0, "holding": False, "samples": 0}
        want = flood.count
        while len(sink.messages()) < want:
            state = await self.state(channel_id, drain_id, node)
            seen["samples"] += 1
            seen["spool_depth"] = max(seen["spool_depth"], state["spool_depth"])
            seen["buffered"] = max(seen["buffered"], state["buffered"])
            seen["holding"] = seen["holding"] or state["holding_senders"]
            if time.monotonic() - began > timeout:
                self.fail(f"the sink got {len(sink.messages())} of {want} within {timeout} s "
                          f"(seen: {seen})\n--- node log\n{node.proc.log_text()[-3000:]}")
            await self.sleep(0.05)
        seen["delivered_in"] = time.monotonic() - began
        await sending
        seen["written_in"] = flood.written_in
        return seen

    def assert_all_once_in_order(self, sink: HttpSink, lines: list[str]) -> None:
        got = sink.messages()
        self.assertFalse([m for m in got if b"Error L10" in m], "an L10: messages were dropped")
        difference = first_difference(got, [http_frame(t) for t in lines])
        self.assertEqual(difference, "", "not every message exactly once and in order")

    async def assert_nothing_dropped(self, channel_id: str, drain_id: int, node: Node) -> dict:
        state = await self.wait_state(channel_id, drain_id,
                                      lambda s: s["buffered"] == 0 and s["spool_depth"] == 0,
                                      "the drain emptied", node=node)
        self.assertEqual(state["dropped"], 0, state)
        samples = await self.samples(node)
        prefix = f'logplex_drain_dropped_total{{drain="{drain_id}",'
        self.assertEqual({k: v for k, v in samples.items() if k.startswith(prefix) and v}, {})
        return state

    # -- 1. a flood to a quick endpoint: held back, not spooled -----------------------------------
    async def test_flood_to_a_quick_drain_holds_the_sender_instead_of_spooling(self):
        sink = await self.started(HttpSink())
        channel_id, token = await self.channel()
        drain_id = await self.add_drain(channel_id, sink.url)
        watch = await self.spool_watch(drain_id, ON_NODE)
        held_before, seconds_before = await self.held()
        lines = texts("f", FLOOD)
        flood = await self.flood(token, lines)

        seen = await self.run_flood(flood, channel_id, drain_id, self.node, sink)

        self.assert_all_once_in_order(sink, lines)
        self.assertEqual(await self.blocking(watch.events), [], "the drain's spool list was used")
        self.assertEqual(seen["spool_depth"], 0, seen)
        # The buffer filled over and over, and each time the node held the sender back.
        held, seconds = await self.held()
        self.assertGreater(held - held_before, 0, seen)
        self.assertGreater(seconds - seconds_before, 0, seen)
        state = await self.assert_nothing_dropped(channel_id, drain_id, self.node)
        self.assertEqual(state["delivered"], FLOOD, state)
        self.assertFalse(state["holding_senders"], state)
        # Held back, the sender goes as fast as the drain delivers; the sink
        # is quick, so that is about as fast as without pushback (test 2:
        # about a second here), not a fixed wait per read.
        self.assertLess(
            seen["delivered_in"], 10,
            f"pushback slowed the flood down: {held - held_before:.0f} holds lasted "
            f"{seconds - seconds_before:.1f} s in all; {seen}")

    # -- 2. the same flood with --drain-pushback 0: spooled, nobody held ----------------------------
    async def test_flood_with_pushback_off_spools_and_holds_nobody(self):
        node = self.world.off
        sink = await self.started(HttpSink())
        # An endpoint that takes 50 ms a batch: the flood outruns it whatever the host's
        # speed (a drain whose batches grow to 1 MiB could otherwise keep up with it).
        sink.behave("slow", delay=0.05)
        channel_id, token = await self.channel(node)
        drain_id = await self.add_drain(channel_id, sink.url, node)
        watch = await self.spool_watch(drain_id, OFF_NODE)
        lines = texts("f", FLOOD)
        flood = await self.flood(token, lines, node)

        seen = await self.run_flood(flood, channel_id, drain_id, node, sink)

        self.assert_all_once_in_order(sink, lines)
        events = await self.blocking(watch.events)
        self.assertIn(b"rpush", events, "the flood did not go through the spool")
        self.assertEqual(await self.held(node), (0, 0))
        self.assertFalse(seen["holding"], seen)
        state = await self.assert_nothing_dropped(channel_id, drain_id, node)
        self.assertEqual(state["delivered"], FLOOD, state)
        self.assertFalse(state["holding_senders"], state)

    # -- 3. a failing or slow endpoint never holds senders: the node reads at full speed and spools ---
    async def read_at_full_speed(self, sink: HttpSink, warm_up: Callable[[], defer.Deferred]) -> None:
        """A few lines, warm_up() (the node learns what the endpoint does), then the flood:
        the node reads it all at once, holds nobody, and spools."""
        channel_id, token = await self.channel()
        drain_id = await self.add_drain(channel_id, sink.url)
        sender = await self.blocking(Sender, self.node.syslog_port, token)
        self.addCleanup(sender.close)
        await self.blocking(sender.send, texts("w", 5))
        await warm_up()
        samples = await self.samples()
        routed_before = samples["logplex_messages_routed_total"]
        held_before = samples.get(HELD, 0)
        flood = await self.flood(token, texts("f", FLOOD))
        sending = self.blocking(flood.send)
        holding_seen = []

        async def routed() -> float:
            state = await self.state(channel_id, drain_id)
            holding_seen.append(state["holding_senders"])
            return (await self.samples())["logplex_messages_routed_total"] - routed_before

        # Read at full speed: a fraction of a second here. A sender held
        # for even a tenth of a second per read would take far longer.
        await self.until(routed, lambda n: n >= FLOOD, 10, "the flood routed")
        await sending
        held = (await self.samples()).get(HELD, 0) - held_before
        state = await self.state(channel_id, drain_id)
        self.assertEqual(held, 0, f"the sender was held back; {state}")
        self.assertNotIn(True, holding_seen, state)
        self.assertGreater(state["spool_depth"], 0, state)
        await self.delete_drain(channel_id, drain_id)

    async def test_a_failing_drain_never_holds_its_sender_and_spools(self):
        sink = await self.started(HttpSink())
        sink.behave("status", code=503)
        await self.read_at_full_speed(sink, lambda: sink.wait_for_attempts(1, timeout=5))

    async def test_a_drain_slower_than_the_pushback_never_holds_its_sender(self):
        sink = await self.started(HttpSink())
        sink.behave("slow", delay=PUSHBACK + 0.5)
        await self.read_at_full_speed(sink, lambda: sink.wait_for(5, timeout=PUSHBACK + 5))

    async def test_a_failing_drain_does_not_hold_a_steady_sender_while_it_retries(self):
        # An overloaded endpoint: a 503 after half a second, well within the pushback.
        sink = await self.started(HttpSink())
        sink.behave("slow", code=503, delay=0.5)
        channel_id, token = await self.channel()
        drain_id = await self.add_drain(channel_id, sink.url)
        sender = await self.blocking(Sender, self.node.syslog_port, token)
        self.addCleanup(sender.close)
        await self.blocking(sender.send, texts("w", 5))
        await self.until(lambda: defer.succeed([r.status for r in sink.requests]),
                         lambda statuses: 503 in statuses, 5, "a first 503")
        held_before, seconds_before = await self.held()
        attempts_before = sink.attempts
        # 20,000 lines over two seconds, while the drain retries (at least once, mostly twice).
        await self.blocking(sender.send, texts("s", 20_000), rate=10_000, chunk=100)
        retries = sink.attempts - attempts_before
        held, seconds = await self.held()
        state = await self.state(channel_id, drain_id)
        self.assertGreaterEqual(retries, 1, "precondition: the drain retried while the sender sent")
        self.assertEqual(
            held - held_before, 0,
            f"a failing drain held its sender back {held - held_before:.0f} times "
            f"({seconds - seconds_before:.2f} s in all) over {retries} retries; {state}")
        self.assertGreater(state["spool_depth"], 0, state)
        await self.delete_drain(channel_id, drain_id)

    # -- 4. a held channel does not hold another -------------------------------------------------------
    async def test_a_held_channel_does_not_hold_another_channels_sender(self):
        slow = await self.started(HttpSink())
        # Slow, but within the pushback: A's sender is held about 1.6 s at a time.
        slow.behave("slow", delay=0.8)
        quick = await self.started(HttpSink())
        a_channel, a_token = await self.channel()
        a_drain = await self.add_drain(a_channel, slow.url)
        b_channel, b_token = await self.channel()
        b_drain = await self.add_drain(b_channel, quick.url)
        # B is connected first: whatever holds A's connection, B's is there to be held too.
        b = await self.blocking(Sender, self.node.syslog_port, b_token)
        self.addCleanup(b.close)
        a_lines = texts("a", 3000)
        a_flood = await self.flood(a_token, a_lines)
        a_sending = self.blocking(a_flood.send)
        b_sent: list[str] = []
        latencies = []
        for round_ in range(4):
            # Each time one of A's batches reaches its sink: the first of
            # each hold leaves just after the hold began.
            await slow.wait_for_attempts(round_ + 1, timeout=10)
            await self.wait_state(a_channel, a_drain, lambda s: s["holding_senders"] is True,
                                  "channel A's drain holds its sender", timeout=5)
            lines = texts(f"b{round_}", 10)
            b_sent += lines
            began = time.monotonic()
            await self.blocking(b.send, lines)
            last = lines[-1].encode() + b"\n"
            await self.until(lambda: self.backlog(b_channel),
                             lambda got: any(line.endswith(last) for line in got), 5,
                             "B's lines in B's backlog")
            latencies.append(round(time.monotonic() - began, 3))
        a_state = await self.state(a_channel, a_drain)
        # B's lines came in at once, every time, while A's sender was held, mid-flood.
        self.assertLess(max(latencies), 1.0, f"B's lines waited: {latencies}")
        self.assertTrue(a_state["holding_senders"], a_state)
        self.assertLess(len(slow.messages()), len(a_lines))
        await quick.wait_for(len(b_sent), timeout=5)
        self.assertEqual(quick.messages(), [http_frame(t) for t in b_sent])
        b_state = await self.state(b_channel, b_drain)
        self.assertIs(b_state["holding_senders"], False, b_state)
        # Then A's flood goes through too, every line once.
        slow.behave("ok")
        await slow.wait_for(len(a_lines), timeout=30)
        await a_sending
        self.assert_all_once_in_order(slow, a_lines)

    # -- 5. POST /logs to a held channel: the 204 waits, but comes ----------------------------------------
    async def test_a_post_to_a_held_channel_gets_its_204_after_the_drain_has_room(self):
        sink = await self.started(HttpSink())
        sink.behave("slow", delay=0.3)
        channel_id, token = await self.channel()
        drain_id = await self.add_drain(channel_id, sink.url)
        sent: list[str] = []
        # As log-shuttle does: one request at a time, the next once the last is answered.
        for post in range(3):
            lines = texts(f"p{post}", 1000)
            sent += lines
            body = logplex1(syslog_message(token, "web.1", t) for t in lines)
            held_before = (await self.held())[0]
            began = time.monotonic()
            answer = await self.blocking(self.node.post_logs, body, auth=basic("token", token))
            took = time.monotonic() - began
            held = (await self.held())[0] - held_before
            self.assertEqual(answer.status, 204, answer)
            self.assertEqual(held, 1, f"POST {post} was not held")
            # Held until a batch got through (the sink takes 0.3 s), and never past the pushback.
            self.assertGreaterEqual(took, 0.25, f"POST {post}")
            self.assertLess(took, PUSHBACK + 1.5, f"POST {post}")
        await sink.wait_for(len(sent), timeout=20)
        self.assert_all_once_in_order(sink, sent)
        await self.assert_nothing_dropped(channel_id, drain_id, self.node)

    # -- 6. the counters are there before the first hold ---------------------------------------------
    async def test_the_pushback_counters_are_on_metrics_before_any_hold(self):
        # The node without pushback never holds anyone. An operator's graph
        # or alert on these counters still needs them listed, at 0, and as
        # counters, as every other counter of a node is.
        answer = await self.blocking(http_request, self.world.off.api_port, "GET", "/metrics")
        self.assertEqual(answer.status, 200, answer)
        text = answer.body.decode()
        for name in (HELD, HELD_SECONDS):
            self.assertIn(f"# TYPE {name} counter\n", text, f"{name} is not declared")
            self.assertIn(f"\n{name} 0\n", text)
