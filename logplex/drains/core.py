"""The sans-IO heart of a drain: batches, their wire formats, backoff, and loss accounting (L10)."""

from __future__ import annotations

import email.utils
import os
import random
from bisect import bisect_left, bisect_right
from itertools import accumulate
from typing import Callable, Iterable

import attrs

from logplex import hotpath, syslog
from logplex.framing import decode_logplex1, encode_logplex1, octet_frame

# Spool chunks hold whole batches; they never meet the syslog frame limit.
_CHUNK_MAX_FRAME = 1 << 30


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


@attrs.frozen
class Outcome:
    """What an endpoint made of a batch."""

    delivered: bool
    retry: bool = False
    retry_after: float | None = None
    error: str | None = None
    certificate_error: bool = False

    @classmethod
    def ok(cls) -> Outcome:
        return cls(True)

    @classmethod
    def retry_later(cls, error: str, retry_after: float | None = None, certificate_error=False) -> Outcome:
        return cls(False, True, retry_after, error, certificate_error)

    @classmethod
    def rejected(cls, error: str) -> Outcome:
        return cls(False, False, None, error)


class Backoff:
    """Exponential backoff with jitter, capped; a Retry-After from the endpoint wins."""

    def __init__(self, initial: float = 1.0, cap: float = 30.0, factor: float = 2.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.rand = rand
        self.failures = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        self.failures += 1
        if retry_after is not None:
            # Honoured, within reason: a receiver asking for an hour would
            # just fill the spool.
            return min(max(retry_after, 0.0), max(self.cap, 300.0))
        ceiling = min(self.cap, self.initial * self.factor ** min(self.failures - 1, 32))
        # "Equal jitter": at least half the step, so retries still back off,
        # and spread so that many drains do not retry in lockstep.
        return ceiling / 2 + self.rand() * ceiling / 2

    def reset(self) -> None:
        self.failures = 0


def parse_retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


# What one drain keeps in memory at most, in bytes, besides its --drain-buffer messages.
MEMORY_BYTES = 4 * 1024 * 1024


class Pace:
    """The linger of a node's HTTP drains together: their own (base) while they send
    fewer than `budget` POSTs a second between them, longer (up to cap) while they
    send more. A POST costs the node about 250 us whatever its size, so 1,000 drains
    of a few lines a second each would otherwise cost a core in POSTs alone; with a
    longer linger the same lines go in fewer, larger POSTs.

    Measured over windows of `window` seconds, with no timer of its own: the rate is
    looked at when a drain asks for the linger or sends. The linger moves by the square
    root of (rate / budget) per window, so it settles instead of swinging.
    """

    def __init__(self, base: float, budget: int, clock: Callable[[], float], cap: float = 5.0,
                 window: float = 1.0) -> None:
        self.base = base
        self.budget = budget
        self.clock = clock
        self.cap = max(cap, base)
        self.window = window
        self._linger = base
        self._count = 0
        self._since = clock()

    @property
    def linger(self) -> float:
        self._update()
        return self._linger

    def posted(self) -> None:
        self._count += 1
        self._update()

    def _update(self) -> None:
        now = self.clock()
        elapsed = now - self._since
        if elapsed < self.window:
            return
        rate = self._count / elapsed
        if rate <= 0:
            self._linger = self.base
        else:
            self._linger = min(self.cap, max(self.base, self._linger * (rate / self.budget) ** 0.5))
        self._count, self._since = 0, now


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


def l10_message(lost: int, since: float, now: float) -> bytes:
    """logplex's notice of messages a drain lost, from heroku/logplex, local5.warning."""
    text = b"Error L10 (output buffer overflow): %d messages dropped since %s." % (
        lost, syslog.utc_timestamp(since))
    return syslog.make_message(
        syslog.FACILITY_LOCAL5, syslog.SEVERITY_WARNING, syslog.utc_timestamp(now),
        b"heroku", b"logplex", text,
    )


# -- wire formats -----------------------------------------------------------------------
# Cooked messages passed split_header at ingest, so the common case (no
# STRUCTURED-DATA) needs one split and one format per message; anything else
# goes through the full parser.

_BOM = b"\xef\xbb\xbf"


def _plain(message: bytes) -> tuple[list[bytes], bytes] | None:
    """(header parts, MSG) when the message has no structured data, else None."""
    parts = message.split(b" ", 6)
    if len(parts) != 7 or parts[0][1:2] == b"0" and parts[0] != b"<0>1":
        return None  # a zero-padded PRI is normalised by the full parser
    rest = parts[6]
    if rest[:2] == b"- ":
        msg = rest[2:]
    elif rest == b"-":
        msg = b""
    else:
        return None
    if msg[:3] == _BOM:
        msg = msg[3:]
    return parts, msg


def output_line(message: bytes) -> bytes | None:
    """logplex's output format: `<PRI>1 TS host APPNAME PROCID - MSG`."""
    plain = _plain(message)
    if plain is not None:
        parts, msg = plain
        return b"%s %s host %s %s - %s" % (parts[0], parts[1], parts[3], parts[4], msg)
    fields = syslog.parse(message)
    return syslog.output_message(fields) if fields is not None else None


def http_body(messages: Iterable[bytes]) -> tuple[bytes, int]:
    """An application/logplex-1 body in logplex's output format, and its message count."""
    out = []
    append = out.append
    for message in messages:
        line = output_line(message)
        if line is not None:
            append(b"%d %s\n" % (len(line) + 1, line))
    return b"".join(out), len(out)


def syslog_frames(messages: Iterable[bytes], drain_token: bytes) -> bytes:
    """Octet-counted frames as logplex's syslog drains send them: the drain token as HOSTNAME."""
    out = []
    append = out.append
    for message in messages:
        plain = _plain(message)
        if plain is not None:
            parts, msg = plain
            pri, ts, app, procid = parts[0], parts[1], parts[3], parts[4]
        else:
            fields = syslog.parse(message)
            if fields is None:
                continue
            pri, ts, app, procid, msg = (b"<%d>1" % fields.pri, fields.timestamp, fields.appname,
                                         fields.procid, fields.msg)
        line = b"%s %s %s %s %s - - %s\n" % (pri, ts, drain_token, app, procid, msg)
        append(b"%d %s" % (len(line), line))
    return b"".join(out)


# The pure functions keep their names with pure_ (the differential test and
# LOGPLEX_PURE_PYTHON use them); the compiled twins take the plain names.
# They hand anything unusual (structured data, RFC 3164) back to syslog.parse.
pure_output_line, pure_http_body, pure_syslog_frames = output_line, http_body, syslog_frames
if (_hot := hotpath.compiled()) is not None:
    output_line, http_body, syslog_frames = _hot.output_line, _hot.http_body, _hot.syslog_frames


# -- spool chunks -------------------------------------------------------------------------

def encode_chunk(batch_messages: list[bytes], frame_id: str, created: float) -> bytes:
    """A spool entry: b"1 <frame id> <count> <created>\\n" then the messages, octet-counted."""
    head = b"1 %s %d %.3f\n" % (frame_id.encode(), len(batch_messages), created)
    return head + encode_logplex1(batch_messages)


def decode_chunk(chunk: bytes) -> tuple[str, list[bytes], float]:
    head, _, body = chunk.partition(b"\n")
    _, frame_id, _count, created = head.split(b" ")
    return frame_id.decode(), decode_logplex1(body, _CHUNK_MAX_FRAME), float(created)
