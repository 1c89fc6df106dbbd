"""Which primary the sentinels name, through failovers, without a Redis (logplex/redis/sentinel.py)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.redis import sentinel
from logplex.redis.address import parse_redis_url

# -- Sentinel: which primary -------------------------------------------------------------------
class _Answers(sentinel._PrimaryWatch):
    """A watch whose sentinels answer from a table: (config epoch, primary), None, or an error."""

    def __init__(self, answers, clock):
        address = parse_redis_url("redis+sentinel://a:1,b:2,c:3/svc")
        super().__init__(clock, address, timeout=1.0)
        self.answers = answers

    async def _ask(self, host, port):
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_sentinel_with_the_newest_configuration_is_believed():
    clock = Clock()
    watch = _Answers({"a": (3, ("old", 1)), "b": (4, ("new", 2)), "c": ConnectionRefusedError()}, clock)
    d = defer.ensureDeferred(watch.discover())
    assert d.result == ("new", 2)


def test_a_replica_being_promoted_is_the_primary_until_the_sentinels_confirm_or_time_out():
    clock = Clock()
    watch = _Answers({"a": (3, ("old", 1)), "b": (3, ("old", 1)), "c": (3, ("old", 1))}, clock)
    pool = SimpleNamespace(pool=[], stopped=False)
    endpoint = SimpleNamespace(factory=pool, seen=[], primary_is=lambda p: endpoint.seen.append(p))
    watch.endpoints.append(endpoint)
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6379 @ other 10.0.0.1 6379")
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)  # another service's
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6380 @ svc 10.0.0.1 6379")
    assert endpoint.seen == [("10.0.0.2", 6380)]
    assert defer.ensureDeferred(watch.discover()).result == ("10.0.0.2", 6380)
    # An aborted failover: after promotion_wait the sentinels' answer counts again.
    clock.advance(watch.promotion_wait)
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6380 @ svc 10.0.0.1 6379")
    watch.switched(b"svc 10.0.0.1 6379 10.0.0.2 6380")
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)  # as the table says


def test_no_sentinel_naming_a_primary_is_an_error_that_says_why():
    clock = Clock()
    watch = _Answers({"a": None, "b": ConnectionRefusedError("refused"), "c": None}, clock)
    failures = []
    defer.ensureDeferred(watch.discover()).addErrback(failures.append)
    assert failures[0].check(sentinel.txredisapi.MasterNotFoundError)
    assert "a:1: no healthy primary" in failures[0].getErrorMessage()
