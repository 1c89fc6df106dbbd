"""The HTTP site shared by the API and the log input: time and byte limits, connection caps, Request-Id.

What a request reaches is logplex.http.routing's business.
"""

from __future__ import annotations

import uuid

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import http, server
from twisted.web.http import _GenericHTTPChannelProtocol
from zope.interface import implementer

log = Logger()

DEFAULT_MAX_BODY = 10 * 1024 * 1024


class LimitedChannel(http.HTTPChannel):
    """An HTTP/1.1 connection whose every request head (request line and
    headers) must arrive within the site's header_timeout.

    The clock starts at the connection's first moment, and again at the
    first byte of each later request on a keep-alive connection, so a
    client trickling a request line (or headers) a byte at a time cannot
    pin a connection: Twisted's own idle timeout restarts with every byte.
    A keep-alive connection that sends nothing is the idle timeout's.
    """

    _head_deadline = None
    # True while the channel waits for (the rest of) a request head.
    _awaiting_head = True
    _cut_off = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm_head_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_head and self._head_deadline is None and data and not self._handlingRequest:
            self._arm_head_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        # The head is in: the body has the request's own deadline.
        self._awaiting_head = False
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def requestDone(self, request) -> None:
        # The next request's head is timed from its first byte; data the
        # client pipelined meanwhile is replayed by the base method and
        # counts as that first byte.
        self._awaiting_head = True
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._cancel_head_deadline()
        super().connectionLost(reason)

    def _arm_head_deadline(self) -> None:
        site = getattr(self, "site", None)
        timeout = getattr(site, "header_timeout", None)
        if timeout and not self._cut_off:
            self._head_deadline = site.reactor.callLater(timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None and self._head_deadline.active():
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        self._cut_off = True
        wrapper = getattr(self, "_wrapper", None)
        if wrapper is not None and wrapper._channel is not self:
            # ALPN chose HTTP/2 and another channel serves the connection.
            return
        cut_off_slow_client(self, "headers")


def cut_off_slow_client(channel, part: str) -> None:
    """Close a client that was too slow sending `part` of a request, and count it."""
    site = channel.site
    site.metrics.inc("logplex_http_slow_clients_total", part=part)
    transport = channel.transport
    peer = getattr(transport.getPeer(), "host", "?") if transport is not None else "?"
    log.info("http_client_too_slow part={part} peer={peer}", part=part, peer=peer)
    if transport is not None:
        transport.abortConnection()


def _limited_channel(site) -> _GenericHTTPChannelProtocol:
    # Site.protocol, called as a method: Twisted's own factory builds the
    # same wrapper (which switches to HTTP/2 when ALPN chose it) around a
    # plain HTTPChannel.
    return _GenericHTTPChannelProtocol(LimitedChannel())


class LimitedRequest(server.Request):
    """A request that stops storing its body past the site's max_body, and
    whose body must arrive in time.

    The handler answers 413 instead of the node holding an unbounded upload
    in memory. A client that takes longer than the site's request_timeout
    to send its body once the headers are in (a stalled upload) is cut off;
    the headers themselves are timed by LimitedChannel.
    """

    body_too_large = False
    _received = 0
    _deadline = None

    def _too_slow(self, what: str) -> None:
        self._deadline = None
        cut_off_slow_client(self.channel, what)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _limit(self) -> int:
        return getattr(self.channel.site, "max_body", DEFAULT_MAX_BODY)

    def gotLength(self, length):
        # The headers are in: the rest of the request gets its own deadline.
        self._cancel_deadline()
        site = self.channel.site
        if getattr(site, "request_timeout", None):
            self._deadline = site.reactor.callLater(site.request_timeout, self._too_slow, "body")
        if length is not None and length > self._limit():
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def requestReceived(self, command, path, version):
        self._cancel_deadline()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        self._cancel_deadline()
        super().connectionLost(reason)

    def render(self, resrc) -> None:
        # Twisted's process() has just named itself in Server: the version is
        # nobody's business. Every answer carries the caller's Request-Id, or a new one.
        self.setHeader(b"server", b"logplex")
        request_id = self.getHeader(b"request-id") or str(uuid.uuid4())
        if isinstance(request_id, str):
            request_id = request_id.encode()
        self.setHeader(b"request-id", request_id[:200])
        super().render(resrc)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self.body_too_large or self._received > self._limit():
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class LogplexSite(server.Site):
    """A Site whose connections and requests are bounded in time and bytes (see LimitedChannel, LimitedRequest)."""

    requestFactory = LimitedRequest
    protocol = _limited_channel
    displayTracebacks = False

    def __init__(self, resource, max_body: int = DEFAULT_MAX_BODY, *, header_timeout: float | None = None,
                 request_timeout: float | None = None, idle_timeout: float | None = None,
                 max_header_bytes: int | None = None, metrics=None, reactor=None, **kw) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if idle_timeout is not None:
            kw["timeout"] = idle_timeout
        # Nothing here takes HTML forms, and Twisted's form parsing raises on
        # some Content-Type values (found by the fuzzer): off.
        kw.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, reactor=reactor, **kw)
        self.reactor = reactor
        self.max_body = max_body
        self.header_timeout = header_timeout
        self.request_timeout = request_timeout
        self.max_header_bytes = max_header_bytes
        if metrics is None:
            from logplex.metrics import Metrics
            metrics = Metrics()
        self.metrics = metrics

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            protocol._channel._wrapper = protocol
        if self.max_header_bytes is not None and protocol is not None:
            # The request line and headers together: a client cannot make the
            # node buffer more than this before its request is even parsed.
            protocol._channel.totalHeadersSize = self.max_header_bytes
        return protocol

    def log(self, request):
        # Access logs per request would be per-message logging for HTTP
        # senders; notable events are logged by the handlers instead.
        pass


@implementer(IProtocolNegotiationFactory)
class ConnectionCap(WrappingFactory):
    """At most `limit` connections open on a listener; the next are refused and counted.

    Under TLS, ALPN sees this wrapper, not the factory it wraps: it answers
    for the wrapped factory, limited to `negotiable` when given. (The wrapped
    protocol reads the negotiated protocol through ProtocolWrapper, which
    forwards what it lacks to the TLS transport.)
    """

    def __init__(self, wrapped, limit: int | None, metrics, *,
                 negotiable: tuple[bytes, ...] | None = None) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.metrics = metrics
        # (self.protocols is WrappingFactory's: the open connections.)
        self.negotiable = None if negotiable is None else tuple(negotiable)

    def acceptableProtocols(self) -> list[bytes]:
        negotiating = IProtocolNegotiationFactory(self.wrappedFactory, None)
        spoken = list(negotiating.acceptableProtocols()) if negotiating is not None else []
        if self.negotiable is None:
            return spoken
        return [p for p in spoken if p in self.negotiable]

    def buildProtocol(self, addr):
        if self.limit is not None and len(self.protocols) >= self.limit:
            self.metrics.inc("logplex_connections_refused_total")
            return None
        return super().buildProtocol(addr)
