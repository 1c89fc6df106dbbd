"""HTTP plumbing shared by the API and the log input: body limits, routing, JSON errors, Request-Id."""

from __future__ import annotations

import json
import re
import uuid
from typing import Awaitable, Callable
from urllib.parse import unquote

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import http, server
from twisted.web.http import _GenericHTTPChannelProtocol
from twisted.web.resource import Resource
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


class HttpError(Exception):
    """An answer other than success; message is the sentence the client reads."""

    def __init__(self, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@attrs.frozen
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON; bytes as they are; None -> empty
    headers: dict = attrs.field(factory=dict)
    content_type: bytes = b"application/json"


# A handler that has taken over the request (streaming) returns this.
STREAMING = object()

Handler = Callable[..., Awaitable[object]]


@attrs.frozen
class Route:
    method: bytes
    pattern: re.Pattern
    handler: Handler


def route(method: str, pattern: str, handler: Handler) -> Route:
    return Route(method.encode(), re.compile("^" + pattern + "$"), handler)


def write_reply(request, reply: Reply) -> None:
    request.setResponseCode(reply.status)
    for name, value in reply.headers.items():
        request.setHeader(name, value)
    body = reply.body
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = body
        request.setHeader(b"content-type", reply.content_type)
    else:
        data = json.dumps(body).encode()
        request.setHeader(b"content-type", b"application/json")
    if reply.status != 204:
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
    request.finish()


def error_reply(status: int, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"error": message}, headers or {})


def decode_path(raw: bytes) -> str:
    """The request path with its percent-escapes decoded, segment by segment.

    A client may escape a channel id's ':' or '@'; an escaped '/' stays
    escaped, so it can never split a segment in two and reach another route.
    """
    return "/".join(unquote(segment, errors="replace").replace("/", "%2F")
                    for segment in raw.decode("latin-1").split("/"))


class Dispatcher(Resource):
    """A leaf resource that matches (method, path) against routes and runs async handlers.

    Handlers receive (request, *path groups) and return a Reply or STREAMING;
    HttpError becomes a JSON error; anything unexpected a logged 500, never a
    traceback to the client.
    """

    isLeaf = True

    def __init__(self, routes: list[Route], error_map: Callable[[Exception], Reply | None] = lambda e: None) -> None:
        super().__init__()
        self.routes = routes
        self.error_map = error_map

    def render(self, request):
        # The Twisted version is nobody's business.
        request.setHeader(b"server", b"logplex")
        request_id = request.getHeader(b"request-id") or str(uuid.uuid4())
        if isinstance(request_id, str):
            request_id = request_id.encode()
        request.setHeader(b"request-id", request_id[:200])
        path = decode_path(request.path)
        allowed = []
        for r in self.routes:
            match = r.pattern.match(path)
            if match is None:
                continue
            if r.method != request.method and not (r.method == b"GET" and request.method == b"HEAD"):
                allowed.append(r.method)
                continue
            self._run(request, r.handler, match.groups())
            return server.NOT_DONE_YET
        if allowed:
            reply = error_reply(405, f"{request.method.decode('latin-1')} is not allowed on {path}.",
                                {b"allow": b", ".join(sorted(set(allowed)))})
        else:
            reply = error_reply(404, f"There is nothing at {path}.")
        write_reply(request, reply)
        return server.NOT_DONE_YET

    def _run(self, request, handler: Handler, groups) -> None:
        d = defer.ensureDeferred(handler(request, *groups))
        finished = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def done(reply):
            if reply is STREAMING or finished:
                return
            write_reply(request, reply)

        def failed(failure):
            e = failure.value
            if isinstance(e, HttpError):
                reply = error_reply(e.status, e.message, e.headers)
            else:
                reply = self.error_map(e)
                if reply is None:
                    log.failure("api_handler_failed path={path!r}", failure, path=request.path)
                    reply = error_reply(500, "The node hit an internal error; it is logged.")
            if not finished:
                write_reply(request, reply)

        def unwritable(failure):
            # The reply itself could not be written: say so rather than
            # leave the client waiting.
            log.failure("api_reply_failed path={path!r}", failure, path=request.path)
            if not finished and not request.finished:
                request.responseHeaders.removeHeader(b"content-type")
                write_reply(request, error_reply(500, "The node hit an internal error; it is logged."))

        d.addCallbacks(done, failed).addErrback(unwritable).addErrback(
            lambda f: log.failure("api_error_reply_failed", f)
        )


def read_json(request, max_bytes: int | None = None) -> object:
    """The request body as JSON, or HttpError 400/413 with a sentence."""
    if getattr(request, "body_too_large", False):
        raise HttpError(413, "The request body is too large.")
    raw = request.content.read() if request.content is not None else b""
    if max_bytes is not None and len(raw) > max_bytes:
        raise HttpError(413, f"The JSON body is larger than {max_bytes} bytes.")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"The body is not valid JSON: {e}.") from None
    except RecursionError:
        raise HttpError(400, "The body's JSON is nested too deeply.") from None


STATUS_TEXT = http.RESPONSES
