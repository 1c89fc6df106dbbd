"""The backlog write script on a real redis-server: what one flush leaves in Redis."""

from __future__ import annotations

from logplex.redis.keys import RedisKeys
from logplex.backlog.writer import WRITE_SCRIPT, write_arguments
from tests.harness.cluster import redis as call

KEYS = RedisKeys("script-test", 0)


def flush(server, batch, history=1500, expiry=3600, fresh=()):
    names, args = write_arguments(KEYS, batch, history, expiry, fresh)
    return call(server, "EVAL", WRITE_SCRIPT, len(names), *names, *args)


def test_one_call_writes_every_channel_newest_first_trimmed_to_the_history(redis):
    lines = [b"line %d" % n for n in range(2500)]  # more than one LPUSH of 1,000 and than the history
    assert flush(redis, {"many": lines, "one": [b"only"]}, history=1500) == 2
    stored = call(redis, "LRANGE", KEYS.backlog("many"), 0, -1)
    assert stored == lines[::-1][:1500]
    assert call(redis, "LRANGE", KEYS.backlog("one"), 0, -1) == [b"only"]
    assert 0 < call(redis, "TTL", KEYS.backlog("many")) <= 3600


def test_a_fresh_backlog_keeps_its_ttl_but_a_new_list_always_gets_one(redis):
    flush(redis, {"kept": [b"a"]}, expiry=3600)
    call(redis, "EXPIRE", KEYS.backlog("kept"), 100)
    flush(redis, {"kept": [b"b"], "made": [b"c"]}, expiry=3600, fresh={"kept", "made"})
    assert call(redis, "TTL", KEYS.backlog("kept")) <= 100  # not refreshed: this writer did lately
    assert 100 < call(redis, "TTL", KEYS.backlog("made")) <= 3600  # new: it gets its expiry at once
    assert call(redis, "LRANGE", KEYS.backlog("kept"), 0, -1) == [b"b", b"a"]


def test_a_call_sent_again_after_its_answer_was_lost_writes_nothing_twice(redis):
    names, args = write_arguments(KEYS, {"twice": [b"a", b"b"]}, 1500, 3600, writer="w1", call=b"7")
    assert call(redis, "EVAL", WRITE_SCRIPT, len(names), *names, *args) == 1
    # The shard ran it but the answer was lost: the writer sends the same call again.
    assert call(redis, "EVAL", WRITE_SCRIPT, len(names), *names, *args) == -1
    assert call(redis, "LRANGE", KEYS.backlog("twice"), 0, -1) == [b"b", b"a"]
    # Another writer's call of the same number is its own.
    other, other_args = write_arguments(KEYS, {"twice": [b"c"]}, 1500, 3600, writer="w2", call=b"7")
    assert call(redis, "EVAL", WRITE_SCRIPT, len(other), *other, *other_args) == 1
    assert call(redis, "LRANGE", KEYS.backlog("twice"), 0, -1) == [b"c", b"b", b"a"]


def test_the_ids_of_answered_calls_leave_the_writers_hash_and_the_hash_expires(redis):
    for n in (1, 2):
        names, args = write_arguments(KEYS, {"c": [b"x"]}, 1500, 3600, writer="w", call=b"%d" % n)
        call(redis, "EVAL", WRITE_SCRIPT, len(names), *names, *args)
    writes = KEYS.backlog_writes("w")
    assert sorted(call(redis, "HKEYS", writes)) == [b"1", b"2"]
    # Call 3 says 1 and 2 were answered (ARGV[4]: how many ids follow).
    names, args = write_arguments(KEYS, {"c": [b"y"]}, 1500, 3600, writer="w", call=b"3")
    args = args[:3] + [b"2", b"1", b"2"] + args[4:]
    assert call(redis, "EVAL", WRITE_SCRIPT, len(names), *names, *args) == 1
    assert call(redis, "HKEYS", writes) == [b"3"]
    assert 0 < call(redis, "TTL", writes) <= 86400
    assert call(redis, "LRANGE", KEYS.backlog("c"), 0, -1) == [b"y", b"x", b"x"]
