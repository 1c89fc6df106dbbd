"""A backlog write whose answer is lost is sent again and stored once (a real node, a real shard).

The attack on the old writer, reproduced: the shard runs the node's write
script, but its answer never reaches the node (tests.harness.redis_proxy
swallows it and closes the connection, as a shard stopping as it answers
would). The node sends the write again; each line must be in the backlog once.
"""

from __future__ import annotations

import tempfile

import pytest

from tests.harness.cluster import NODE_ARGS, redis, send_lines, wait_until
from tests.harness.client import Node, unique
from tests.harness.procs import NodeProcess, RedisServer
from tests.harness.redis_proxy import AnswerLosingProxy


@pytest.fixture
def rig():
    root = tempfile.mkdtemp(prefix="logplex-lostreply-")
    cfg, shard = RedisServer(tempfile.mkdtemp(dir=root)), RedisServer(tempfile.mkdtemp(dir=root))
    cfg.start()
    shard.start()
    proxy = AnswerLosingProxy(shard.port)
    proc = NodeProcess(tempfile.mkdtemp(dir=root), cfg.url, [*NODE_ARGS, "--shard-redis", proxy.url], name="a")
    try:
        proc.start()
        yield Node(proc, [proc.syslog_port]), shard, proxy
    finally:
        proc.stop()
        proxy.close()
        shard.stop()
        cfg.stop()


def test_a_backlog_write_whose_answer_was_lost_is_stored_once(rig):
    node, shard, proxy = rig
    channel_id = unique("lost")
    answer = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
    assert answer.status == 201, answer
    token = answer.json()["tokens"]["app"]
    key = f"lp:log:{channel_id}"
    stored = lambda: [line.rsplit(b" ", 1)[-1] for line in redis(shard, "LRANGE", key, 0, -1)][::-1]  # noqa: E731
    send_lines(node, [(token, "web.1", f"before-{n}") for n in range(5)])
    wait_until(stored, lambda got: len(got) == 5, 10.0, "the first lines in the backlog")

    proxy.lose_answer_to(key.encode())
    send_lines(node, [(token, "web.1", f"after-{n}") for n in range(5)])
    assert proxy.lost_event.wait(10.0), "no backlog write went through the proxy"
    assert proxy.lost[0].endswith(b":1\r\n"), proxy.lost  # the script ran: one backlog written
    sent = [f"before-{n}".encode() for n in range(5)] + [f"after-{n}".encode() for n in range(5)]
    got = wait_until(stored, lambda got: len(got) >= 10, 15.0, "the retried write")
    # Give a second retry no room to hide: one more line after it, then the whole backlog.
    send_lines(node, [(token, "web.1", "last")])
    got = wait_until(stored, lambda got: got[-1:] == [b"last"], 10.0, "a later write")
    assert got == sent + [b"last"], got
