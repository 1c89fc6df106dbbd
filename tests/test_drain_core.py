"""Drain batches, formats, backoff and loss accounting, without I/O."""

import email.utils

from hypothesis import given, strategies as st

from logplex.drains.core import (
    Backoff, BatchSize, DrainQueue, decode_chunk, encode_chunk, http_body, parse_retry_after, syslog_frames,
)
from logplex.framing import decode_logplex1

COOKED = b"<13>1 2026-11-24T10:00:00+00:00 myhost app web.1 - [x@1 a=\"b\"] hello"


def test_http_body_is_logplex_output_format():
    body, count = http_body([COOKED, COOKED.replace(b"hello", b"again")])
    assert count == 2
    assert decode_logplex1(body) == [
        b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - hello",
        b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - again",
    ]
    first = b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - hello\n"
    assert body.startswith(b"%d %s" % (len(first), first))


def test_syslog_frames_carry_the_drain_token_as_hostname():
    line = b"<13>1 2026-11-24T10:00:00+00:00 d.abc app web.1 - - hello\n"
    assert syslog_frames([COOKED], b"d.abc") == b"%d %s" % (len(line), line)


def test_backoff_grows_with_jitter_to_its_cap_and_honours_retry_after():
    b = Backoff(initial=1.0, cap=30.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    low = Backoff(initial=1.0, cap=30.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1, 2]
    assert b.next_delay(retry_after=7) == 7
    b.reset()
    assert b.next_delay() == 1


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after(b"12", 0) == 12
    date = email.utils.formatdate(1000.0 + 30, usegmt=True).encode()
    assert parse_retry_after(date, 1000.0) == 30
    assert parse_retry_after(b"soon", 0) is None and parse_retry_after(None, 0) is None


def test_queue_moves_what_memory_cannot_hold_to_overflow_in_order():
    q = DrainQueue(capacity=3, clock=lambda: 5.0)
    q.push([b"1", b"2"])
    q.push([b"3", b"4", b"5"])
    assert list(q.memory) == [b"3", b"4", b"5"] and q.overflow == [b"1", b"2"]
    assert q.take(3) == [b"1", b"2", b"3"]  # overflow (older) first, then memory, by size
    assert q.take(2) == [b"4", b"5"]
    assert q.pending == 0 and q.pending_bytes == 0


def test_overflow_that_cannot_be_spooled_is_bounded_and_counted_for_l10():
    now = [100.0]
    q = DrainQueue(capacity=2, clock=lambda: now[0], overflow_limit=2)
    q.degraded = True
    q.return_overflow([b"a", b"b", b"c"])
    assert q.overflow == [b"b", b"c"] and q.lost == 1
    now[0] = 160.0
    from logplex.drains.core import l10_message
    n, since = q.take_loss()
    l10 = l10_message(n, since, now[0])
    assert l10 == (
        b"<172>1 1970-01-01T00:02:40.000000+00:00 host heroku logplex - - Error L10 "
        b"(output buffer overflow): 1 messages dropped since 1970-01-01T00:01:40.000000+00:00.")
    assert q.take_loss() == (0, None) and q.lost_total == 1


@given(st.lists(st.binary(max_size=300), max_size=50), st.text(alphabet="0123456789abcdef", min_size=1, max_size=32))
def test_spool_chunks_round_trip(messages, frame_id):
    messages = [m for m in messages if m and not m.endswith((b"\n", b"\r", b"\0"))]
    assert decode_chunk(encode_chunk(messages, frame_id, 12.5)) == (frame_id, messages, 12.5)


MESSAGES = [
    COOKED,
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - - plain",
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - -",
    b"<13>1 2026-11-24T10:00:00+00:00 h app web.1 - - \xef\xbb\xbfwith a BOM",
    b"<013>1 2026-11-24T10:00:00+00:00 h app web.1 - - zero-padded PRI",
    b'<13>1 2026-11-24T10:00:00+00:00 h app web.1 ID [a@1 x="y z"] with SD',
]


def test_the_fast_output_path_gives_exactly_what_the_full_parser_gives():
    from logplex import syslog

    expected = []
    for m in MESSAGES:
        f = syslog.parse(m)
        line = syslog.output_message(f)
        expected.append(b"%d %s\n" % (len(line) + 1, line))
    assert http_body(MESSAGES) == (b"".join(expected), len(MESSAGES))
    for m in MESSAGES:
        f = syslog.parse(m)
        line = b"<%d>1 %s d.t %s %s - - %s\n" % (f.pri, f.timestamp, f.appname, f.procid, f.msg)
        assert syslog_frames([m], b"d.t") == b"%d %s" % (len(line), line)


def test_memory_is_bounded_in_bytes_as_well_as_messages():
    q = DrainQueue(capacity=1024, clock=lambda: 5.0, capacity_bytes=100_000)
    big = [b"x" * 30_000 for _ in range(10)]
    q.push(big)
    # 3 of 30 KB fit in 100 KB; the rest went on, in order, towards the spool.
    assert list(q.memory) == big[-3:] and q.memory_bytes == 90_000
    assert q.overflow == big[:-3] and q.overflow_bytes == 210_000
    q2 = DrainQueue(capacity=1024, clock=lambda: 5.0, capacity_bytes=100)
    q2.push([b"y" * 500])
    assert list(q2.memory) == [b"y" * 500]  # the newest message always stays


def test_pace_keeps_the_drains_own_linger_while_they_post_within_the_budget():
    from twisted.internet.task import Clock

    from logplex.drains.core import Pace

    clock = Clock()
    pace = Pace(0.25, budget=100, clock=clock.seconds)
    for _ in range(10):
        for _ in range(50):  # 50 POSTs a second, half the budget
            pace.posted()
        clock.advance(1.0)
    assert pace.linger == 0.25


def test_pace_lengthens_the_linger_while_the_drains_post_too_often_and_settles_near_the_budget():
    from twisted.internet.task import Clock

    from logplex.drains.core import Pace

    # 2,000 drains, each with a line every 0.1 s: each POSTs once per linger.
    clock, drains, budget = Clock(), 2000, 1000
    pace = Pace(0.25, budget=budget, clock=clock.seconds)
    rates = []
    for _ in range(30):
        posts = int(drains * 1.0 / pace.linger)  # each drain POSTs once per linger over the second
        for _ in range(posts):
            pace.posted()
        rates.append(posts)
        clock.advance(1.0)
    assert rates[0] == 8000
    assert all(budget * 0.8 <= r <= budget * 1.25 for r in rates[-10:]), rates
    assert 1.6 <= pace.linger <= 2.5  # 2,000 drains / 1,000 POSTs a second
    # The load goes away: back to the drains' own linger.
    clock.advance(1.0)
    assert pace.linger == 0.25


def test_pace_never_lingers_longer_than_its_cap():
    from twisted.internet.task import Clock

    from logplex.drains.core import Pace

    clock = Clock()
    pace = Pace(0.25, budget=10, clock=clock.seconds, cap=5.0)
    for _ in range(20):
        for _ in range(100_000):
            pace.posted()
        clock.advance(1.0)
    assert pace.linger == 5.0


class ReferenceQueue:
    """DrainQueue's memory and overflow as they were, one message at a time: what its slices must equal."""

    def __init__(self, capacity, capacity_bytes):
        self.capacity, self.capacity_bytes = capacity, capacity_bytes
        self.memory, self.overflow = [], []

    def push(self, messages):
        self.memory += messages
        while len(self.memory) > self.capacity or (
                sum(map(len, self.memory)) > self.capacity_bytes and len(self.memory) > 1):
            self.overflow.append(self.memory.pop(0))

    def take(self, max_bytes):
        out, size = [], 0
        for part in (self.overflow, self.memory):
            while part and (not out or size + len(part[0]) <= max_bytes):
                size += len(part[0])
                out.append(part.pop(0))
            if part:
                break  # the next oldest does not fit
        return out


@given(st.lists(st.one_of(
    st.tuples(st.just("push"), st.lists(st.binary(min_size=0, max_size=40), max_size=12)),
    st.tuples(st.just("take"), st.integers(min_value=0, max_value=200)),
), max_size=40), st.integers(1, 8), st.integers(1, 150))
def test_the_queue_takes_by_slices_exactly_what_one_message_at_a_time_would(steps, capacity, capacity_bytes):
    queue = DrainQueue(capacity, clock=lambda: 0.0, capacity_bytes=capacity_bytes,
                       overflow_bytes=10**9)
    reference = ReferenceQueue(capacity, capacity_bytes)
    for op, arg in steps:
        if op == "push":
            queue.push(list(arg))
            reference.push(list(arg))
        else:
            assert queue.take(arg) == reference.take(arg)
        assert list(queue.memory) == reference.memory and queue.overflow == reference.overflow
        assert queue.memory_bytes == sum(map(len, reference.memory))
        assert queue.overflow_bytes == sum(map(len, reference.overflow))
    assert queue.drain_all() == reference.overflow + reference.memory


def test_batch_size_doubles_while_backed_up_up_to_max_and_halves_back_to_target():
    size = BatchSize(100, 1000)
    seen = []
    for _ in range(6):
        seen.append(size.current)
        size.taken(left=500)
    assert seen == [100, 200, 400, 800, 1000, 1000]
    for expected in (500, 250, 125, 100, 100):
        size.taken(left=99)
        assert size.current == expected
