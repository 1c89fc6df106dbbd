"""Syslog over TCP or TLS: frames from the socket, routed one batch per read."""

from __future__ import annotations

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from logplex.framing import DEFAULT_MAX_FRAME, FramingError, SyslogFramer
from logplex.router import IngressDenied, Router

log = Logger()


class SyslogProtocol(Protocol):
    def __init__(self, router: Router, metrics, max_frame: int) -> None:
        self.router = router
        self.metrics = metrics
        self.framer = SyslogFramer(max_frame)
        self.closing = False

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.metrics.inc("logplex_connections_total")

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
        if messages:
            self._route(messages)

    def _route(self, messages: list[bytes]) -> None:
        try:
            self.factory.route(messages)
        except IngressDenied:
            # Closing makes a queueing sender (rsyslog, syslog-ng) keep its
            # messages and retry, instead of us dropping them silently.
            self._close()

    def _close(self) -> None:
        self.closing = True
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.factory.connections -= 1
        if self.framer.pending and not self.closing:
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

    def __init__(self, router: Router, metrics, max_frame: int = DEFAULT_MAX_FRAME,
                 token: str | None = None) -> None:
        self.router = router
        self.metrics = metrics
        self.max_frame = max_frame
        self.token = token.encode() if token else None
        self.connections = 0

    def route(self, messages: list[bytes]) -> None:
        if self.token is None:
            self.router.route(messages)
            return
        # Looked up per batch, so a deleted token stops routing at once.
        target = self.router.cache.routes.get(self.token)
        if target is None:
            self.metrics.inc("logplex_messages_received_total", len(messages))
            self.metrics.inc("logplex_messages_unknown_token_total", len(messages))
            return
        self.router.route(messages, target)

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
