"""The fan-out of every accepted batch: token to channel, cook, then backlog, tails and drains.

The router knows nothing about sockets: inputs hand it lists of framed
messages, one call per read, and it hands lists onward, one call per channel.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, KeysView, Protocol

from twisted.internet.defer import DeferredList

from logplex import hotpath, syslog
from logplex.model import NO_REDIS, NO_TAIL
from logplex.config.cache import ConfigCache

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred


class BacklogSink(Protocol):
    def extend(self, by_channel: dict[str, list[bytes]]) -> None: ...


class TailSink(Protocol):
    def tailed(self, channel_ids: KeysView[str]) -> Iterable[str]:
        """Those of these channels that have a tail somewhere."""

    def publish(self, channel_id: str, messages: list[bytes]) -> None: ...


DrainSink = Callable[[str, list[bytes]], None]
# Given the channels a batch went to: None, or a Deferred the sender should
# wait for before it sends more (a drain of theirs is full and keeping up, or
# the backlog writer of their shard is past half its bound).
Hold = Callable[[Iterable[str]], "Deferred | None"]


class IngressDenied(Exception):
    """The node's operators switched log ingress off."""


# Why a message was dropped, as the node's log says it.
MALFORMED = "malformed: neither RFC 5424 nor RFC 3164"
UNKNOWN_TOKEN = "unknown token"
UNKNOWN_TAG = "malformed: an RFC 3164 line whose tag is not a token"


def redact_token(app_name: bytes) -> str:
    """Enough of an unknown token to recognise a typo by, never the whole of it."""
    shown = app_name[:8].decode("ascii", "replace")
    return f"{shown}… ({len(app_name)} bytes)" if len(app_name) > 8 else shown


class DropReport:
    """Dropped messages, told to the node's log: the first of a kind at once, then at most
    one line per kind and `interval` with the count since, so a token typo shows up in
    the log without a flood of lines.

    A kind is (reason, detail). Pure: the clock and the line writer are given; a
    timer calls flush() to tell what waited. At most max_kinds are told apart; past
    that, new kinds are counted under their reason alone.
    """

    def __init__(self, clock: Callable[[], float], emit: Callable[[str, str, int], None],
                 interval: float = 60.0, max_kinds: int = 10_000) -> None:
        self.clock = clock
        self.emit = emit
        self.interval = interval
        self.max_kinds = max_kinds
        self.kinds: dict[tuple[str, str], list] = {}  # kind -> [last told at, count not told yet]

    def add(self, reason: str, detail: str, n: int) -> None:
        kind = (reason, detail)
        entry = self.kinds.get(kind)
        if entry is None:
            if len(self.kinds) >= self.max_kinds:
                kind = (reason, "(and others)")
                entry = self.kinds.get(kind)
            if entry is None:
                entry = self.kinds[kind] = [None, 0]
        now = self.clock()
        if entry[0] is None or now - entry[0] >= self.interval:
            self.emit(kind[0], kind[1], entry[1] + n)
            entry[0], entry[1] = now, 0
        else:
            entry[1] += n

    def flush(self) -> None:
        """Tell what waited a whole interval; forget kinds quiet for one."""
        now = self.clock()
        for kind, entry in list(self.kinds.items()):
            if now - entry[0] < self.interval:
                continue
            if entry[1]:
                self.emit(kind[0], kind[1], entry[1])
                entry[0], entry[1] = now, 0
            else:
                del self.kinds[kind]


class TokenMisses:
    """Tokens this worker did not know when lines came with them, and the wait for its config to catch up.

    A token made through another worker of this node (or another node) is in the
    config Redis before its maker answers, but reaches this worker's cache only
    through the change feed, a moment later. So a line with an unknown token waits
    for catch_up() (one round trip on the feed, and the refreshes it brings) before
    it is dropped. A token still unknown then is remembered for `remember` seconds,
    and its lines are dropped at once meanwhile: a sender with a wrong or deleted
    token costs one catch-up, not one per read. At most `most` tokens are
    remembered (the oldest half is forgotten past that).

    Pure: the clock and the catch-up are given.
    """

    def __init__(self, catch_up: Callable[[], "Deferred"], clock: Callable[[], float],
                 remember: float = 10.0, most: int = 10_000) -> None:
        self.catch_up = catch_up
        self.clock = clock
        self.remember = remember
        self.most = most
        self._unknown: dict[bytes, float] = {}  # token -> when it was found unknown, oldest first

    def recently_unknown(self, token: bytes) -> bool:
        """Whether a catch-up found this token unknown less than `remember` seconds ago."""
        at = self._unknown.get(token)
        if at is None:
            return False
        if self.clock() - at < self.remember:
            return True
        del self._unknown[token]
        return False

    def unknown(self, token: bytes) -> None:
        """A catch-up did not bring this token: its lines are dropped at once for a while."""
        if token not in self._unknown and len(self._unknown) >= self.most:
            now = self.clock()
            kept = {t: at for t, at in self._unknown.items() if now - at < self.remember}
            if len(kept) >= self.most:
                kept = dict(list(kept.items())[len(kept) // 2:])
            self._unknown = kept
        self._unknown.pop(token, None)
        self._unknown[token] = self.clock()

    def wait(self) -> "Deferred":
        return self.catch_up()

    def again(self, token: bytes, find: Callable[[bytes], object]) -> "Deferred":
        """find(token) once the config has caught up; None (and the token remembered) if still unknown."""

        def look(_):
            found = find(token)
            if found is None:
                self.unknown(token)
            return found

        return self.catch_up().addCallback(look)


class Router:
    def __init__(
        self,
        cache: ConfigCache,
        backlogs: BacklogSink,
        tails: TailSink,
        metrics,
        drains: DrainSink | None = None,
        clock: Callable[[], float] = time.time,
        hold: Hold | None = None,
        drops: DropReport | None = None,
        backlog_hold: Hold | None = None,
        misses: TokenMisses | None = None,
    ) -> None:
        self.clock = clock
        # Without it, a line with a token this worker does not know is dropped at once.
        self.misses = misses
        self.drops = drops
        self.cache = cache
        self.backlogs = backlogs
        self.tails = tails
        self.metrics = metrics
        self.drains = drains
        self.hold = hold
        self.backlog_hold = backlog_hold
        # Node-wide switches an operator flips from the admin shell.
        self.deny_ingress = False
        self.deny_redis = False
        self.deny_drains = False

    def route(self, messages: list[bytes], route: tuple[str, bytes] | None = None) -> int:
        """Route a batch; returns how many messages were accepted.

        With route, every message goes to that (channel, token name) whatever
        its APP-NAME says: an HTTP sender authenticated with one token.
        """
        return self._route(messages, route)[0]

    def route_held(self, messages: list[bytes], route: tuple[str, bytes] | None = None) -> Deferred | None:
        """Route a batch like route(); a Deferred when its sender should wait before sending more.

        Lines whose token this worker does not know (see TokenMisses) wait for its
        config to catch up, and are routed or dropped then; their sender waits too,
        so that its next lines come after them.
        """
        unsure: list[bytes] | None = [] if self.misses is not None and route is None else None
        by_channel = self._route(messages, route, unsure)[1]
        hold = self._hold(by_channel)
        if unsure:
            late = self.misses.wait()
            late.addCallback(lambda _: self._route_late(unsure))
            hold = late if hold is None else DeferredList([hold, late])
        return hold

    def _route_late(self, messages: list[bytes]) -> Deferred | None:
        """The lines that waited for a catch-up: routed now (counted as routed late), or dropped
        as unknown, their tokens remembered as such."""
        try:
            accepted, by_channel = self._route(messages, None, None, late=True)
        except IngressDenied:
            return None  # switched off meanwhile: counted as forbidden
        if accepted:
            self.metrics.inc("logplex_messages_routed_late_total", accepted)
        return self._hold(by_channel)

    def _hold(self, by_channel: dict[str, list[bytes]]) -> Deferred | None:
        """None, or what the sender of lines to these channels should wait for."""
        if not by_channel:
            return None
        ids = by_channel.keys()
        backlog = self.backlog_hold(ids) if self.backlog_hold is not None and not self.deny_redis else None
        drains = self.hold(ids) if self.hold is not None and not self.deny_drains else None
        if backlog is None or drains is None:
            return backlog or drains
        return DeferredList([backlog, drains])

    def _route(self, messages: list[bytes], route: tuple[str, bytes] | None, unsure: list[bytes] | None = None,
               late: bool = False) -> tuple[int, dict]:
        """(accepted, lines by channel). Lines with an unknown token go to `unsure` (not counted
        as dropped) when it is given; `late`: these lines waited, and were counted as received."""
        metrics = self.metrics
        if not late:
            metrics.inc("logplex_messages_received_total", len(messages))
        if self.deny_ingress:
            metrics.inc("logplex_messages_forbidden_total", len(messages))
            raise IngressDenied("Log ingress is switched off on this node.")
        routes = self.cache.routes
        dropped: dict[tuple[str, str], int] = {}

        def odd(message: bytes) -> tuple[str, bytes] | None:
            return self._odd(message, routes, route, dropped, unsure, late)

        by_channel = group(messages, routes, route, odd)
        accepted = len(messages) - (len(unsure) if unsure else 0)
        if dropped:
            malformed = unknown = 0
            for (reason, detail), n in dropped.items():
                if self.drops is not None:
                    self.drops.add(reason, detail, n)
                if reason == UNKNOWN_TOKEN:
                    unknown += n
                else:
                    malformed += n
            if malformed:
                metrics.inc("logplex_messages_malformed_total", malformed)
            if unknown:
                metrics.inc("logplex_messages_unknown_token_total", unknown)
            accepted -= malformed + unknown
        if accepted:
            metrics.inc("logplex_messages_routed_total", accepted)
            self._fan_out(by_channel)
        return accepted, by_channel

    def _odd(self, message: bytes, routes: dict, route: tuple[str, bytes] | None,
             dropped: dict[tuple[str, str], int], unsure: list[bytes] | None = None,
             late: bool = False) -> tuple[str, bytes] | None:
        """The rules for a message the grouping loop does not take as it is: (channel id,
        cooked message), or None with the drop tallied in `dropped` by (reason, detail), or
        put in `unsure` (an RFC 5424 line with a token not known yet) to be looked at again."""
        parts = syslog.split_header(message)
        old_style = False
        if parts is None:
            # An old sender's RFC 3164 line, converted.
            converted = syslog.from_rfc3164(message, self.clock())
            parts = syslog.split_header(converted) if converted is not None else None
            if parts is None:
                _tally(dropped, MALFORMED, "")
                return None
            old_style = True
        target = route if route is not None else routes.get(parts[3])
        if target is None:
            # An RFC 3164 tag is a token only if it happens to be one:
            # otherwise the line is not in logplex's format at all.
            # Only an RFC 5424 line waits for the config to catch up: an RFC 3164 tag that
            # is no token is the usual case (a local daemon's line), not a race.
            if old_style:
                _tally(dropped, UNKNOWN_TAG, "")
            elif unsure is not None and not self.misses.recently_unknown(parts[3]):
                unsure.append(message)
            else:
                if late:
                    self.misses.unknown(parts[3])
                _tally(dropped, UNKNOWN_TOKEN, redact_token(parts[3]))
            return None
        channel_id, name = target
        return channel_id, syslog.cook(parts, name)

    def _fan_out(self, by_channel: dict[str, list[bytes]]) -> None:
        # Per read, not per channel, wherever it can be: one read of 64 KiB may
        # touch hundreds of channels when thousands are busy.
        channels = self.cache.channels
        flagged = self.cache.flagged and by_channel.keys() & self.cache.flagged.keys()
        if not self.deny_redis:
            if flagged:
                self.backlogs.extend({channel_id: batch for channel_id, batch in by_channel.items()
                                      if channel_id not in flagged or NO_REDIS not in channels[channel_id].flags})
            else:
                self.backlogs.extend(by_channel)
        ids = by_channel.keys()
        for channel_id in self.tails.tailed(ids):
            if channel_id not in flagged or NO_TAIL not in channels[channel_id].flags:
                self.tails.publish(channel_id, by_channel[channel_id])
        if self.drains is not None and not self.deny_drains:
            for channel_id in ids & self.cache.channel_drains.keys():
                self.drains(channel_id, by_channel[channel_id])

    def emit(self, channel_id: str, message: bytes) -> None:
        """A message of the router's own (L10, L14 …) into a channel, like any other."""
        self._fan_out({channel_id: [message]})


def _tally(counts: dict, reason: str, detail: str) -> None:
    counts[(reason, detail)] = counts.get((reason, detail), 0) + 1


def pure_group(messages: list[bytes], routes: dict[bytes, tuple[str, bytes]], route: tuple[str, bytes] | None,
               odd: Callable[[bytes], tuple[str, bytes] | None]) -> dict[str, list[bytes]]:
    """The messages, cooked (APP-NAME, the token, replaced by the target's name), grouped by
    channel in order: the router's per-message loop. A message with an RFC 5424 header
    goes to route, or to its token's entry in routes; every other one is odd(message)'s:
    None (dropped), or the (channel id, cooked message) it goes to.
    logplex._hot.group is its compiled twin."""
    split_header, cook = syslog.pure_split_header, syslog.pure_cook
    by_channel: dict[str, list[bytes]] = {}
    for message in messages:
        parts = split_header(message)
        target = None if parts is None else route if route is not None else routes.get(parts[3])
        if target is None:
            routed = odd(message)
            if routed is None:
                continue
            channel_id, cooked = routed
        else:
            channel_id, name = target
            cooked = cook(parts, name)
        batch = by_channel.get(channel_id)
        if batch is None:
            by_channel[channel_id] = [cooked]
        else:
            batch.append(cooked)
    return by_channel


_hot = hotpath.compiled()
group = pure_group if _hot is None else _hot.group
