"""Issue #14: a node that cannot keep up holds its senders back instead of dropping backlog lines.

The node's Redis is stopped (SIGSTOP) for a few seconds while a sender blasts
syslog over TCP: Redis is slow, not down (the node's connection stays, the
flush in flight waits for its answer within --redis-timeout). Before #14 the
backlog writer queued past its bound of 200,000 lines and shed the oldest
(logplex_backlog_dropped_total); now the node stops reading the sender's
connection once its writer queue is past half the bound and goes on when
Redis answers again, so every line is written and none is shed.
"""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from tests.harness.cluster import metric_sum, wait_until
from tests.harness.client import octet, start_node, stop_node, syslog_message
from tests.harness.procs import RedisServer

CHANNELS = 10
LINES = 400_000  # twice the writer's bound (200,000 lines)
STALL_S = 3.5  # under --redis-timeout (5 s): a slow Redis, not a failed one


@pytest.fixture
def stalling_redis(tmp_path_factory):
    """A Redis of this test's own: the test stops it."""
    server = RedisServer(str(tmp_path_factory.mktemp("overload-redis")))
    server.start()
    yield server
    os.kill(server.pid, signal.SIGCONT)
    server.stop()


def test_a_node_whose_redis_stalls_holds_its_senders_and_sheds_nothing(tmp_path_factory, stalling_redis):
    # A history deep enough that no line is superseded: the writer's bound is what is tested.
    node = start_node(tmp_path_factory, stalling_redis, "--history", str(LINES))
    try:
        tokens = [node.channel("app")[1]["app"] for _ in range(CHANNELS)]
        frames = [octet(syslog_message(t, "web.1", "x" * 120)) for t in tokens]
        payload = b"".join(frames[i % CHANNELS] for i in range(LINES))
        sent = threading.Event()

        def send() -> None:
            with socket.create_connection(("127.0.0.1", node.syslog_port)) as sock:
                sock.sendall(payload)
            sent.set()

        os.kill(stalling_redis.pid, signal.SIGSTOP)
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # The sender is held: it cannot hand over everything while Redis is stopped.
        assert not sent.wait(STALL_S)
        os.kill(stalling_redis.pid, signal.SIGCONT)
        sender.join(60)
        assert sent.is_set()
        handled = wait_until(
            lambda: metric_sum(node, "logplex_backlog_written_total") + metric_sum(node, "logplex_backlog_dropped_total"),
            lambda n: n >= LINES, timeout=60, what="every line written or shed")
        dropped = metric_sum(node, "logplex_backlog_dropped_total")
        print(f"\noverload: sent={LINES} written={handled - dropped:.0f} dropped={dropped:.0f} "
              f"pushbacks={metric_sum(node, 'logplex_backlog_pushback_total'):.0f}")
        assert dropped == 0
        assert handled == LINES
        assert metric_sum(node, "logplex_backlog_pushback_total") >= 1
    finally:
        stop_node(node)
