"""A drain's pushback gate: whether its endpoint is quick enough for the node to hold senders back, and the senders it holds.

When a drain's memory is full while its endpoint answers within
--drain-pushback seconds, what limits the drain is this node, not the
endpoint: the channel's senders are asked to wait rather than have the node
spool what it could deliver itself. A failing or slow endpoint never holds
senders back: that is what the spool is for.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer


class PushbackGate:
    """Times the endpoint's answers, and keeps the Deferreds of the senders waiting for room."""

    def __init__(self, pushback: float, clock: Callable[[], float]) -> None:
        self.pushback = pushback
        self.clock = clock
        self.last_rtt = 0.0
        self.sent_at = 0.0
        self.holders: list[defer.Deferred] = []

    def sent(self) -> None:
        """A batch (or a spool read) went to the endpoint now."""
        self.sent_at = self.clock()

    def answered(self) -> None:
        """The endpoint answered the batch last sent."""
        self.last_rtt = self.clock() - self.sent_at

    def quick(self, in_flight: bool) -> bool:
        """Pushback is on and the endpoint answers within it (the batch in flight, if any, is not late yet)."""
        if not self.pushback or self.last_rtt >= self.pushback:
            return False
        return not in_flight or self.clock() - self.sent_at < self.pushback

    @property
    def holding_anyone(self) -> bool:
        return bool(self.holders)

    def wait(self) -> defer.Deferred:
        """A Deferred that fires when the gate opens (release)."""
        d = defer.Deferred()
        self.holders.append(d)
        return d

    def forget(self, d: defer.Deferred) -> None:
        """A sender stopped waiting on its own (its hold timed out)."""
        if d in self.holders:
            self.holders.remove(d)

    def release(self) -> None:
        """Let every held sender go on."""
        holders, self.holders = self.holders, []
        for d in holders:
            d.callback(None)
