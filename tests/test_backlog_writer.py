"""Batched backlog writes, and reads of what is written and on its way (logplex/backlog/writer.py)."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.metrics import Metrics
from logplex.redis.keys import RedisKeys
from logplex.backlog.writer import WRITE_SCRIPT, BacklogWriter
from logplex.settings import REDIS_TIMEOUT, BacklogSettings

KEYS = RedisKeys("lp", 0)
SETTINGS = BacklogSettings(history=100, expiry=3600, flush_interval=0.05)
backlog_key = KEYS.backlog


def as_commands(keys, args):
    """A WRITE_SCRIPT call as the commands it runs per channel (LTRIM shown whatever the length;
    EXPIRE shown as ("EXPIRE?", …) where it runs only if the list is new)."""
    answered = int(args[3])
    last, expiry, at, out = int(args[0]), int(args[1]), 4 + answered, []
    for key in keys[1:]:  # the first is the writer's hash of calls
        count = int(args[at])  # numbers go as Redis sees them: decimal bytes
        n = abs(count)
        expire = "EXPIRE" if count > 0 else "EXPIRE?"
        out += [("LPUSH", key, *args[at + 1:at + 1 + n]), ("LTRIM", key, 0, last), (expire, key, expiry)]
        at += 1 + n
    assert at == len(args)
    return out


class FakeRedis:
    """Records what each flush sends (one WRITE_SCRIPT call), as commands; the test answers each.
    ids: each call's id and the answered ids it takes out of the writer's hash."""

    def __init__(self):
        self.executed = []
        self.replies = []
        self.ids = []

    def eval(self, script, keys, args):
        assert script == WRITE_SCRIPT
        self.executed.append(as_commands(keys, args))
        self.ids.append((args[2], args[4:4 + int(args[3])]))
        d = defer.Deferred()
        self.replies.append(d)
        return d


def writer(**kw):
    clock = Clock()
    redis = FakeRedis()
    metrics = Metrics()
    w = BacklogWriter(redis, clock, metrics, SETTINGS, REDIS_TIMEOUT, keys=KEYS, **kw)
    return w, redis, clock, metrics


def test_one_script_call_per_tick_with_lpush_ltrim_expire_per_channel():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1", b"2"])
    w.append("b", [b"x"])
    w.append("a", [b"3"])
    assert redis.executed == []
    clock.advance(0.05)
    assert redis.executed == [[
        ("LPUSH", backlog_key("a"), b"1", b"2", b"3"),
        ("LTRIM", backlog_key("a"), 0, 99),
        ("EXPIRE", backlog_key("a"), 3600),
        ("LPUSH", backlog_key("b"), b"x"),
        ("LTRIM", backlog_key("b"), 0, 99),
        ("EXPIRE", backlog_key("b"), 3600),
    ]]
    redis.replies[0].callback([1, b"OK", 1] * 2)
    assert metrics.get("logplex_backlog_written_total", shard="") == 4


def test_messages_arriving_during_a_flush_go_in_the_next_one():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1"])
    clock.advance(0.05)
    w.append("a", [b"2"])
    clock.advance(1)
    assert len(redis.executed) == 1  # one flush in flight at a time
    redis.replies[0].callback([])
    clock.advance(0.05)
    assert redis.executed[1][0] == ("LPUSH", backlog_key("a"), b"2")


def test_a_failed_call_is_sent_again_whole_under_its_id_before_newer_messages():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1", b"2"])
    clock.advance(0.05)
    w.append("a", [b"3"])
    assert w.unwritten("a") == [b"1", b"2", b"3"]
    redis.replies[0].errback(ConnectionError("shard down"))
    assert w.unwritten("a") == [b"1", b"2", b"3"]
    clock.advance(1.0)
    # The same call, under the same id: if it had run before its answer was
    # lost, the script finds the id and does not write its lines again.
    assert redis.executed[1][0] == ("LPUSH", backlog_key("a"), b"1", b"2")
    assert redis.ids[1][0] == redis.ids[0][0]
    # The newer lines of the channel wait for its answer: the pool's two
    # connections could otherwise run them first.
    assert len(redis.executed) == 2
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 0
    redis.replies[1].callback(-1)  # it had run
    assert redis.executed[2][0] == ("LPUSH", backlog_key("a"), b"3")
    assert redis.ids[2][0] != redis.ids[0][0]
    redis.replies[2].callback(1)
    assert w.unwritten("a") == [] and metrics.get("logplex_backlog_written_total", shard="") == 3
    # The next call takes the answered ids out of the writer's hash.
    w.append("a", [b"4"])
    clock.advance(0.05)
    assert sorted(redis.ids[3][1]) == sorted([redis.ids[1][0], redis.ids[2][0]])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from("abc"), st.lists(st.binary(max_size=30), max_size=6)),
    st.tuples(st.just("tick"), st.booleans(), st.just([])),
    st.tuples(st.just("forget"), st.sampled_from("abc"), st.just([]))), max_size=40))
def test_the_queues_byte_count_is_what_it_holds_whatever_happens(steps):
    w, redis, clock, metrics = writer(max_pending=12, max_pending_bytes=150)
    answered = 0
    for kind, arg, lines in steps:
        if kind == "append":
            w.append(arg, lines)
        elif kind == "forget":
            w.forget(arg)
        else:
            clock.advance(0.05)
            while answered < len(redis.replies):  # answer every flush sent, or fail it
                reply = redis.replies[answered]
                answered += 1
                reply.callback(None) if arg else reply.errback(ConnectionError("shard down"))
        held = [lines for part in (w.pending, *(part for _, part in w.retrying)) for lines in part.values()]
        assert w.pending_bytes == sum(len(line) for lines in held for line in lines)
        assert w.pending_count == sum(map(len, held))
        assert w.pending_count <= 12 and w.pending_bytes <= 150


def test_the_queue_is_bounded_in_bytes_too():
    w, redis, clock, metrics = writer(max_pending=1000, max_pending_bytes=100)
    w.append("a", [b"a" * 40, b"b" * 40])
    w.append("b", [b"c" * 40])  # 120 bytes: the oldest line goes
    assert (w.pending_count, w.pending_bytes) == (2, 80)
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 1
    assert w.unwritten("a") == [b"b" * 40] and w.unwritten("b") == [b"c" * 40]
    clock.advance(0.05)
    assert w.pending_bytes == 0


def test_the_queue_is_bounded_and_what_is_shed_is_counted():
    w, redis, clock, metrics = writer(max_pending=5)
    w.append("a", [b"1", b"2", b"3"])
    w.append("b", [b"x", b"y", b"z", b"w"])
    assert w.pending_count == 5
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 2
    clock.advance(0.05)
    pushed = [c for c in redis.executed[0] if c[0] == "LPUSH"]
    # The oldest lines of the longest-waiting channel went first.
    assert pushed == [("LPUSH", backlog_key("a"), b"3"),
                      ("LPUSH", backlog_key("b"), b"x", b"y", b"z", b"w")]


def test_stop_flushes_what_is_queued():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1"])
    d = w.stop()
    assert redis.executed and not d.called
    redis.replies[0].callback([])
    assert d.called


def test_lines_the_trim_would_cut_are_never_sent():
    w, redis, clock, metrics = writer()
    w.append("a", [b"%d" % n for n in range(250)])
    clock.advance(0.05)
    lpush = redis.executed[0][0]
    assert lpush[2:] == tuple(b"%d" % n for n in range(150, 250))  # history=100
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 0


def test_unwritten_lines_are_visible_while_queued_and_in_flight():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1", b"2"])
    clock.advance(0.05)  # in flight now
    w.append("a", [b"3"])
    assert w.unwritten("a") == [b"1", b"2", b"3"]
    redis.replies[0].callback([])
    assert w.unwritten("a") == [b"3"]


def test_merge_backlog_does_not_repeat_lines_written_meanwhile():
    from logplex.backlog.writer import merge_backlog

    assert merge_backlog([b"a", b"b"], [b"c", b"d"], 10) == [b"a", b"b", b"c", b"d"]
    assert merge_backlog([b"a", b"b", b"c"], [b"b", b"c", b"d"], 10) == [b"a", b"b", b"c", b"d"]
    assert merge_backlog([b"a", b"b"], [b"c"], 2) == [b"b", b"c"]
    assert merge_backlog([b"a"], [], 5) == [b"a"]


def test_within_bytes_keeps_the_newest_lines_that_fit_and_always_the_newest():
    from logplex.backlog.writer import within_bytes

    lines = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]
    assert within_bytes(lines, 25) == [b"c" * 10, b"d" * 10]
    assert within_bytes(lines, 40) == lines
    assert within_bytes([b"x" * 100], 10) == [b"x" * 100]  # a reader always gets the newest line
    assert within_bytes([], 10) == []


class ShardPool(FakeRedis):
    """A shard's pool: pipelined flushes (answered by the test) and DEL, recorded in order."""

    def __init__(self):
        super().__init__()
        self.log = []

    def eval(self, script, keys, args):
        self.log.append("flush")
        return super().eval(script, keys, args)

    def delete(self, key):
        self.log.append(("DEL", key))
        return defer.succeed(1)


def backlogs():
    from logplex.backlog.writer import Backlogs

    clock, metrics, pool = Clock(), Metrics(), ShardPool()
    b = Backlogs(clock, metrics, lambda url: pool, SETTINGS, REDIS_TIMEOUT, keys=KEYS)
    b.configure({"shard-0": "redis://shard"})
    return b, pool, clock, metrics


def test_a_deleted_channels_queued_lines_are_dropped_and_counted_not_written_later():
    b, pool, clock, metrics = backlogs()
    b.append("gone", [b"1", b"2"])
    b.append("kept", [b"x"])
    d = b.delete("gone")
    assert d.called and pool.log == [("DEL", backlog_key("gone"))]
    clock.advance(0.05)
    assert pool.executed == [[("LPUSH", backlog_key("kept"), b"x"), ("LTRIM", backlog_key("kept"), 0, 99),
                              ("EXPIRE", backlog_key("kept"), 3600)]]
    assert metrics.get("logplex_backlog_forgotten_total") == 2


def test_a_backlog_is_deleted_after_a_write_in_flight_with_its_lines_has_landed():
    b, pool, clock, metrics = backlogs()
    b.append("gone", [b"1"])
    clock.advance(0.05)  # in flight
    b.append("gone", [b"2"])
    d = b.delete("gone")
    assert not d.called and pool.log == ["flush"]
    pool.replies[0].callback([])
    assert d.called and pool.log == ["flush", ("DEL", backlog_key("gone"))]
    assert b.writers["shard-0"].unwritten("gone") == []


def test_lines_of_a_failed_write_put_back_in_the_queue_are_dropped_before_the_delete():
    b, pool, clock, metrics = backlogs()
    b.append("gone", [b"1"])
    clock.advance(0.05)
    d = b.delete("gone")
    pool.replies[0].errback(ConnectionError("shard down"))
    assert d.called and pool.log == ["flush", ("DEL", backlog_key("gone"))]
    clock.advance(5)
    assert len(pool.executed) == 1  # nothing of it is written again
    assert metrics.get("logplex_backlog_forgotten_total") == 1


def test_past_half_its_bound_with_redis_answering_the_writer_holds_senders_and_drops_nothing():
    w, redis, clock, metrics = writer(max_pending=10)
    w.append("a", [b"1", b"2", b"3", b"4"])
    clock.advance(0.05)  # a flush in flight, Redis slow to answer
    assert not w.congested()
    w.append("a", [b"5", b"6", b"7", b"8", b"9", b"10"])
    assert w.congested()
    held = w.wait()
    redis.replies[0].callback(1)
    assert not held.called  # the queue is still past a quarter of its bound
    clock.advance(0.05)  # the next flush takes the queue
    assert held.called
    assert redis.executed[1][0] == ("LPUSH", backlog_key("a"), *[b"%d" % n for n in range(5, 11)])
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 0
    assert metrics.get("logplex_backlog_pushback_total", shard="") == 1


def test_while_redis_fails_nobody_is_held_and_past_the_bound_the_oldest_lines_are_shed():
    w, redis, clock, metrics = writer(max_pending=10)
    w.append("a", [b"1"])
    clock.advance(0.05)
    w.append("a", [b"%d" % n for n in range(2, 9)])
    held = w.wait()
    redis.replies[0].errback(ConnectionError("shard down"))
    assert held.called and not w.congested()  # senders go on: tails and drains still work
    w.append("a", [b"%d" % n for n in range(9, 14)])
    assert metrics.get("logplex_backlog_dropped_total", shard="") == 3
    assert w.unwritten("a") == [b"%d" % n for n in range(4, 14)]


def test_a_large_flush_is_cut_by_channel_into_calls_of_bounded_size():
    from logplex.backlog.writer import write_calls

    batch = {f"c{n}": [b"x" * 100] * 3 for n in range(10)}
    calls = write_calls(b"p:", batch, (b"1499", b"60"), {"c1"}, max_bytes=700)
    assert [ids for ids, _, _ in calls] == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6", "c7", "c8"], ["c9"]]
    ids, names, args = calls[0]
    assert names == [b"p:c0", b"p:c1", b"p:c2"]
    # The head, then per key its count (negative: expiry refreshed lately) and its lines.
    assert args == [b"1499", b"60", b"3", *batch["c0"], b"-3", *batch["c1"], b"3", *batch["c2"]]
    assert write_calls(b"p:", {"big": [b"x" * 1000]}, (b"0", b"1"), (), max_bytes=10) == [
        (["big"], [b"p:big"], [b"0", b"1", b"1", b"x" * 1000])]


def test_the_writer_holds_only_senders_of_channels_on_a_congested_shard():
    from logplex.backlog.writer import Backlogs

    clock, metrics, pools = Clock(), Metrics(), {}
    b = Backlogs(clock, metrics, lambda url: pools.setdefault(url, FakeRedis()), SETTINGS, REDIS_TIMEOUT,
                 keys=KEYS, max_pending=4)
    b.configure({"shard-0": "redis://zero", "shard-1": "redis://one"})
    on_zero = next(c for c in (f"ch{n}" for n in range(100)) if b.shard_of(c) == "shard-0")
    on_one = next(c for c in (f"ch{n}" for n in range(100)) if b.shard_of(c) == "shard-1")
    b.append(on_zero, [b"1", b"2", b"3"])
    assert b.hold([on_one]) is None
    held = b.hold([on_zero, on_one])
    assert held is not None and not held.called
    assert dict((labels["shard"], v) for labels, v in b.queued()[0]) == {"shard-0": 3, "shard-1": 0}
    clock.advance(0.05)
    assert held.called


def test_a_backlogs_expiry_is_refreshed_once_per_hundredth_of_the_expiry_not_at_every_flush():
    w, redis, clock, metrics = writer()  # expiry 3600 s: refreshed every 36 s
    w.append("a", [b"1"])
    clock.advance(0.05)
    redis.replies[-1].callback(1)
    w.append("a", [b"2"])
    clock.advance(0.05)
    redis.replies[-1].callback(1)
    clock.advance(36)
    w.append("a", [b"3"])
    clock.advance(0.05)
    assert [flush[2][0] for flush in redis.executed] == ["EXPIRE", "EXPIRE?", "EXPIRE"]


def test_a_failed_write_leaves_the_expiry_to_be_refreshed():
    w, redis, clock, metrics = writer()
    w.append("a", [b"1"])
    clock.advance(0.05)
    redis.replies[-1].errback(ConnectionError("shard down"))
    clock.advance(1.0)
    assert [flush[2][0] for flush in redis.executed] == ["EXPIRE", "EXPIRE"]


def test_a_sparse_flush_over_thousands_of_channels_waits_for_more_lines_up_to_the_linger():
    # 2,000 channels with a line each: the flush would be one LPUSH per line.
    w, redis, clock, metrics = writer()
    w.extend({f"c{n}": [b"first"] for n in range(2000)})
    clock.advance(0.05)
    assert redis.executed == []  # waiting: more lines per channel make each LPUSH carry more
    for _ in range(8):
        clock.advance(0.05)
        w.extend({f"c{n}": [b"more"] for n in range(0, 2000, 4)})
    assert redis.executed == []
    assert clock.seconds() < SETTINGS.flush_linger
    clock.advance(0.1)  # the first tick after the first line has waited the linger: it goes
    assert len(redis.executed) == 1
    assert sum(1 for c in redis.executed[0] if c[0] == "LPUSH") == 2000
    assert w.unwritten("c0") == [b"first"] + [b"more"] * 8


def test_a_dense_or_small_flush_does_not_wait():
    w, redis, clock, metrics = writer()
    w.extend({f"c{n}": [b"x"] * 8 for n in range(2000)})  # 8 lines per channel: dense enough
    clock.advance(0.05)
    assert len(redis.executed) == 1
    redis.replies[0].callback(2000)
    w.extend({f"c{n}": [b"x"] for n in range(1000)})  # a line per channel, but only 1,000 channels
    clock.advance(0.05)
    assert len(redis.executed) == 2


def test_a_queue_that_fills_to_a_quarter_of_its_bound_during_a_flush_goes_right_after_it():
    w, redis, clock, metrics = writer(max_pending=40_000)
    w.extend({"a": [b"x"]})
    clock.advance(0.05)
    assert len(redis.executed) == 1
    w.extend({f"c{n}": [b"y"] for n in range(10_000)})  # sparse, but a quarter of the bound
    redis.replies[0].callback(1)
    clock.advance(0)
    assert len(redis.executed) == 2
