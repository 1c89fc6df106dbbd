"""Live tails: which sessions watch which channel, their filters, and bounded buffers (L11)."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from logplex import hotpath, syslog
from logplex.model import Channel, SessionSpec
from logplex.settings import TailSettings

# The most a tail hands its response in one write. Twisted's transports pause
# their producer once more than 64 KiB wait in them, so a reader that does not
# read makes the transport hold at most about this much plus its own 64 KiB;
# the rest waits in the tail's own bounded buffer.
WRITE_BYTES = 64 * 1024


def l11_line(dropped: int, since: float, now: float) -> bytes:
    """The line a tail gets in place of the lines it was too slow to take."""
    return b"%s logplex[1]: Error L11 (Tail buffer overflow) -> This tail session dropped %d messages since %s.\n" % (
        syslog.utc_timestamp(now), dropped, syslog.utc_timestamp(since),
    )


class TailFilter:
    """The ps and source filters of a session, applied to cooked messages;
    render makes what the reader gets of each (a text line by default)."""

    def __init__(self, ps: str | None, source: str | None,
                 render: Callable[[syslog.Fields], bytes] = syslog.tail_line) -> None:
        self.ps = ps.encode() if ps else None
        self.source = source.encode() if source else None
        self.render = render
        # logplex._hot.tail_lines does the text render of plain messages itself and hands
        # it one() for every other; another render goes message by message through one().
        self._compiled = _hot is not None and render is syslog.tail_line

    def one(self, message: bytes) -> bytes | None:
        """What the reader gets of one message: None when it is malformed or filtered out."""
        fields = syslog.parse(message)
        if fields is None:
            return None
        if self.source is not None and fields.appname != self.source:
            return None
        if self.ps is not None and not syslog.matches_ps(fields.procid, self.ps):
            return None
        return self.render(fields)

    def lines(self, messages: list[bytes]) -> list[bytes]:
        if self._compiled:
            return _hot.tail_lines(messages, self.ps, self.source, self.one)
        return pure_tail_lines(messages, self.one)


def pure_tail_lines(messages: list[bytes], one: Callable[[bytes], bytes | None]) -> list[bytes]:
    """The lines of messages, one(message) each, Nones left out; logplex._hot.tail_lines is its
    compiled twin (for the text render)."""
    out = []
    for message in messages:
        line = one(message)
        if line is not None:
            out.append(line)
    return out


_hot = hotpath.compiled()


class TailBuffer:
    """Lines waiting for a slow reader, at most `size` lines and `max_bytes` bytes;
    the oldest past either bound dropped and counted.

    When the reader catches up it first gets one L11 line saying how many
    lines it missed and since when, then the newest lines kept.
    """

    def __init__(self, size: int, max_bytes: int, clock: Callable[[], float] = time.time,
                 notice: Callable[[int, float, float], bytes] = l11_line) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.clock = clock
        # How the loss is told: (dropped, since, now) -> bytes; the L11 line by default.
        self.notice = notice
        self.lines: deque[bytes] = deque()
        self.bytes = 0
        self.dropped = 0
        self.dropped_since: float | None = None
        self.dropped_total = 0

    def put(self, lines: list[bytes]) -> int:
        """Queue lines; returns how many lines this pushed out (older ones, or a line
        larger than max_bytes itself)."""
        queue = self.lines
        queue.extend(lines)
        self.bytes += sum(map(len, lines))
        if len(queue) <= self.size and self.bytes <= self.max_bytes:
            return 0
        excess = 0
        while len(queue) > self.size or self.bytes > self.max_bytes:
            self.bytes -= len(queue.popleft())
            excess += 1
        self.count_dropped(excess)
        return excess

    def count_dropped(self, n: int) -> None:
        if not self.dropped:
            self.dropped_since = self.clock()
        self.dropped += n
        self.dropped_total += n

    def take(self, limit: int | None = None) -> bytes:
        """What is waiting, as one write, with the L11 line first if lines were lost.

        With ``limit``, only the oldest lines up to about that many bytes (at
        least one line); the rest stays for the next take.
        """
        chunks = []
        if self.dropped:
            chunks.append(self.notice(self.dropped, self.dropped_since, self.clock()))
            self.dropped = 0
            self.dropped_since = None
        queue = self.lines
        if limit is None or self.bytes <= limit:
            chunks.extend(queue)
            queue.clear()
            self.bytes = 0
        else:
            size = 0
            while queue and size < limit:
                line = queue.popleft()
                chunks.append(line)
                size += len(line)
            self.bytes -= size
        return b"".join(chunks)


class TailSession:
    """One live reader of a channel; write is how its bytes leave (an HTTP response)."""

    def __init__(
        self,
        spec: SessionSpec,
        write: Callable[[bytes], None],
        metrics,
        settings: TailSettings,
        clock: Callable[[], float] = time.time,
        render: Callable[[syslog.Fields], bytes] = syslog.tail_line,
        notice: Callable[[int, float, float], bytes] = l11_line,
    ) -> None:
        self.spec = spec
        self.channel_id = spec.channel_id
        self.filter = TailFilter(spec.ps, spec.source, render)
        self.write = write
        self.metrics = metrics
        self.buffer = TailBuffer(settings.buffer, settings.buffer_bytes, clock, notice)
        self.paused = False
        # While the backlog is read, live messages are held here (bounded
        # like the buffer, in lines and bytes) so that none falls between
        # backlog and tail.
        self.held: deque[bytes] | None = deque()
        self.held_bytes = 0

    def deliver(self, messages: list[bytes]) -> None:
        held = self.held
        if held is not None:
            held.extend(messages)
            self.held_bytes += sum(map(len, messages))
            dropped = 0
            while len(held) > self.buffer.size or self.held_bytes > self.buffer.max_bytes:
                self.held_bytes -= len(held.popleft())
                dropped += 1
            if dropped:
                self.buffer.count_dropped(dropped)
                self.metrics.inc("logplex_tail_dropped_total", dropped)
            return
        lines = self.filter.lines(messages)
        if not lines:
            return
        if not (self.paused or self.buffer.lines or self.buffer.dropped):
            sent = self._send(lines)
            if sent == len(lines):
                return
            # The transport asked us to wait: the rest waits in the buffer.
            lines = lines[sent:]
        dropped = self.buffer.put(lines)
        if dropped:
            self.metrics.inc("logplex_tail_dropped_total", dropped)
        if not self.paused:
            # A loss while the backlog was read is told (L11) before these lines.
            self._flush()

    def _send(self, lines: list[bytes]) -> int:
        """Write lines, WRITE_BYTES at a time, until the transport pauses us; how many went."""
        if sum(map(len, lines)) <= WRITE_BYTES:
            self.metrics.inc("logplex_tail_lines_total", len(lines))
            self.write(b"".join(lines))
            return len(lines)
        sent, n = 0, len(lines)
        while sent < n and not self.paused:
            start, size = sent, 0
            while sent < n and size < WRITE_BYTES:
                size += len(lines[sent])
                sent += 1
            self.metrics.inc("logplex_tail_lines_total", sent - start)
            self.write(b"".join(lines[start:sent]))
        return sent

    def go_live(self, backlog: list[bytes]) -> None:
        """The backlog has been written: deliver what was held, minus what the backlog had."""
        held, self.held = self.held or (), None
        self.held_bytes = 0
        seen = set(backlog[-len(held):]) if held and backlog else set()
        fresh = [m for m in held if m not in seen]
        if fresh:
            self.deliver(fresh)
        elif self.buffer.dropped and not self.paused:
            self._flush()

    # IPushProducer, for the transport of the response
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()

    def _flush(self) -> None:
        """Write what the buffer holds until it is empty or the transport pauses us."""
        # WRITE_BYTES at a time, so that a transport that fills up again pauses
        # us with the rest still in the buffer, not in the transport.
        buffer = self.buffer
        while not self.paused and (buffer.lines or buffer.dropped):
            if buffer.dropped:
                self.metrics.inc("logplex_tail_l11_total")
            waiting = len(buffer.lines)
            data = buffer.take(WRITE_BYTES)
            if waiting > len(buffer.lines):
                self.metrics.inc("logplex_tail_lines_total", waiting - len(buffer.lines))
            self.write(data)

    def stopProducing(self) -> None:
        self.paused = True


class TailRegistry:
    """The live tails of this node by channel."""

    def __init__(self, metrics, on_first_tail: Callable[[str], None] = lambda channel_id: None,
                 on_last_tail: Callable[[str], None] = lambda channel_id: None) -> None:
        self.metrics = metrics
        self.by_channel: dict[str, set[TailSession]] = {}
        # How each tail is ended when its channel is (see end_channel).
        self._enders: dict[TailSession, Callable[[], None]] = {}
        # Told a channel's first tail here and its last (the cluster bus starts and stops hearing it).
        self.on_first_tail = on_first_tail
        self.on_last_tail = on_last_tail
        metrics.gauge_callback("logplex_active_tails", lambda: [({}, self.count())])

    def count(self) -> int:
        return sum(len(s) for s in self.by_channel.values())

    def add(self, tail: TailSession, end: Callable[[], None] | None = None) -> None:
        """Register a tail; `end` tells its reader the channel is gone and closes its response."""
        if end is not None:
            self._enders[tail] = end
        tails = self.by_channel.get(tail.channel_id)
        if tails is None:
            tails = self.by_channel[tail.channel_id] = set()
            self.on_first_tail(tail.channel_id)
        tails.add(tail)

    def remove(self, tail: TailSession) -> None:
        self._enders.pop(tail, None)
        tails = self.by_channel.get(tail.channel_id)
        if tails is not None and tail in tails:
            tails.discard(tail)
            if not tails:
                del self.by_channel[tail.channel_id]
                self.on_last_tail(tail.channel_id)

    def has_tails(self, channel_id: str) -> bool:
        return channel_id in self.by_channel

    def tailed(self, channel_ids) -> set[str]:
        """Those of these channels (a set or keys view) that have a tail on this node."""
        return channel_ids & self.by_channel.keys()

    def publish(self, channel_id: str, messages: list[bytes], incarnation: str | None = None) -> None:
        """Deliver to the channel's tails; with an incarnation, only to tails of that channel
        (lines from another node name the channel they were routed to)."""
        for tail in list(self.by_channel.get(channel_id, ())):
            if incarnation is None or tail.spec.incarnation == incarnation:
                tail.deliver(messages)

    def end_channel(self, channel_id: str, now: Channel | None) -> int:
        """The channel was deleted (now is None) or replaced by `now`, a new one of its name:
        end every tail made for the old one. Returns how many were ended."""
        stale = [t for t in self.by_channel.get(channel_id, ()) if now is None or not t.spec.reads(now)]
        for tail in stale:
            end = self._enders.get(tail)
            self.remove(tail)
            if end is not None:
                end()
        if stale:
            self.metrics.inc("logplex_tails_ended_total", len(stale))
        return len(stale)
