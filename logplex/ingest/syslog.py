"""Syslog over TCP or TLS: frames from the socket, routed one batch per read."""

from __future__ import annotations

from typing import Callable

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex.framing import FramingError, SyslogFramer
from logplex.router import UNKNOWN_TOKEN, IngressDenied, Router, redact_token
from logplex.saturation import HoldMeter

log = Logger()


class SyslogProtocol(Protocol):
    """One sender's connection.

    Senders keep connections open and quiet for long stretches, which is
    fine up to the factory's idle_timeout; but a frame once started must
    arrive whole within frame_timeout, so a sender trickling bytes cannot
    hold a connection and its buffer forever.
    """

    def __init__(self, router: Router, metrics, max_frame: int) -> None:
        self.router = router
        self.metrics = metrics
        self.framer = SyslogFramer(max_frame)
        self.closing = False
        self.held = False  # reading paused until a drain of ours has room
        self._held_since: float | None = None  # when the hold began, for the listener's hold time
        self.counted = False  # in the factory's connection count
        self._idle = None
        self._frame_deadline = None

    def connectionMade(self) -> None:
        factory = self.factory
        if factory.max_connections is not None and factory.connections >= factory.max_connections:
            self.metrics.inc("logplex_connections_refused_total")
            self.closing = True
            self.transport.abortConnection()
            return
        self.counted = True
        factory.connections += 1
        self.metrics.inc("logplex_connections_total")
        if factory.idle_timeout:
            self._idle = factory.clock.callLater(factory.idle_timeout, self._timed_out, "idle")

    def _timed_out(self, why: str) -> None:
        self._idle = self._frame_deadline = None
        self.metrics.inc("logplex_syslog_timeouts_total", reason=why)
        log.info("syslog_connection_timed_out peer={peer} reason={why}", peer=_peer(self.transport), why=why)
        self._close()
        self.transport.abortConnection()

    def _watch_time(self, completed: bool) -> None:
        """Push the idle deadline back; give the frame now pending its own deadline.

        The frame deadline belongs to one frame: when this read completed a
        frame, whatever is pending now is a newer frame and starts a fresh
        deadline. A steady sender whose reads seldom end on a frame boundary
        is never cut off while its frames keep completing.
        """
        factory = self.factory
        if self._idle is not None:
            self._idle.reset(factory.idle_timeout)
        if not factory.frame_timeout:
            return
        if not self.framer.pending:
            if self._frame_deadline is not None:
                self._frame_deadline.cancel()
                self._frame_deadline = None
        elif self._frame_deadline is None:
            self._frame_deadline = factory.clock.callLater(factory.frame_timeout, self._timed_out, "frame")
        elif completed:
            self._frame_deadline.reset(factory.frame_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.metrics.inc("logplex_bytes_received_total", len(data))
        try:
            messages = self.framer.feed(data)
        except FramingError as e:
            # The frames before the broken one are good: route them, then close.
            self.metrics.inc("logplex_framing_errors_total")
            log.info("syslog_connection_closed peer={peer} reason={reason!r}",
                     peer=_peer(self.transport), reason=str(e))
            self._close()
            messages = e.messages
            if messages:
                self._route(messages)
            return
        self._watch_time(bool(messages))
        if messages:
            self._route(messages)

    def _route(self, messages: list[bytes]) -> None:
        try:
            hold = self.factory.route(messages)
        except IngressDenied:
            # Closing makes a queueing sender (rsyslog, syslog-ng) keep its
            # messages and retry, instead of us dropping them silently.
            self._close()
            return
        if hold is not None and not self.held and not self.closing:
            # Stop reading: the sender's own queue waits, not our spool.
            self.held = True
            self.transport.pauseProducing()
            holds = self.factory.holds
            if holds is not None:
                self._held_since = holds.begin(self.factory.listener)
            hold.addBoth(self._go_on)

    def _go_on(self, result) -> None:
        if isinstance(result, Failure):  # a bug: the sender must not stay held for it
            log.failure("syslog_hold_failed", result)
        self.held = False
        self._end_hold()
        if not self.closing:
            self.transport.resumeProducing()

    def _end_hold(self) -> None:
        # Once per hold: at its end, or when the sender went away first.
        if self._held_since is not None:
            self.factory.holds.end(self.factory.listener, self._held_since)
            self._held_since = None

    def _close(self) -> None:
        self.closing = True
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        for timer in (self._idle, self._frame_deadline):
            if timer is not None and timer.active():
                timer.cancel()
        closed_by_us, self.closing = self.closing, True  # a pending hold must not resume it
        self._end_hold()
        if not self.counted:
            return
        self.factory.connections -= 1
        if self.framer.pending and not closed_by_us:
            self.metrics.inc("logplex_partial_frames_dropped_total")
            log.info("syslog_partial_frame_dropped peer={peer} bytes={n}",
                     peer=_peer(self.transport), n=self.framer.pending)


class SyslogFactory(Factory):
    """Syslog connections of one listener.

    A listener bound to a token (`--syslog-token`) routes everything it
    receives to that token's channel under that token's name, whatever
    APP-NAME says: senders that cannot put the token in their messages need
    no template, only the port.
    """

    def __init__(self, router: Router, metrics, max_frame: int,
                 token: str | None = None, *, max_connections: int | None = None,
                 idle_timeout: float | None = None, frame_timeout: float | None = None,
                 clock=None, holds: HoldMeter | None = None,
                 label: Callable[[], str] = lambda: "syslog") -> None:
        self.router = router
        # Time its senders spend held back (read paused), under this listener's name
        # ("syslog:6514"), asked for at each hold: the port is known once bound.
        self.holds = holds
        self.label = label
        self.metrics = metrics
        self.max_frame = max_frame
        self.token = token.encode() if token else None
        self.connections = 0
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    @property
    def listener(self) -> str:
        return self.label()

    def route(self, messages: list[bytes]):
        """Route one read's frames; None, or a Deferred to wait for before reading more."""
        if self.token is None:
            return self.router.route_held(messages)
        # Looked up per batch, so a deleted token stops routing at once.
        target = self.router.cache.routes.get(self.token)
        if target is not None:
            return self.router.route_held(messages, target)
        misses = self.router.misses
        if misses is None or misses.recently_unknown(self.token):
            return self._unknown(messages)
        # Made a moment ago through another worker? Looked up again once the config caught up.
        found = misses.again(self.token, lambda token: self.router.cache.routes.get(token))
        return found.addCallback(self._route_late, messages)

    def _route_late(self, target, messages: list[bytes]):
        if target is None:
            return self._unknown(messages)
        try:
            hold = self.router.route_held(messages, target)
        except IngressDenied:
            return None  # switched off meanwhile: counted as forbidden
        self.metrics.inc("logplex_messages_routed_late_total", len(messages))
        return hold

    def _unknown(self, messages: list[bytes]) -> None:
        self.metrics.inc("logplex_messages_received_total", len(messages))
        self.metrics.inc("logplex_messages_unknown_token_total", len(messages))
        if self.router.drops is not None:
            self.router.drops.add(UNKNOWN_TOKEN, redact_token(self.token) + " (this listener's)", len(messages))
        return None

    def buildProtocol(self, addr):
        protocol = SyslogProtocol(self.router, self.metrics, self.max_frame)
        protocol.factory = self
        return protocol


def _peer(transport) -> str:
    try:
        peer = transport.getPeer()
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"
