"""Live tails: which sessions watch which channel, their filters, and bounded buffers (L11)."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from logplex import syslog
from logplex.model import SessionSpec

DEFAULT_TAIL_BUFFER = 1024


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

    def lines(self, messages: list[bytes]) -> list[bytes]:
        out = []
        for message in messages:
            fields = syslog.parse(message)
            if fields is None:
                continue
            if self.source is not None and fields.appname != self.source:
                continue
            if self.ps is not None and not syslog.matches_ps(fields.procid, self.ps):
                continue
            out.append(self.render(fields))
        return out


class TailBuffer:
    """Lines waiting for a slow reader, at most `size`; the rest dropped and counted.

    When the reader catches up it first gets one L11 line saying how many
    lines it missed and since when, then the newest lines kept.
    """

    def __init__(self, size: int = DEFAULT_TAIL_BUFFER, clock: Callable[[], float] = time.time,
                 notice: Callable[[int, float, float], bytes] = l11_line) -> None:
        self.size = size
        self.clock = clock
        # How the loss is told: (dropped, since, now) -> bytes; the L11 line by default.
        self.notice = notice
        self.lines: deque[bytes] = deque()
        self.dropped = 0
        self.dropped_since: float | None = None
        self.dropped_total = 0

    def put(self, lines: list[bytes]) -> int:
        """Queue lines; returns how many older lines this pushed out."""
        self.lines.extend(lines)
        excess = len(self.lines) - self.size
        if excess <= 0:
            return 0
        for _ in range(excess):
            self.lines.popleft()
        self.count_dropped(excess)
        return excess

    def count_dropped(self, n: int) -> None:
        if not self.dropped:
            self.dropped_since = self.clock()
        self.dropped += n
        self.dropped_total += n

    def take(self) -> bytes:
        """Everything waiting, as one write, with the L11 line first if lines were lost."""
        chunks = []
        if self.dropped:
            chunks.append(self.notice(self.dropped, self.dropped_since, self.clock()))
            self.dropped = 0
            self.dropped_since = None
        chunks.extend(self.lines)
        self.lines.clear()
        return b"".join(chunks)


class TailSession:
    """One live reader of a channel; write is how its bytes leave (an HTTP response)."""

    def __init__(
        self,
        spec: SessionSpec,
        write: Callable[[bytes], None],
        metrics,
        buffer_size: int = DEFAULT_TAIL_BUFFER,
        clock: Callable[[], float] = time.time,
        render: Callable[[syslog.Fields], bytes] = syslog.tail_line,
        notice: Callable[[int, float, float], bytes] = l11_line,
    ) -> None:
        self.spec = spec
        self.channel_id = spec.channel_id
        self.filter = TailFilter(spec.ps, spec.source, render)
        self.write = write
        self.metrics = metrics
        self.buffer = TailBuffer(buffer_size, clock, notice)
        self.paused = False
        # While the backlog is read, live messages are held here (bounded
        # like the buffer) so that none falls between backlog and tail.
        self.held: list[bytes] | None = []

    def deliver(self, messages: list[bytes]) -> None:
        if self.held is not None:
            self.held.extend(messages)
            if len(self.held) > self.buffer.size:
                dropped = len(self.held) - self.buffer.size
                del self.held[:dropped]
                self.buffer.count_dropped(dropped)
                self.metrics.inc("logplex_tail_dropped_total", dropped)
            return
        lines = self.filter.lines(messages)
        if not lines:
            return
        if self.paused or self.buffer.lines or self.buffer.dropped:
            dropped = self.buffer.put(lines)
            if dropped:
                self.metrics.inc("logplex_tail_dropped_total", dropped)
            return
        self.metrics.inc("logplex_tail_lines_total", len(lines))
        self.write(b"".join(lines))

    def go_live(self, backlog: list[bytes]) -> None:
        """The backlog has been written: deliver what was held, minus what the backlog had."""
        held, self.held = self.held or [], None
        seen = set(backlog[-len(held):]) if held and backlog else set()
        fresh = [m for m in held if m not in seen]
        if fresh:
            self.deliver(fresh)
        elif self.buffer.dropped and not self.paused:
            self.resumeProducing()

    # IPushProducer, for the transport of the response
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting = len(self.buffer.lines)
        if self.buffer.dropped:
            self.metrics.inc("logplex_tail_l11_total")
        data = self.buffer.take()
        if data:
            self.metrics.inc("logplex_tail_lines_total", waiting)
            self.write(data)

    def stopProducing(self) -> None:
        self.paused = True


class TailRegistry:
    """The live tails of this node by channel."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.by_channel: dict[str, set[TailSession]] = {}
        # The cluster bus hooks these to start and stop hearing a channel.
        self.on_first_tail: Callable[[str], None] = lambda channel_id: None
        self.on_last_tail: Callable[[str], None] = lambda channel_id: None
        metrics.gauge_callback("logplex_active_tails", lambda: [({}, self.count())])

    def count(self) -> int:
        return sum(len(s) for s in self.by_channel.values())

    def add(self, tail: TailSession) -> None:
        tails = self.by_channel.get(tail.channel_id)
        if tails is None:
            tails = self.by_channel[tail.channel_id] = set()
            self.on_first_tail(tail.channel_id)
        tails.add(tail)

    def remove(self, tail: TailSession) -> None:
        tails = self.by_channel.get(tail.channel_id)
        if tails is not None and tail in tails:
            tails.discard(tail)
            if not tails:
                del self.by_channel[tail.channel_id]
                self.on_last_tail(tail.channel_id)

    def has_tails(self, channel_id: str) -> bool:
        return channel_id in self.by_channel

    def publish(self, channel_id: str, messages: list[bytes]) -> None:
        for tail in list(self.by_channel.get(channel_id, ())):
            tail.deliver(messages)
