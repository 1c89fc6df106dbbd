"""The messages of one drain on their way out: its queue (memory, overflow, spool), its batches and their size.

Sans-IO: the queue counts every loss it makes (what the next delivery tells
in an L10) and hands batches out oldest first; the worker does the I/O.
"""

from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from itertools import accumulate
from typing import Callable

import attrs

from logplex import hotpath
from logplex.drains.formats import l10_message


@attrs.define
class Batch:
    """Messages sent together; a retry resends the same batch under the same frame id."""

    messages: list[bytes]
    # 128 random bits in hex, as uuid4().hex was, without building a UUID per batch.
    frame_id: str = attrs.field(factory=lambda: os.urandom(16).hex())
    from_spool: bool = False
    attempts: int = 0
    # Loss this batch reports with its L10 (grows while the batch is retried,
    # so the endpoint hears of it once, with the exact total).
    lost: int = 0
    lost_since: float | None = None

    @property
    def size(self) -> int:
        return sum(map(len, self.messages))

    def take_loss(self, queue: DrainQueue) -> None:
        n, since = queue.take_loss()
        if n:
            self.lost += n
            self.lost_since = since if self.lost_since is None else min(self.lost_since, since)

    def wire(self, now: float) -> list[bytes]:
        """What is sent: the L10, if any loss is owed, then the messages."""
        if not self.lost:
            return self.messages
        return [l10_message(self.lost, self.lost_since, now), *self.messages]


# What one drain keeps in memory at most, in bytes, besides its --drain-buffer messages.
MEMORY_BYTES = 4 * 1024 * 1024


class BatchSize:
    """How many bytes a drain's next batch may take: `target` while it keeps up, up to `maximum` while it is backed up.

    Each batch that leaves at least `target` bytes queued behind it doubles the
    size (up to maximum), so a backed-up drain soon sends few large requests
    and the cost per request vanishes; each batch that leaves less halves it
    (down to target), so a drain that caught up is back to small batches, and
    its latency, within a few.
    """

    def __init__(self, target: int, maximum: int) -> None:
        self.target = target
        self.maximum = max(maximum, target)
        self.current = target

    def taken(self, left: int) -> None:
        """A batch was taken; `left` bytes are still queued behind it."""
        if left >= self.target:
            self.current = min(self.maximum, self.current * 2)
        elif self.current > self.target:
            self.current = max(self.target, self.current // 2)


class DrainQueue:
    """The messages of one drain not yet handed to the endpoint, in order.

    Three parts, oldest first: the spool (in Redis, counted here only by
    chunks), `overflow` (messages pushed out of memory, on their way to the
    spool) and `memory` (the newest, at most `capacity`). A batch is always
    taken from the oldest part that has anything.
    """

    def __init__(self, capacity: int, clock: Callable[[], float], overflow_limit: int | None = None,
                 overflow_bytes: int = 16 * 1024 * 1024, capacity_bytes: int = MEMORY_BYTES,
                 on_lost: Callable[[int, str], None] = lambda n, why: None) -> None:
        self.capacity = capacity
        # Memory holds at most `capacity` messages and `capacity_bytes` bytes:
        # a tenant's 64 KiB lines must not make 1,024 of them 64 MiB per drain.
        self.capacity_bytes = capacity_bytes
        # While the spool takes writes, overflow waits for them up to
        # overflow_bytes (a burst is not dropped just because one chunk is in
        # flight); when the spool cannot take them (`degraded`), past
        # overflow_limit messages the oldest are dropped and reported (L10).
        self.overflow_limit = overflow_limit if overflow_limit is not None else capacity * 10
        self.overflow_byte_limit = overflow_bytes
        self.degraded = False
        self.on_lost = on_lost
        self.clock = clock
        # Lists, not deques: a batch leaves from the front as one slice (memory
        # holds at most `capacity` messages, so the move of the rest is short).
        self.memory: list[bytes] = []
        self.memory_bytes = 0
        self.overflow: list[bytes] = []
        self.overflow_bytes = 0
        # Loss not yet reported to the endpoint, and since when.
        self.lost = 0
        self.lost_since: float | None = None
        self.lost_total = 0

    def push(self, messages: list[bytes]) -> None:
        memory = self.memory
        memory += messages
        self.memory_bytes += sum(map(len, messages))
        excess = len(memory) - self.capacity
        if excess > 0 or self.memory_bytes > self.capacity_bytes:
            # The oldest go to overflow: past `capacity` messages, then as many
            # more as bring memory within its bytes (the newest always stays).
            excess = max(0, excess)
            size = sum(map(len, memory[:excess]))
            over = self.memory_bytes - size - self.capacity_bytes
            if over > 0:
                ends = list(accumulate(map(len, memory[excess:-1])))
                more = min(bisect_left(ends, over) + 1, len(ends))
                if more:
                    size += ends[more - 1]
                    excess += more
            moved = memory[:excess]
            del memory[:excess]
            self.memory_bytes -= size
            self.overflow += moved
            self.overflow_bytes += size
            self._bound_overflow()

    @property
    def half_full(self) -> bool:
        """Memory past half its bound, in messages or bytes."""
        return len(self.memory) > self.capacity // 2 or self.memory_bytes > self.capacity_bytes // 2

    def _bound_overflow(self) -> None:
        if self.degraded:
            excess = len(self.overflow) - self.overflow_limit
        else:
            excess, size = 0, self.overflow_bytes
            while size > self.overflow_byte_limit and excess < len(self.overflow):
                size -= len(self.overflow[excess])
                excess += 1
        if excess > 0:
            self.overflow_bytes -= sum(map(len, self.overflow[:excess]))
            del self.overflow[:excess]
            self.count_lost(excess, "overflow while the spool was unavailable"
                            if self.degraded else "overflow beyond memory bound")

    def take_overflow(self, max_bytes: int) -> list[bytes]:
        """The oldest overflow, up to about max_bytes, to become one spool chunk."""
        n, size = fitting(self.overflow, max_bytes, self.overflow_bytes)
        out = self.overflow[:n]
        del self.overflow[:n]
        self.overflow_bytes -= size
        return out

    def return_overflow(self, messages: list[bytes]) -> None:
        """A spool write failed: its messages go back in front, within the overflow bound."""
        self.overflow[:0] = messages
        self.overflow_bytes += sum(map(len, messages))
        self._bound_overflow()

    def take(self, max_bytes: int) -> list[bytes]:
        """A batch of the oldest messages, up to max_bytes (at least one): overflow first, then memory."""
        out = None
        if self.overflow:
            out = self.take_overflow(max_bytes)
            if self.overflow:
                return out
            max_bytes -= sum(map(len, out))
            if max_bytes < 0:
                return out
        memory = self.memory
        if self.memory_bytes <= max_bytes:
            # Everything fits: the usual case when the endpoint keeps up.
            taken, self.memory = memory, []
            self.memory_bytes = 0
        else:
            n, size = fitting(memory, max_bytes, self.memory_bytes, at_least_one=out is None)
            taken = memory[:n]
            del memory[:n]
            self.memory_bytes -= size
        if out is None:
            return taken
        out += taken
        return out

    def drain_all(self) -> list[bytes]:
        """Everything held (for a graceful stop), oldest first."""
        everything = self.overflow + self.memory
        self.overflow, self.overflow_bytes = [], 0
        self.memory = []
        self.memory_bytes = 0
        return everything

    @property
    def pending_bytes(self) -> int:
        return self.memory_bytes + self.overflow_bytes

    @property
    def pending(self) -> int:
        return len(self.memory) + len(self.overflow)

    def count_lost(self, n: int, why: str) -> None:
        """Every loss of the drain comes through here: for L10, state and metrics."""
        if n <= 0:
            return
        if not self.lost:
            self.lost_since = self.clock()
        self.lost += n
        self.lost_total += n
        self.on_lost(n, why)

    def owe(self, n: int, since: float | None) -> None:
        """Loss already counted that must still be reported (its batch never got through)."""
        if n:
            self.lost_since = since if not self.lost else min(self.lost_since, since)
            self.lost += n

    def take_loss(self) -> tuple[int, float | None]:
        """The loss not yet reported to the endpoint, and since when; now owed by the caller."""
        owed = (self.lost, self.lost_since)
        self.lost, self.lost_since = 0, None
        return owed


def fitting(messages: list[bytes], max_bytes: int, total: int, at_least_one: bool = True) -> tuple[int, int]:
    """How many of the first messages fit in max_bytes (at least one, if at_least_one), and their bytes.

    The sizes are summed in C (accumulate) over a window about twice what the
    mean size says fits, widened in the rare case it all fits: no Python loop
    per message, and no sum over a long overflow for a short batch.
    """
    count = len(messages)
    if total <= max_bytes:
        return count, total
    window = min(count, 2 * max_bytes * count // max(total, 1) + 16)
    while True:
        ends = list(accumulate(map(len, messages[:window])))
        n = bisect_right(ends, max_bytes)
        if n < window or window == count:
            break
        window = min(count, window * 2)
    if n == 0:
        if not at_least_one:
            return 0, 0
        n = 1  # one message larger than a batch still goes, alone
    return n, ends[n - 1]


# The compiled twin, when built, in its place (the pure one stays for the
# differential test and LOGPLEX_PURE_PYTHON).
pure_fitting = fitting
if (_hot := hotpath.compiled()) is not None:
    fitting = _hot.fitting
