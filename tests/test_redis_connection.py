"""Pools and their checks, without a Redis (logplex/redis/connection.py): no Redis Cluster."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.redis import connection
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import RedisClusterRefused, refuse_cluster_mode

# -- Redis Cluster -------------------------------------------------------------------------------
class _InfoPool:
    def __init__(self, reply):
        self.reply = reply

    def execute_command(self, *args):
        if isinstance(self.reply, Exception):
            return defer.fail(self.reply)
        return defer.succeed(self.reply)


def test_a_cluster_mode_redis_is_refused():
    address = parse_redis_url("redis://h")
    d = defer.ensureDeferred(refuse_cluster_mode(_InfoPool(b"# Cluster\r\ncluster_enabled:1\r\n"), address, 1, Clock()))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(RedisClusterRefused)
    assert "runs in cluster mode (cluster_enabled:1)" in failure[0].getErrorMessage()


@pytest.mark.parametrize("reply", [b"# Cluster\r\ncluster_enabled:0\r\n",
                                   connection.txredisapi.ResponseError("NOPERM this user has no permissions")])
def test_a_standalone_redis_or_one_that_hides_info_is_accepted(reply):
    d = defer.ensureDeferred(refuse_cluster_mode(_InfoPool(reply), parse_redis_url("redis://h"), 1, Clock()))
    results = []
    d.addBoth(results.append)
    assert results == [None]
