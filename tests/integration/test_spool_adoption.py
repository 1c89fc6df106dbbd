"""A node that dies leaves its drain spools behind: a live node adopts them, delivers them once, in order.

Two real nodes on one Redis; a drain whose endpoint fails (503) while node a
spools; a is SIGKILLed and never heard from again; the endpoint recovers; b
adopts a's spool and delivers every line once, in order. Then a comes back
under its own name: it finds nothing left to deliver, so nothing arrives twice.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.cluster import metric_sum, send_lines, wait_until
from tests.harness.sinks import ThreadSink
from tests.harness.client import Node
from tests.harness.procs import NodeProcess, RedisServer, Resp

NODE_ARGS = ("--allow-private-drains", "--heartbeat", "1", "--drain-backoff-max", "0.5",
             "--redis-timeout", "1", "--drain-buffer", "16", "--spool-adopt-after", "2", "--login-failures", "1000000")


def start(tmp_path_factory, server: RedisServer, name: str) -> Node:
    proc = NodeProcess(str(tmp_path_factory.mktemp(name)), server.url, NODE_ARGS, name=name)
    proc.start()
    return Node(proc, [proc.syslog_port])


def spooled(server: RedisServer, drain_id: int, node: str) -> int:
    """Messages in a node's spool of a drain, as its meta hash in Redis says."""
    r = Resp(server.port)
    try:
        return int(r("HGET", f"lp:spool:{drain_id}:{node}:meta", "messages") or 0)
    finally:
        r.close()


@pytest.fixture
def world(tmp_path_factory):
    server = RedisServer(str(tmp_path_factory.mktemp("adopt-redis")))
    server.start()
    sink = ThreadSink(failing=True)
    nodes: list[Node] = []
    yield server, sink, nodes, tmp_path_factory
    for node in nodes:
        node.proc.kill()
    sink.close()
    server.kill()


def test_a_live_node_delivers_a_departed_nodes_spool_once_in_order(world):
    server, sink, nodes, tmp = world
    a = start(tmp, server, "a")
    nodes.append(a)
    b = start(tmp, server, "b")
    nodes.append(b)
    answer = a.api("PUT", "/v3/channels/adopt", {"tokens": ["app"]})
    assert answer.status == 201, answer
    token = answer.json()["tokens"]["app"]
    drain = a.api("POST", "/v3/channels/adopt/drains", {"url": sink.url})
    assert drain.status == 201, drain
    drain_id = int(drain.json()["id"])
    wait_until(lambda: b.api("GET", f"/v3/channels/adopt/drains/{drain_id}").status, lambda s: s == 200, 5.0,
               "the drain known to b")

    sent = [f"line-{i:04d}" for i in range(300)]
    # A few lines first, until the endpoint has refused them: the batch a retries then holds
    # only those, and what follows goes to memory (--drain-buffer 16) and on to the spool.
    send_lines(a, [(token, "web.1", text) for text in sent[:10]])
    wait_until(lambda: a.api("GET", f"/v3/channels/adopt/drains/{drain_id}").json()["state"]["retried"],
               lambda n: n >= 1, 10.0, "a's first refused batch")
    for i in range(10, len(sent), 50):
        send_lines(a, [(token, "web.1", text) for text in sent[i:i + 50]])
    # The endpoint refuses: a spools in Redis what its memory (--drain-buffer 16) cannot hold.
    # Once that stops growing (a spills overflow within a second), a is SIGKILLed: what it
    # held in memory is lost with it, what it spooled is what must reach the endpoint.
    wait_until(lambda: spooled(server, drain_id, "a"), lambda n: n >= len(sent) - 100, 15.0,
               "a's lines in its spool")
    stable = [-1]
    wait_until(lambda: spooled(server, drain_id, "a"), lambda n: stable.append(n) or stable[-2] == n, 10.0,
               "a's spool settled", poll=1.2)
    in_spool = stable[-1]
    a.proc.kill()  # SIGKILL: a never says goodbye
    sink.failing = False

    # b notices a is gone (3 missed heartbeats + --spool-adopt-after 2) and delivers its spool.
    wait_until(lambda: sink.texts(), lambda got: len(got) >= in_spool, 15.0,
               f"a's spooled lines delivered by b\n{b.proc.log_text()[-3000:]}")
    got = sink.texts()
    # Each once, in order: one unbroken run of what a was sent (the batch a was retrying and
    # the newest lines in its memory died with it).
    assert got[0] in sent, got[:3]
    first = sent.index(got[0])
    assert got == sent[first:first + in_spool]
    assert spooled(server, drain_id, "a") == 0
    assert metric_sum(b, "logplex_spool_adopted_total") == in_spool
    assert f"spool_adopted departed=a drain={drain_id} messages={in_spool}" in b.proc.log_text()

    # a returns under its own name: its spool is gone, nothing is delivered twice.
    again = start(tmp, server, "a")
    nodes.append(again)
    wait_until(lambda: again.proc.log_text(), lambda text: f"drain_started drain={drain_id}" in text, 10.0,
               "the drain started on the returned a")
    deadline = time.monotonic() + 2.0  # a's drain would have resent its spool long before this
    while time.monotonic() < deadline:
        assert len(sink.lines) == in_spool, "a delivered adopted lines a second time"
        time.sleep(0.1)
    assert "drain_spool_resumed" not in again.proc.log_text()
