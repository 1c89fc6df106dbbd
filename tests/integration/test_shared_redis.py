"""Two clusters on one redis-server: with different namespaces in one db, or one namespace in two
dbs, neither sees the other's keys, config, backlogs, tails or drains.

Each cluster is one real node. Both have a channel of the same name; lines sent to one must
never show in the other's backlog, live tail or drain, and a config change in one (a channel
deleted, a credential made) must never be heard by the other. Pub/sub ignores the db, so
case (b) is the one the db number in every channel name exists for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.harness.cluster import Resp, Tail, metric_sum, open_tail, send_lines, wait_until
from tests.harness.sinks import ThreadSink
from tests.harness.client import Node
from tests.harness.procs import REPO_ROOT, NodeProcess, RedisServer

NODE_ARGS = ("--allow-private-drains", "--heartbeat", "1", "--drain-backoff-max", "1",
             "--login-failures", "1000000")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    server = RedisServer(str(tmp_path_factory.mktemp("shared-redis")))
    server.start()
    yield server
    server.stop()


def start(tmp_path_factory, server: RedisServer, db: int, namespace: str | None, name: str) -> Node:
    args = [*NODE_ARGS] + (["--namespace", namespace] if namespace else [])
    proc = NodeProcess(str(tmp_path_factory.mktemp(name)), f"redis://127.0.0.1:{server.port}/{db}", args,
                       name=name)
    proc.start()
    return Node(proc, [proc.syslog_port])


@pytest.fixture(scope="module")
def first(tmp_path_factory, shared):
    """The cluster as every existing one runs: namespace lp (the default), db 0."""
    node = start(tmp_path_factory, shared, 0, None, "first")
    yield node
    node.proc.stop()


@pytest.fixture(scope="module", params=["same-db-other-namespace", "same-namespace-other-db"])
def other(request, tmp_path_factory, shared):
    """(the second cluster's node, its db, its namespace)."""
    db, namespace = (0, "other") if request.param == "same-db-other-namespace" else (5, "lp")
    node = start(tmp_path_factory, shared, db, namespace if namespace != "lp" else None,
                 f"second-{request.param}")
    yield node, db, namespace
    node.proc.stop()


def make_channel(node: Node, channel_id: str, sink: ThreadSink) -> str:
    answer = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
    assert answer.status == 201, answer
    assert node.api("POST", f"/v3/channels/{channel_id}/drains", {"url": sink.url}).status == 201
    return answer.json()["tokens"]["app"]


def test_two_clusters_on_one_redis_never_see_each_others_data(shared, first, other):
    second, db, namespace = other
    channel_id = f"shared-{uuid.uuid4().hex[:8]}"  # the same name in both clusters
    sinks = {"first": ThreadSink(), "second": ThreadSink()}
    tails: list[Tail] = []
    try:
        tokens = {"first": make_channel(first, channel_id, sinks["first"]),
                  "second": make_channel(second, channel_id, sinks["second"])}
        nodes = {"first": first, "second": second}
        # The second cluster tails first: had its interest crossed over on the feed, the
        # first node would publish its lines on the bus for it.
        tail = {"second": open_tail(second, second, channel_id)}
        tail["first"] = open_tail(first, first, channel_id)
        tails += tail.values()
        bus_before = {k: metric_sum(n, "logplex_tail_bus_received_total") for k, n in nodes.items()}
        for round_ in range(3):
            for who in ("first", "second"):
                send_lines(nodes[who], [(tokens[who], "web.1", f"{who}-{round_}-{i}") for i in range(5)])
            for who in ("first", "second"):
                tail[who].wait(lambda lines, who=who, r=round_: sum(f"{who}-{r}-" in x for x in lines) == 5,
                               5.0, f"{who}'s round {round_} in its own tail")
        for who in ("first", "second"):
            wait_until(lambda w=who: len(sinks[w].texts()), lambda n: n >= 15, 10.0, f"{who}'s drain")
            wait_until(lambda w=who: nodes[w].backlog(channel_id), lambda lines: len(lines) >= 15, 5.0,
                       f"{who}'s backlog")

        for who, stranger in (("first", "second"), ("second", "first")):
            backlog = nodes[who].backlog(channel_id)
            assert len(backlog) == 15 and not [x for x in backlog if f"{stranger}-" in x], backlog
            assert not [x for x in tail[who].lines() if f"{stranger}-" in x], tail[who].lines()
            assert sorted(sinks[who].texts()) == sorted(f"{who}-{r}-{i}" for r in range(3) for i in range(5))
            # Not one line crossed on the tail bus either (none of them reached a tail only
            # because the other cluster's channel is another incarnation).
            assert metric_sum(nodes[who], "logplex_tail_bus_received_total") == bus_before[who]

        # A config change in one is never heard by the other: a credential made in the first
        # does not open the second, and its channel deleted leaves the second's working.
        created = first.api("POST", "/v3/credentials", {"perms": ["full_api"], "note": "first only"})
        assert created.status == 201, created
        user, secret = created.json()["id"], created.json()["secret"]
        assert first.api("GET", "/v3/nodes", auth=(user, secret)).status == 200
        assert second.api("GET", "/v3/nodes", auth=(user, secret)).status == 401
        assert first.api("DELETE", f"/v3/channels/{channel_id}").status in (200, 204)
        send_lines(second, [(tokens["second"], "web.1", "after-delete")])
        tail["second"].wait(lambda lines: any("after-delete" in x for x in lines), 5.0,
                            "the second's tail after the first deleted its channel")
        assert second.api("GET", f"/v3/channels/{channel_id}").status == 200
        assert "after-delete" in second.wait_backlog(channel_id, 16)[-1]

        # Every key of the second cluster is under its namespace, in its own db; today's
        # names (lp:...) are the first's.
        keys = _keys(shared, db)
        assert f"{namespace}:log:{channel_id}" in keys and f"{namespace}:channels" in keys, keys
        if namespace != "lp":
            assert all(k.startswith(("lp:", f"{namespace}:")) for k in keys), keys
            assert "lp:creds" in keys and "lp:nodes" in keys
        else:
            assert "lp:creds" in _keys(shared, 0)
        # The first's channel is gone with its backlog; the second's is all there.
        assert f"lp:log:{channel_id}" not in _keys(shared, 0)
    finally:
        for t in tails:
            t.close()
        for sink in sinks.values():
            sink.close()


def _keys(server: RedisServer, db: int) -> set[str]:
    client = Resp(server.port)
    try:
        client("SELECT", db)
        return {k.decode() for k in client("KEYS", "*")}
    finally:
        client.close()


def test_the_admin_shard_commands_move_only_their_namespaces_data(shared, first, other):
    second, db, namespace = other
    channel_id = f"moved-{uuid.uuid4().hex[:8]}"  # the same name in both clusters
    tokens = {}
    for who, node in (("first", first), ("second", second)):
        answer = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        assert answer.status == 201, answer
        tokens[who] = answer.json()["tokens"]["app"]
        send_lines(node, [(tokens[who], "web.1", f"{who}-{i}") for i in range(3)])
        assert len(node.wait_backlog(channel_id, 3)) == 3
    config_url = f"redis://127.0.0.1:{shared.port}/{db}"
    target_db = 9 if namespace != "lp" else 10  # a db of its own for each case
    target_url = f"redis://127.0.0.1:{shared.port}/{target_db}"
    listed = admin_shards(config_url, "--namespace", namespace, "list")
    assert listed == {"shard-0": "config"}
    moved = admin_shards(config_url, "--namespace", namespace, "replace", "shard-0", target_url)
    assert moved["backlog_lines"] >= 3
    # The second cluster's backlogs (and spools) went to the new db and it reads them there;
    # the first's (same channel name, same server, and in case (a) the same db) never moved.
    moved_keys = _keys(shared, target_db)
    assert f"{namespace}:log:{channel_id}" in moved_keys
    assert all(k.startswith(f"{namespace}:") for k in moved_keys), moved_keys
    wait_until(lambda: second.backlog(channel_id), lambda lines: len(lines) == 3, 5.0, "second's backlog")
    assert [x.rsplit(" ", 1)[-1] for x in second.backlog(channel_id)] == ["second-0", "second-1", "second-2"]
    assert f"lp:log:{channel_id}" in _keys(shared, 0)
    assert [x.rsplit(" ", 1)[-1] for x in first.backlog(channel_id)] == ["first-0", "first-1", "first-2"]
    assert admin_shards(f"redis://127.0.0.1:{shared.port}/0", "list") == {"shard-0": "config"}


def admin_shards(config_url: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "logplex.admin.shards", "--config-redis", config_url,
                           "--settle", "0.5", *args],
                          env=dict(os.environ, PYTHONPATH=REPO_ROOT), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
