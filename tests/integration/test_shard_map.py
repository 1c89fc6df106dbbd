"""The shard map on real nodes: a node that missed the change notification follows the new
map within one --reconcile-interval, `shards remove` under load loses no line, and a merge
that was interrupted is completed by the next run of the admin command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.backlog.shardmap import _move

from tests.harness.cluster import (
    Pacer, Sender, World, backlog, backlog_keys, metric_sum, redis, send_lines, texts_of,
    wait_until,
)
from tests.harness.client import unique
from tests.harness.procs import RedisServer, Resp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECONCILE = 1.0


@pytest.fixture(scope="module")
def world():
    # Three nodes on a config and two shard Redis, checking the shard map every second.
    w = World("shardmap", node_args=("--reconcile-interval", str(RECONCILE)))
    try:
        w.start()
        yield w
    finally:
        w.stop()


def shards_command(world: World, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "logplex.admin.shards", "--config-redis", world.cfg.url, "--settle", "0.5",
         "--wait", "20", *args],
        env=dict(os.environ, PYTHONPATH=REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def admin(world: World, *args: str) -> dict:
    proc = shards_command(world, *args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def channels(world: World, count: int) -> dict[str, str]:
    """count channels with one line each ("one <channel>"), written through node a."""
    prefix = unique("map")[:12]
    tokens = {}
    for i in range(count):
        channel_id = f"{prefix}-{i:03d}"
        answer = world.a.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        assert answer.status == 201, answer
        tokens[channel_id] = answer.json()["tokens"]["app"]
    for node in world.nodes.values():
        wait_until(lambda: node.api("GET", f"/v3/channels/{channel_id}").status, lambda s: s == 200, 2.0,
                   "the channels known everywhere")
    send_lines(world.a, [(token, "one", f"one {ch}") for ch, token in tokens.items()])
    wait_until(lambda: sum(len(backlog_keys(s, prefix)) for s in [*world.shards, *world.extra]),
               lambda n: n == count, 5.0,
               "every channel's backlog on the shards")
    return tokens


def socket_ports(pid: int) -> set[int]:
    """The local TCP ports of a process's sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cut_subscriptions(world: World, pid: int) -> int:
    """Close, from the config Redis's side, every pub/sub connection of one node process."""
    ports = socket_ports(pid)
    killed = 0
    for line in redis(world.cfg, "CLIENT", "LIST").decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "P" in fields.get("flags", "") and int(fields["addr"].rsplit(":", 1)[1]) in ports:
            redis(world.cfg, "CLIENT", "KILL", "ID", fields["id"])
            killed += 1
    return killed


def map_versions(world: World) -> list[float]:
    return [metric_sum(node, "logplex_shard_map_version") for node in world.running()]


def test_a_node_that_missed_the_notification_follows_the_added_shard_within_one_interval(world):
    a, b, c = world.a, world.b, world.c
    tokens = channels(world, 60)
    on_before = [backlog_keys(s, "map") for s in world.shards]
    # Node c hears nothing of the change: stopped, its feed connection closed under it.
    os.kill(c.proc.pid, signal.SIGSTOP)
    try:
        assert cut_subscriptions(world, c.proc.pid) >= 1
        added_redis = world.redis_server()
        adding = shards_command(world, "add", added_redis.url)
        wait_until(lambda: redis(world.cfg, "HGET", "lp:shards", "shard-2"), lambda url: url is not None,
                   10.0, "the new shard in the map")
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    out, err = adding.communicate(timeout=60)
    assert adding.returncode == 0, err
    assert json.loads(out)["shard"] == "shard-2"
    # Within one reconcile interval (plus a heartbeat's slack), c writes to the new map.
    try:
        wait_until(lambda: map_versions(world), lambda v: len(set(v)) == 1 and v[0] > 0,
                   RECONCILE + 1.5, "the same shard map version on every node")
    except AssertionError:
        pass  # asserted below, once the lines show what a node on the old map does
    send_lines(c, [(token, "two", f"two {ch}") for ch, token in tokens.items()])
    moved = backlog_keys(added_redis, "map")
    assert moved, "no channel moved to the new shard"
    for channel_id in tokens:
        for reader in (b, c):
            got = wait_until(lambda: backlog(reader, channel_id), lambda m: len(m) >= 2, 3.0,
                             f"both lines of {channel_id} through node {reader.proc.name}")
            assert texts_of(got, "one") + texts_of(got, "two") == [f"one {channel_id}", f"two {channel_id}"]
    # Nothing was left behind on the shard a channel left.
    for server, before in zip(world.shards, on_before):
        assert backlog_keys(server, "map") == before - moved
    versions = map_versions(world)
    assert len(set(versions)) == 1 and versions[0] > 0, versions
    listed = a.api("GET", "/v3/nodes").json()
    assert {n["node"]: n["shard_map_version"] for n in listed} == {n: versions[0] for n in "abc"}


def test_removing_a_shard_under_load_loses_no_line(world):
    a, b, c = world.a, world.b, world.c
    tokens = channels(world, 30)
    s0 = world.shards[0]
    busy = sorted(ch for ch in tokens if ch in backlog_keys(s0, "map"))[:6]
    assert busy
    senders = [Sender(node, tokens[ch], f"via-{node.proc.name}-{i}") for i, ch in enumerate(busy)
               for node in (a, c)]
    pacer = Pacer(senders, "load", rate=100, batch=2)
    try:
        wait_until(lambda: len(backlog(b, busy[0])), lambda n: n >= 10, 3.0, "lines before the removal")
        removed = admin(world, "remove", "shard-0")
        assert removed["shard"] == "shard-0" and removed["channels_moved"] >= len(busy), removed
        after = len(backlog(b, busy[0]))
        wait_until(lambda: len(backlog(b, busy[0])), lambda n: n >= after + 10, 3.0, "lines after the removal")
    finally:
        pacer.stop()
        for sender in senders:
            sender.close()
    assert "shard-0" not in admin(world, "list")
    assert backlog_keys(s0, "map") == set()
    for i, channel_id in enumerate(busy):
        pair = senders[2 * i: 2 * i + 2]
        expected = 1 + sum(len(s.sent) for s in pair)
        got = wait_until(lambda: backlog(b, channel_id), lambda m: len(m) >= expected, 5.0,
                         f"every line of {channel_id}")
        assert len(got) == expected
        for sender in pair:
            assert texts_of(got, sender.procid) == sender.sent, sender.procid
    for channel_id in tokens:
        assert texts_of(backlog(c, channel_id), "one") == [f"one {channel_id}"], channel_id


def test_an_interrupted_merge_is_completed_by_the_next_run(world):
    b = world.b
    tokens = channels(world, 30)
    stored = {k.decode(): v.decode() for k, v in
              zip(*[iter(redis(world.cfg, "HGETALL", "lp:shards"))] * 2)}
    name = sorted(stored)[-1]
    leaving = next(s for s in [*world.shards, *world.extra] if s.url == stored[name])
    on_leaving = backlog_keys(leaving, "map")  # these channels' and the earlier tests'
    stranded = on_leaving & set(tokens)
    assert stranded
    # What `shards remove` records before it merges, and then the admin process died:
    # the map changed and every node follows it, but the backlogs are still on the old shard.
    new_map = {k: v for k, v in stored.items() if k != name}
    plan = json.dumps({"op": "remove", "shard": name, "old": stored, "new": new_map})
    client = Resp(world.cfg.port)
    try:
        version = client("INCR", "lp:shardmap:version")
        client("HDEL", "lp:shards", name)
        client("HSET", "lp:shardmap:merge", "plan", plan, "version", version)
    finally:
        client.close()
    wait_until(lambda: map_versions(world), lambda v: set(v) == {float(version)}, RECONCILE + 1.5,
               "every node on the map without the shard")
    assert texts_of(backlog(b, sorted(stranded)[0]), "one") == []  # what an operator would see
    resumed = admin(world, "resume")
    assert resumed["resumed"]["shard"] == name and resumed["resumed"]["channels_moved"] == len(on_leaving)
    assert redis(world.cfg, "EXISTS", "lp:shardmap:merge") == 0
    assert backlog_keys(leaving, "map") == set()
    for channel_id in tokens:
        assert texts_of(backlog(b, channel_id), "one") == [f"one {channel_id}"], channel_id
    # Nothing left to resume: the next run says so.
    assert admin(world, "resume") == {"resumed": None}


def test_the_move_waits_for_a_node_on_the_old_map_names_it_and_resume_completes_it(world):
    b = world.b
    tokens = channels(world, 20)
    # A live node that never reports the new map (an older logplex, or one cut off the feed).
    laggard = json.dumps({"version": "old", "started_at": time.time(), "seen_at": time.time(), "ttl": 60,
                          "api_url": "", "pid": 1})
    redis(world.cfg, "HSET", "lp:nodes", "laggard", laggard)
    try:
        added = world.redis_server()
        proc = subprocess.run(
            [sys.executable, "-m", "logplex.admin.shards", "--config-redis", world.cfg.url, "--settle", "0.5",
             "--wait", "1", "add", added.url],
            env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert "Node laggard did not report shard map version" in proc.stderr, proc.stderr
        assert "logplex.admin.shards resume" in proc.stderr
        assert redis(world.cfg, "EXISTS", "lp:shardmap:merge") == 1
    finally:
        redis(world.cfg, "HDEL", "lp:nodes", "laggard")
    resumed = admin(world, "resume")["resumed"]
    assert resumed["op"] == "add" and resumed["channels_moved"] >= 1, resumed
    for channel_id in tokens:
        assert texts_of(backlog(b, channel_id), "one") == [f"one {channel_id}"], channel_id


class InterruptedMoveTests(TestCase):
    """A move stopped between copying a key and deleting its source, on real Redis servers."""

    timeout = 30

    def setUp(self):
        self.servers = [RedisServer(tempfile.mkdtemp(prefix="logplex-move-")) for _ in range(2)]
        for server in self.servers:
            server.start()
            self.addCleanup(server.stop)
        self.source, self.target = (connect(parse_redis_url(s.url), poolsize=1) for s in self.servers)
        self.addCleanup(lambda: defer.gatherResults([self.source.disconnect(),
                                                     self.target.disconnect()]))

    async def test_a_move_resumed_after_dying_mid_key_copies_nothing_twice(self):
        keys = RedisKeys("lp", 0)
        src, tgt = self.servers[0].url, self.servers[1].url
        backlog_key, spool_key = keys.backlog("x"), keys.spool(7, "n1")
        await self.source.rpush(backlog_key, [b"old-2", b"old-1"])
        await self.target.rpush(backlog_key, [b"new-1"])  # written by the nodes since the switch
        await self.source.rpush(spool_key, [b"chunk-1", b"chunk-2"])
        await self.source.hset(keys.spool_meta(spool_key), "bytes", 10)
        await self.source.hset(keys.spool_meta(spool_key), "messages", 4)
        await self.target.rpush(spool_key, [b"chunk-3"])
        await self.target.hset(keys.spool_meta(spool_key), "bytes", 5)
        await self.target.hset(keys.spool_meta(spool_key), "messages", 2)
        await self.source.hset(keys.drains, "7", json.dumps({"channel_id": "x"}))
        plan = {"op": "replace", "shard": "shard-0", "old": {"shard-0": src}, "new": {"shard-0": tgt}}
        pools = {src: self.source, tgt: self.target}

        class DiesAtFirstDelete:
            """The source as the admin saw it: the process died before its first delete."""

            def __getattr__(self, name):
                return getattr(pools[src], name)

            def delete(self, *args):
                raise ConnectionError("the admin process died here")

        dying = {src: DiesAtFirstDelete(), tgt: self.target}
        with self.assertRaises(ConnectionError):
            await _move(self.source, dying.__getitem__, plan, 3, keys=keys, history=1500)
        moved = await _move(self.source, pools.__getitem__, plan, 3, keys=keys, history=1500)
        self.assertEqual((moved["channels_moved"], moved["spool_chunks_moved"]), (1, 2))
        self.assertEqual(await self.target.lrange(backlog_key, 0, -1), [b"new-1", b"old-2", b"old-1"])
        self.assertEqual(await self.target.lrange(spool_key, 0, -1), [b"chunk-1", b"chunk-2", b"chunk-3"])
        self.assertEqual(await self.target.hgetall(keys.spool_meta(spool_key)),
                         {b"bytes": b"15", b"messages": b"6"})
        self.assertEqual(await self.source.keys("lp:log:*") + await self.source.keys("lp:spool:*"), [])
        self.assertEqual(await self.target.keys("lp:moved:*"), [])
