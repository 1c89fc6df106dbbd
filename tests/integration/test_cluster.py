"""Issue #4, the cluster, with real processes: nodes a, b and c on one config Redis and two shard Redis.

The module shares one World (tests.harness.cluster). The tests that
change it run late and in this order: the shard test grows the shard map and
moves shard-0, the node test kills c. --workers has a node of its own.

What the reconcile test proves: a node that missed change notifications
(its feed connection dropped) reloads the whole config when it reconnects.
The 30 s reconcile timer is not waited for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from twisted.internet import threads
from twisted.trial import unittest

import logplex
from logplex.model import Channel, Token, new_token_id
from tests.harness.cluster import (
    BusWatcher,
    Pacer,
    Sender,
    World,
    alive,
    backlog,
    backlog_keys,
    command_line,
    descendants,
    metric_sum,
    numsub,
    open_tail,
    redis,
    send_lines,
    tailing,
    texts_of,
    wait_until,
    warm,
)
from tests.harness.client import Node, http_request, octet, syslog_message, unique
from tests.harness.procs import REPO_ROOT, NodeProcess
from tests.harness.sinks import HttpSink

BUS_RECEIVED = "logplex_tail_bus_received_total"


@pytest.fixture(scope="module")
def world():
    w = World("cluster")
    try:
        w.start()
        yield w
    finally:
        w.stop()


def everywhere(nodes: list[Node], check, since: float, seconds: float, what: str) -> None:
    """check(node) holds on every node by since + seconds."""
    for node in nodes:
        left = max(0.0, since + seconds - time.monotonic())
        wait_until(lambda: check(node), bool, left, f"{what}, on node {node.proc.name}")


# -- 1. a change made on one node is in force on all --------------------------------------------------
def test_a_change_on_one_node_is_in_force_everywhere_within_a_second(world):
    a, b, c = world.a, world.b, world.c
    channel_id, _ = world.channel(a, "app")
    written = time.monotonic()
    expected = a.api("GET", f"/v3/channels/{channel_id}").json()
    everywhere([b, c], lambda n: n.api("GET", f"/v3/channels/{channel_id}").json() == expected,
               written, 1.0, "the channel made on a")

    # A drain added on a exists on b and c; deleted on b, it is gone from a and c.
    answer = a.api("POST", f"/v3/channels/{channel_id}/drains", {"url": "http://127.0.0.1:9/never"})
    assert answer.status == 201, answer
    drain_id, written = answer.json()["id"], time.monotonic()
    path = f"/v3/channels/{channel_id}/drains/{drain_id}"
    everywhere([b, c], lambda n: n.api("GET", path).status == 200, written, 1.0, "the drain made on a")
    assert [d["id"] for d in c.api("GET", f"/v3/channels/{channel_id}").json()["drains"]] == [drain_id]
    assert b.api("DELETE", path).status == 204
    written = time.monotonic()
    everywhere([a, c], lambda n: n.api("GET", path).status == 404, written, 1.0, "the drain deleted on b")

    # A token made on a routes what c receives.
    answer = a.api("POST", f"/v3/channels/{channel_id}/tokens", {"name": "late"})
    assert answer.status == 200, answer
    written = time.monotonic()
    with Sender(c, answer.json()["token"], "late") as sender:
        def send_and_look():
            sender.send([f"late {len(sender.sent)}"])
            return texts_of(backlog(c, channel_id), "late")

        routed = wait_until(send_and_look, bool, 1.0, "a line sent to c with the token made on a, routed")
        assert routed[0] in sender.sent

    # A credential made on a is accepted by b and c; deleted on b, a and c refuse it.
    answer = a.api("POST", "/v3/credentials", {"perms": ["full_api"], "note": "cluster test"})
    assert answer.status == 201, answer
    user, secret = answer.json()["id"], answer.json()["secret"]
    written = time.monotonic()
    as_new = (user, secret)
    everywhere([b, c], lambda n: n.api("GET", f"/v3/channels/{channel_id}", auth=as_new).status == 200,
               written, 1.0, "the credential made on a, accepted")
    assert b.api("DELETE", f"/v3/credentials/{user}").status == 204
    written = time.monotonic()
    everywhere([a, c], lambda n: n.api("GET", f"/v3/channels/{channel_id}", auth=as_new).status == 401,
               written, 1.0, "the credential deleted on b, refused")


# -- 2. a node that missed notifications catches up by itself -----------------------------------------
def test_nodes_reload_what_they_missed_when_their_feed_reconnects(world):
    a, b, c = world.a, world.b, world.c
    channel_id, tokens = world.channel(a, "app")
    tail = open_tail(a, b, channel_id)
    try:
        warm(tail, a, tokens["app"])
        # A change written without its notification: every node missed it.
        missed = unique("missed")
        token = Token(new_token_id(), missed, "app")
        redis(world.cfg, "HSET", "lp:channels", missed, Channel(missed).to_json())
        redis(world.cfg, "HSET", "lp:tokens", token.id, token.to_json())
        redis(world.cfg, "SADD", f"lp:chtok:{missed}", token.id)
        redis(world.cfg, "INCR", "lp:version")
        # (Only the 30 s reconcile could find it now.)
        assert b.api("GET", f"/v3/channels/{missed}").status == 404
        # Drop every pub/sub connection: the change feeds and the tail bus.
        dropped = redis(world.cfg, "CLIENT", "KILL", "TYPE", "pubsub")
        assert dropped >= 4, dropped  # three feeds, and b's bus subscriber (a and c tail nothing)
        reconnected = time.monotonic()
        everywhere([a, b, c], lambda n: n.api("GET", f"/v3/channels/{missed}").status == 200,
                   reconnected, 3.0, "the missed channel, once the feed reconnected")
        send_lines(c, [(token.id, "web.1", "after the reload")])
        wait_until(lambda: texts_of(backlog(a, missed), "web.1"), lambda t: t == ["after the reload"],
                   2.0, "a line for the missed channel routed by c")
        # The tail bus is back too: b subscribes again and a publishes to it.
        wait_until(lambda: numsub(world.cfg, f"lp:tail:{channel_id}"), lambda n: n == 1, 3.0,
                   "b subscribed to the tailed channel again")
        send_lines(a, [(tokens["app"], "after", "after the reconnect")])
        tail.wait(lambda _: tail.texts("after") == ["after the reconnect"], 3.0,
                  "a line sent to a after the reconnect, on the tail on b")
    finally:
        tail.close()


# -- 3. sessions and tails across nodes ------------------------------------------------------------------
def test_tails_get_every_node_traffic_and_only_tailing_nodes_get_it(world):
    a, b, c = world.a, world.b, world.c
    channel_id, tokens = world.channel(a, "app")
    token = tokens["app"]

    # A (non-tail) session made on a is read on b.
    send_lines(a, [(token, "old", f"old {i}") for i in range(3)])
    # Read on b, from the shard: a wrote them (a's own reads also see what it has not flushed yet).
    wait_until(lambda: texts_of(backlog(b, channel_id), "old"), lambda t: len(t) == 3, 2.0, "old lines")
    url = a.session(channel_id, num=10)
    answer = http_request(b.api_port, "GET", "/sessions/" + url.rsplit("/sessions/", 1)[1])
    assert answer.status == 200, answer
    assert [line.split("]: ", 1)[1] for line in answer.body.decode().splitlines()] == ["old 0", "old 1", "old 2"]

    bus_before = {name: metric_sum(world.nodes[name], BUS_RECEIVED) for name in ("a", "b", "c")}
    # b tails a control channel all along; and the channel twice, from sessions made on a and on c.
    control_id, control_tokens = world.channel(a, "app")
    control = open_tail(a, b, control_id)
    tails = [open_tail(a, b, channel_id), open_tail(c, b, channel_id)]
    watcher = None
    try:
        interest = wait_until(lambda: {f for f in tailing(world.cfg) if f.endswith("|" + channel_id)},
                              lambda f: bool(f), 2.0, "b's interest in lp:tailing")
        assert interest == {f"b|{channel_id}"}
        assert numsub(world.cfg, f"lp:tail:{channel_id}") == 1  # one subscriber per node, not per tail
        for node in (a, c):
            warm(tails[0], node, token)
        warm(control, a, control_tokens["app"])
        watcher = BusWatcher(world.cfg, [channel_id, control_id])

        with Sender(a, token, "s1") as s1, Sender(c, token, "s2") as s2:
            for i in range(0, 300, 20):
                s1.send([f"s1 {j:04d}" for j in range(i, i + 20)])
                s2.send([f"s2 {j:04d}" for j in range(i, i + 20)])
        for tail in tails:
            wait_until(lambda: (tail.texts("s1"), tail.texts("s2")),
                       lambda t: len(t[0]) >= 300 and len(t[1]) >= 300, 5.0, "600 lines on the tail")
            assert tail.texts("s1") == s1.sent
            assert tail.texts("s2") == s2.sent
        bus_after = {name: metric_sum(world.nodes[name], BUS_RECEIVED) for name in ("a", "b", "c")}
        assert bus_after["a"] == bus_before["a"] and bus_after["c"] == bus_before["c"], (bus_before, bus_after)
        assert bus_after["b"] - bus_before["b"] >= 600, (bus_before, bus_after)
        assert channel_id in watcher.channels()  # a and c published it while b tailed

        # The tails end: the interest is withdrawn and the channel leaves the bus.
        for tail in tails:
            tail.close()
        wait_until(lambda: (tailing(world.cfg), numsub(world.cfg, f"lp:tail:{channel_id}")),
                   lambda v: f"b|{channel_id}" not in v[0] and v[1] == 1, 3.0,
                   "b's interest gone from lp:tailing, and only our watcher subscribed")
        # A line for the channel then one for the control, on one connection to a: if a still
        # published the channel, the watcher would see it before the control's line.
        with socket.create_connection(("127.0.0.1", a.syslog_port), timeout=5) as sock:
            quiet = rounds = 0
            deadline = time.monotonic() + 3.0
            while quiet < 3:
                assert time.monotonic() < deadline, f"a still publishes the untailed channel: {watcher.published[-5:]}"
                seen = len(watcher.published)
                mark = f"mark {rounds}".encode()
                sock.sendall(octet(syslog_message(token, "gone", f"gone {rounds}"))
                             + octet(syslog_message(control_tokens["app"], "mark", mark.decode())))
                wait_until(lambda: watcher.published[seen:],
                           lambda new: any(p.endswith(mark + b"\n") for _, p in new), 2.0, "the control line")
                new = watcher.published[seen:]
                quiet = 0 if any(ch == channel_id for ch, _ in new) else quiet + 1
                rounds += 1
        assert control.texts("mark")[-3:] == [f"mark {r}" for r in range(rounds - 3, rounds)]
    finally:
        for tail in [*tails, control]:
            tail.close()
        if watcher is not None:
            watcher.close()


# -- 4. backlogs over the shards ---------------------------------------------------------------------------
def admin_shards(world: World, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "logplex.admin.shards", "--config-redis", world.cfg.url, "--settle", "1", *args],
        env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_backlogs_spread_over_shards_and_survive_adding_and_replacing_one(world):
    a, b, c = world.a, world.b, world.c
    s0, s1 = world.shards
    prefix = unique("spread")[:15]
    tokens = {}
    for i in range(200):
        channel_id = f"{prefix}-{i:03d}"
        answer = a.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        assert answer.status == 201, answer
        tokens[channel_id] = answer.json()["tokens"]["app"]
    send_lines(a, [(token, "one", f"one {ch}") for ch, token in tokens.items()])
    on0, on1 = wait_until(lambda: (backlog_keys(s0, prefix), backlog_keys(s1, prefix)),
                          lambda k: len(k[0]) + len(k[1]) == 200, 5.0, "200 backlogs on the shards")
    assert not on0 & on1
    assert 60 <= len(on0) <= 140 and 60 <= len(on1) <= 140, (len(on0), len(on1))

    # Adding a shard moves about a third of the channels, all to it, and loses no line.
    s2 = world.redis_server()
    added = admin_shards(world, "add", s2.url)
    assert added["shard"] == "shard-2" and added["shards"] == 3, added
    moved = backlog_keys(s2, prefix)
    assert 40 <= len(moved) <= 90, len(moved)
    assert backlog_keys(s0, prefix) == on0 - moved and backlog_keys(s1, prefix) == on1 - moved
    assert moved <= on0 | on1
    for channel_id in tokens:
        assert texts_of(backlog(b, channel_id), "one") == [f"one {channel_id}"], channel_id

    # Replacing shard-0's Redis while lines keep arriving at a and c loses none.
    assert admin_shards(world, "list")["shard-0"] == s0.url
    moving = sorted(backlog_keys(s0, prefix))[:10]
    senders = [Sender(node, tokens[ch], f"via-{node.proc.name}-{i}")
               for i, ch in enumerate(moving) for node in (a, c)]
    pacer = Pacer(senders, "moving", rate=100, batch=2)
    try:
        wait_until(lambda: len(backlog(b, moving[0])), lambda n: n >= 20, 3.0, "lines before the move")
        fresh = world.redis_server()
        replaced = admin_shards(world, "replace", "shard-0", fresh.url)
        assert (replaced["from"], replaced["to"]) == (s0.url, fresh.url), replaced
        after_move = len(backlog(b, moving[0]))
        wait_until(lambda: len(backlog(b, moving[0])), lambda n: n >= after_move + 20, 3.0, "lines after the move")
    finally:
        pacer.stop()
        for sender in senders:
            sender.close()
    for i, channel_id in enumerate(moving):
        expected = 1 + sum(len(s.sent) for s in senders[2 * i: 2 * i + 2])
        got = wait_until(lambda: backlog(b, channel_id), lambda m: len(m) >= expected, 5.0,
                         f"every line of {channel_id}")
        assert len(got) == expected
        assert texts_of(got[:1], "one") == [f"one {channel_id}"]
        for sender in senders[2 * i: 2 * i + 2]:
            assert texts_of(got, sender.procid) == sender.sent, sender.procid
    assert backlog_keys(s0, prefix) == set()
    assert set(moving) <= backlog_keys(fresh, prefix)


# -- 6. drains: every node delivers what it ingested -----------------------------------------------------
class DrainAcrossNodesTests(unittest.TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _world(self, world):
        self.world = world

    def blocking(self, fn, *args, **kwargs):
        return threads.deferToThread(fn, *args, **kwargs)

    async def test_each_node_delivers_what_it_ingested_in_order(self):
        w = self.world
        sink = HttpSink()
        await sink.start()
        self.addCleanup(sink.stop)
        channel_id, tokens = await self.blocking(w.channel, w.a, "app")
        answer = await self.blocking(w.a.api, "POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url})
        self.assertEqual(answer.status, 201, answer)
        path = f"/v3/channels/{channel_id}/drains/{answer.json()['id']}"
        await self.blocking(everywhere, [w.b, w.c], lambda n: n.api("GET", path).status == 200,
                            time.monotonic(), 1.0, "the drain made on a")

        def send():
            with Sender(w.a, tokens["app"], "sa") as sa, Sender(w.c, tokens["app"], "sc") as sc:
                for i in range(0, 200, 20):
                    sa.send([f"sa {j:04d}" for j in range(i, i + 20)])
                    sc.send([f"sc {j:04d}" for j in range(i, i + 20)])
                return sa.sent, sc.sent

        sent_a, sent_c = await self.blocking(send)
        await sink.wait_for(400, timeout=15)
        messages = sink.messages()
        self.assertEqual(texts_of(messages, "sa"), sent_a)
        self.assertEqual(texts_of(messages, "sc"), sent_c)
        self.assertEqual(len(messages), 400)

        def delivered():
            return {name: w.nodes[name].api("GET", path).json()["state"]["delivered"] for name in "abc"}

        counts = await self.blocking(wait_until, delivered, lambda d: d == {"a": 200, "b": 0, "c": 200},
                                     3.0, "each node's delivered count")
        self.assertEqual(counts, {"a": 200, "b": 0, "c": 200})


# -- 5. the node registry, and a node killed (last: c stays dead) ------------------------------------------
def test_nodes_are_listed_and_a_killed_node_drops_out(world):
    a, b, c = world.a, world.b, world.c
    for node in (a, b, c):
        listed = wait_until(lambda: node.api("GET", "/v3/nodes").json(),
                            lambda v: [n["node"] for n in v] == ["a", "b", "c"], 3.0, "a, b and c listed")
        age = time.monotonic() - world.started
        for doc in listed:
            assert doc["version"] == logplex.__version__, doc
            assert isinstance(doc["uptime"], (int, float)) and 0 <= doc["uptime"] <= age + 1, doc
        assert {d["node"]: d["pid"] for d in listed} == {n: world.nodes[n].proc.pid for n in "abc"}

    channel_id, tokens = world.channel(a, "app")
    tail = open_tail(a, b, channel_id)
    sender = Sender(a, tokens["app"], "pa")
    pacer = None
    try:
        warm(tail, a, tokens["app"])
        pacer = Pacer([sender], "kill", rate=100)
        tail.wait(lambda _: len(tail.texts("pa")) >= 20, 3.0, "lines on the tail before the kill")
        c.proc.kill()
        killed = time.monotonic()
        # Three missed one-second heartbeats, and a second for the last beat's age and polling.
        wait_until(lambda: [n["node"] for n in a.api("GET", "/v3/nodes").json()], lambda v: v == ["a", "b"],
                   4.0, "c gone from /v3/nodes")
        gone = time.monotonic() - killed
        assert [n["node"] for n in b.api("GET", "/v3/nodes").json()] == ["a", "b"]
        assert redis(world.cfg, "HEXISTS", "lp:nodes", "c") == 0
        count = len(sender.sent)
        tail.wait(lambda _: len(tail.texts("pa")) >= count + 20, 3.0, "lines on the tail after the kill")
    finally:
        if pacer is not None:
            pacer.stop()
        sender.close()
    try:
        got = wait_until(lambda: tail.texts("pa"), lambda t: len(t) >= len(sender.sent), 3.0, "every line")
        assert got == sender.sent
        assert gone <= 4.0
    finally:
        tail.close()


# -- 7. --workers ------------------------------------------------------------------------------------------
@pytest.fixture
def workers_node():
    root = tempfile.mkdtemp(prefix="logplex-workers-")
    # No --config-redis: the master runs the embedded redis-server for its workers.
    proc = NodeProcess(root, None, ["--workers", "2", "--heartbeat", "1"], name="w")
    proc.start()
    children = descendants(proc.pid)
    try:
        yield Node(proc, [proc.syslog_port])
    finally:
        children |= descendants(proc.pid) if proc.pid else set()
        proc.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


def test_workers_are_cluster_members_and_leave_no_process_behind(workers_node):
    node = workers_node
    master = node.proc.pid
    # Both workers booted (the API answers 503 on one still loading) and heartbeating.
    answer = wait_until(lambda: node.api("GET", "/v3/nodes"),
                        lambda r: r.status == 200 and [n["node"] for n in r.json()] == ["w-0", "w-1"],
                        10.0, "both workers listed")
    listed = answer.json()
    children = descendants(master)
    workers = {doc["pid"] for doc in listed}
    assert len(workers) == 2 and workers <= children and master not in workers, (listed, children)
    servers = {pid for pid in children if "redis-server" in command_line(pid)}
    assert len(servers) == 1, {pid: command_line(pid) for pid in children}

    channel_id, tokens = node.channel("app")
    # Each worker knows the channel (seen on /metrics, which any one worker answers).
    views: dict[str, float] = {}

    def look():
        text = http_request(node.api_port, "GET", "/metrics").body.decode()
        name = re.search(r'^logplex_node_info\{.*node="([^"]+)"', text, re.M).group(1)
        views[name] = float(re.search(r"^logplex_config_channels (\S+)$", text, re.M).group(1))
        return dict(views)

    wait_until(look, lambda v: v.get("w-0") == 1 and v.get("w-1") == 1, 5.0, "the channel known to both workers")
    # Whichever worker answers, a scrape shows the load of both (they share it every second).
    wait_until(lambda: set(re.findall(r'^logplex_worker_busy_ratio\{worker="([^"]+)"\} ',
                                      http_request(node.api_port, "GET", "/metrics").body.decode(), re.M)),
               lambda w: w == {"w-0", "w-1"}, 5.0, "the busy share of both workers on one scrape")
    a_line_from_each_of_20_connections(node, tokens["app"], channel_id)

    code = node.proc.stop()
    assert code in (0, -signal.SIGTERM), node.proc.log_text()[-3000:]
    left = wait_until(lambda: {pid for pid in children if alive(pid)}, lambda s: not s, 10.0,
                      "workers and redis-server gone after the master's SIGTERM")
    assert left == set()


def test_with_no_workers_option_a_node_runs_one_worker_per_cpu_and_each_takes_syslog(tmp_path):
    """README's `twistd -n logplex` (embedded Redis, no --workers) on two CPUs: two workers, both ingesting."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs two CPUs to run the node on")
    # Two CPUs whatever the machine has: the default follows the node's affinity mask.
    proc = NodeProcess(str(tmp_path), None, ["--heartbeat", "1"], name="d", workers=None, cpus=usable[:2])
    proc.start()
    children = descendants(proc.pid)
    node = Node(proc, [proc.syslog_port])
    try:
        wait_until(lambda: node.api("GET", "/v3/nodes"),
                   lambda r: r.status == 200 and [n["node"] for n in r.json()] == ["d-0", "d-1"],
                   10.0, "two workers listed")
        children |= descendants(proc.pid)
        assert "workers count=2 reason='one per CPU this process may use (2)'" in proc.log_text()
        channel_id, tokens = node.channel("app")
        received: dict[str, float] = {}

        def scrape() -> dict[str, float]:
            # Whichever worker the kernel hands the connection answers, with its own counters.
            text = http_request(node.api_port, "GET", "/metrics").body.decode()
            name = re.search(r'^logplex_node_info\{.*node="([^"]+)"', text, re.M).group(1)
            known = float(re.search(r"^logplex_config_channels (\S+)$", text, re.M).group(1))
            found = re.search(r"^logplex_messages_received_total (\S+)$", text, re.M)
            received[name] = float(found.group(1)) if found else 0.0
            return {name: known}

        known: dict[str, float] = {}
        wait_until(lambda: known.update(scrape()) or known, lambda k: k == {"d-0": 1, "d-1": 1},
                   5.0, "the channel known to both workers")
        before = dict(received)
        a_line_from_each_of_20_connections(node, tokens["app"], channel_id)
        # Each worker framed some of them (the kernel spreads 20 connections over both).
        took = wait_until(lambda: scrape() and {n: received[n] - before[n] for n in received},
                          lambda t: set(t) == {"d-0", "d-1"} and sum(t.values()) == 20,
                          5.0, "both workers' counts of lines received")
        assert min(took.values()) > 0, took
        servers = {pid for pid in children if "redis-server" in command_line(pid)}
        assert len(servers) == 1, {pid: command_line(pid) for pid in children}

        code = proc.stop()
        assert code in (0, -signal.SIGTERM), proc.log_text()[-3000:]
        left = wait_until(lambda: {pid for pid in children if alive(pid)}, lambda s: not s, 10.0,
                          "workers and redis-server gone after the master's SIGTERM")
        assert left == set()
    finally:
        proc.kill()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_master_whose_port_is_taken_says_so_in_one_line_exits_1_and_leaves_no_redis(tmp_path):
    # Another program listens on a port the node is told to use (with SO_REUSEPORT, as another
    # node's master would: the node must not quietly share it).
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = f"tcp:{other.getsockname()[1]}:interface=127.0.0.1"
        proc = NodeProcess(str(tmp_path), None, ["--syslog", taken], workers=2)
        os.makedirs(proc.dir, exist_ok=True)
        done = subprocess.run(proc.command(), cwd=proc.dir, env=proc.environment(), stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=60)
    log = proc.log_text()
    assert done.returncode == 1, (done.returncode, log[-3000:])
    assert (f"node_start_failed reason=The syslog listener cannot listen on {taken}: Address already in use. "
            "Stop what uses that address, or give the node another one (--syslog).") in log
    assert "Traceback" not in log
    # The master had started the embedded redis-server (it works in its data dir) before it bound.
    assert "redis-server" in log and _processes_working_in(proc.data_dir) == set()


def _processes_working_in(directory: str) -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(directory) and alive(int(pid)):
                found.add(int(pid))
        except OSError:
            continue
    return found


def a_line_from_each_of_20_connections(node: Node, token: str, channel_id: str) -> None:
    """One line over each of 20 new syslog connections (the kernel spreads them over the
    workers); all 20 reach the channel's backlog."""
    connections = [socket.create_connection(("127.0.0.1", node.syslog_port), timeout=5) for _ in range(20)]
    for i, sock in enumerate(connections):
        sock.sendall(octet(syslog_message(token, "conn", f"conn {i:02d}")))
    for sock in connections:
        sock.close()
    got = wait_until(lambda: sorted(texts_of(backlog(node, channel_id), "conn")), lambda t: len(t) == 20,
                     5.0, "a line from each of 20 connections")
    assert got == [f"conn {i:02d}" for i in range(20)]
