"""logplex.drains.queue: a drain's memory, overflow and batches, and the loss it counts for L10, without I/O."""

from hypothesis import given, strategies as st

from logplex.drains.formats import l10_message
from logplex.drains.queue import BatchSize, DrainQueue


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
    n, since = q.take_loss()
    l10 = l10_message(n, since, now[0])
    assert l10 == (
        b"<172>1 1970-01-01T00:02:40.000000+00:00 host heroku logplex - - Error L10 "
        b"(output buffer overflow): 1 messages dropped since 1970-01-01T00:01:40.000000+00:00.")
    assert q.take_loss() == (0, None) and q.lost_total == 1


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
