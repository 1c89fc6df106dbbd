"""HTTP(S) drains: a batch is one POST of an application/logplex-1 body to an endpoint the node does not trust.

Every drain endpoint is a tenant's choice, so what it answers is read as
hostile: at most ANSWER_BYTES of a body are kept (the rest is not read: the
connection is dropped), nothing is decompressed, no redirect is followed, no
cookie is stored or sent, and --http-drain-timeout bounds the whole exchange
(connect, send, headers and body), not only the wait for headers.

The POST goes through twisted.web's Agent, the layer treq is built on, and
not through treq's HTTPClient: that client wraps every request in a
CookieAgent (one jar for the whole node) and a ContentDecoderAgent (gzip),
with no way to turn either off.

What can be done once per drain is done once (DrainTarget): the URL is
parsed, its endpoint key and Host header computed, and the constant headers
encoded when the drain starts, and each POST goes to DrainAgent.post, which
skips Agent.request's parsing of the URL. The address check stays per
connection: a HostnameEndpoint resolves at every connect.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from typing import Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from logplex import __version__
from logplex.drains.formats import http_body
from logplex.drains.policy import Outcome, parse_retry_after
from logplex.drains.netpolicy import resolved_only_private
from logplex.drains.ticker import DrainTicker
from logplex.model import Drain

# 408 Request Timeout and 429 Too Many Requests are the receiver asking for
# a retry; so is every 5xx. Any other 4xx says the batch itself is refused.
RETRY_STATUSES = {408, 429}
# What is kept of an answer's body: enough for a receiver's error sentence.
ANSWER_BYTES = 4096
# All an answer may take on the wire before its body is cut: status line,
# headers and chunk framing are part of it.
ANSWER_WIRE_BYTES = 64 * 1024
# What of it (or of a Location) goes into a drain's last_error.
EXCERPT_CHARS = 200
# Connections open at once to one endpoint host:port, shared by all its
# drains (each drain has one batch in flight; the others queue for a
# connection). At 1,000 drains of one host, one connection each would be
# 1,000 sockets, and the pool would keep few of them: a connect per POST.
HOST_CONNECTIONS = 16
# How late a request timeout (or a pooled connection's idle timeout) may
# fire: they share one reactor timer on this grid.
TIMEOUT_RESOLUTION = 0.05
# A host whose connections all went this long without an answer is stalled
# (one tenant's slow path, a hung load balancer): the POSTs waiting for it
# then get connections of their own, as each drain had before they shared,
# so that a few hung drains of a host do not hold up all its others.
HOST_STALL = 1.0
# Endpoints kept for reuse (a TLS one holds its context), one per host:port.
ENDPOINTS_CACHED = 4096

_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_UNPRINTABLE = re.compile(r"[^ -~]+")


@implementer(IPolicyForHTTPS)
class TrustRootPolicy:
    """Verify servers against a given CA bundle (a private CA, or the tests')."""

    def __init__(self, trust_root) -> None:
        self.trust_root = trust_root

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trust_root)


def load_trust_root(ca_file: str | None):
    """None for the platform's trust store, else every CA certificate in the PEM file ca_file."""
    if not ca_file:
        return None
    with open(ca_file, "rb") as f:
        pems = _PEM_CERTIFICATE.findall(f.read())
    if not pems:
        raise ValueError(f"--drain-ca-file {ca_file} holds no PEM certificate "
                         "(-----BEGIN CERTIFICATE----- ...): give a file of one or more CA certificates.")
    return trustRootFromCertificates([Certificate.loadPEM(pem) for pem in pems])


def make_client(reactor, trust_root=None, connect_timeout: float = 10.0,
                per_host: int = HOST_CONNECTIONS) -> DrainHttpClient:
    """The node's one HTTP client for every HTTP drain: per endpoint host, `per_host` persistent connections."""
    # Request timeouts and the pool's idle timers: one reactor timer for all.
    timers = DrainTicker(reactor, resolution=TIMEOUT_RESOLUTION)
    pool = HTTPConnectionPool(timers, persistent=True)
    # Every connection a host's gate lets open is kept for the next request:
    # with fewer kept than may be open, most requests would pay a connect.
    pool.maxPersistentPerHost = per_host
    pool.cachedConnectionTimeout = 120
    pool.retryAutomatically = False  # a retry is ours to make, under the same frame id
    policy = TrustRootPolicy(trust_root) if trust_root is not None else BrowserLikePolicyForHTTPS()
    agent = DrainAgent.usingEndpointFactory(reactor, DrainEndpoints(reactor, policy, connect_timeout), pool=pool)
    return DrainHttpClient(agent, timers, per_host=per_host)


class AnswerTooLong(Exception):
    """A drain endpoint's answer ran past ANSWER_WIRE_BYTES before its body was cut."""


class _AnswerBound(ProtocolWrapper):
    """Drops a connection once the answer to a request runs past a number of bytes, headers included.

    Twisted's HTTP client parser keeps every header line it is sent, so an
    endpoint could otherwise grow the node's memory for as long as the
    timeout lets it. Every write starts a new request, and a new count.
    """

    def __init__(self, factory: _BoundedConnections, wrappedProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self.limit = factory.limit
        self.received = 0
        self.overrun = False

    def write(self, data: bytes) -> None:
        self.received = 0
        super().write(data)

    def writeSequence(self, data) -> None:
        self.received = 0
        super().writeSequence(data)

    def dataReceived(self, data: bytes) -> None:
        if self.overrun:
            return
        self.received += len(data)
        if self.received > self.limit:
            self.overrun = True
            self.transport.abortConnection()
            return
        super().dataReceived(data)

    def stopProducing(self) -> None:
        # Only a response body's reader asks this, when it wants no more of
        # it: the rest is never read, so the connection is closed at once
        # and never reused (over TLS too, without waiting on the peer).
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self.overrun:
            reason = Failure(AnswerTooLong(
                f"an answer of more than {self.limit // 1024} KiB (status line, headers and the first "
                f"{ANSWER_BYTES // 1024} KiB of body): the connection was dropped"))
        super().connectionLost(reason)


class _BoundedConnections(WrappingFactory):
    protocol = _AnswerBound

    def __init__(self, wrappedFactory, limit: int) -> None:
        super().__init__(wrappedFactory)
        self.limit = limit


class _BoundedEndpoint:
    """An endpoint whose connections carry _AnswerBound under the HTTP protocol (and over TLS)."""

    def __init__(self, endpoint, limit: int) -> None:
        self.endpoint = endpoint
        self.limit = limit

    def connect(self, factory) -> defer.Deferred:
        d = self.endpoint.connect(_BoundedConnections(factory, self.limit))
        # The pool keeps, and talks to, the HTTP protocol itself.
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)


@implementer(IAgentEndpointFactory)
class DrainEndpoints:
    """Where the drains' Agent connects: TCP for http, TLS over it for https, every answer bounded in bytes."""

    def __init__(self, reactor, policy: IPolicyForHTTPS, connect_timeout: float,
                 limit: int = ANSWER_WIRE_BYTES) -> None:
        self.reactor = reactor
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.limit = limit
        # Agent asks for an endpoint on every request, pooled connection or
        # not; made anew, an https one builds a TLS context each time. The
        # address check stays per connection: a HostnameEndpoint resolves
        # (through the node's refusing resolver) at every connect.
        self._endpoints: dict[tuple[bytes, bytes, int], _BoundedEndpoint] = {}

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= ENDPOINTS_CACHED:
                self._endpoints.clear()
            endpoint = self._endpoints[key] = self._endpoint(uri)
        return endpoint

    def _endpoint(self, uri) -> _BoundedEndpoint:
        endpoint = HostnameEndpoint(self.reactor, uri.host.decode("ascii"), uri.port,
                                    timeout=self.connect_timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"an HTTP drain is http:// or https://, not {uri.scheme!r}")
        return _BoundedEndpoint(endpoint, self.limit)


@attrs.frozen
class DrainTarget:
    """Where a drain POSTs, worked out once per drain: its URL, parsed, and what every request to it shares."""

    url: bytes
    uri: URI
    # The request line's target (URI.originForm computes it anew at each use).
    path: bytes
    # (scheme, host, port): the pool's key, and the key of the host's connection gate.
    key: tuple[bytes, bytes, int]
    # Every header but the two each batch sets, encoded once (the Host header included,
    # so that Agent adds none to a copy per request).
    headers: dict[bytes, list[bytes]]

    @classmethod
    def of(cls, url: bytes, headers: dict[bytes, list[bytes]]) -> DrainTarget:
        uri = URI.fromBytes(url)
        host = b"[" + uri.host + b"]" if b":" in uri.host else uri.host
        if (uri.scheme, uri.port) not in ((b"http", 80), (b"https", 443)):
            host += b":%d" % uri.port
        # Headers does the encoding and checks of names and values, here once.
        raw = dict(Headers({**headers, b"Host": [host]}).getAllRawHeaders())
        return cls(url, uri, uri.originForm, (uri.scheme, uri.host, uri.port), raw)

    def request_headers(self, count: int, frame_id: str) -> Headers:
        """The headers of one batch's POST: the drain's, its message count and its frame id."""
        headers = Headers()
        # Twisted keeps encoded headers in _rawHeaders; these are encoded
        # already (the count and frame id are ASCII digits and hex), so they
        # are set as they are rather than encoded again per request
        # (test_drain_http checks the request on the wire).
        headers._rawHeaders = {**self.headers, b"Logplex-Msg-Count": [b"%d" % count],
                               b"Logplex-Frame-Id": [frame_id.encode("ascii")]}
        return headers


class DrainAgent(Agent):
    """Agent with a POST to a DrainTarget: the URL parsed once per drain, not once per request."""

    def post(self, target: DrainTarget, headers: Headers, body: IBodyProducer) -> defer.Deferred:
        """What Agent.request(b"POST", target.url, ...) does, without parsing target.url again."""
        try:
            endpoint = self._getEndpoint(target.uri)
        except SchemeNotSupported:
            return defer.fail()
        return self._requestWithEndpoint(target.key, endpoint, b"POST", target.uri, headers, body, target.path)


class ExchangeTimeout(Exception):
    """A drain endpoint did not complete its answer within --http-drain-timeout."""


@attrs.frozen
class Answer:
    """What a drain endpoint answered: its status, headers and the first ANSWER_BYTES of its body."""

    code: int
    headers: Headers
    body: bytes
    cut: bool = False  # the body went on past what was kept

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def excerpt(self) -> str:
        """The start of the body as one line of printable text, "" if it is empty or encoded."""
        if (self.header(b"content-encoding") or b"identity").strip().lower() != b"identity":
            return ""
        return printable(self.body.decode("utf-8", "replace"))


def printable(text: str, limit: int = EXCERPT_CHARS) -> str:
    """text as one short line of printable ASCII: what an endpoint says, fit for last_error."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


@implementer(IBodyProducer)
class _BytesBody:
    """A request body that is already in memory: written at once."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer) -> defer.Deferred:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _FirstBytes(Protocol):
    """Reads a response body up to `limit` bytes; past them it drops the connection instead of reading on.

    `finished` is called with (the bytes kept, whether the body went on) once
    the body ends, fails, or is cut (a call, not a Deferred: one hop less per
    request). A connection dropped mid-body is not given back to the pool, so
    nothing else ever reads the rest of it.
    """

    def __init__(self, limit: int, finished: Callable[[tuple[bytes, bool]], None]) -> None:
        self.limit = limit
        self.kept: list[bytes] = []
        self.size = 0
        self.finished = finished
        self.done = False

    def _finish(self, kept: tuple[bytes, bool]) -> None:
        self.done = True
        self.finished(kept)

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        room = self.limit - self.size
        if len(data) > room:
            self.kept.append(data[:room])
            self.size = self.limit
            self.stop()
            self._finish((b"".join(self.kept), True))
            return
        self.kept.append(data)
        self.size += len(data)

    def stop(self) -> None:
        """Stop reading: close the connection under this response (it is never reused)."""
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self.done:
            return
        # A body that broke off after the status line still leaves the status:
        # what the endpoint made of the batch. Only a 2xx body would be a loss
        # to us, and we throw bodies away.
        cut = not reason.check(ResponseDone, PotentialDataLoss)
        self._finish((b"".join(self.kept), cut))


class _Exchange:
    """One POST and its answer, bounded as a whole by a timeout (from when it may use a connection)."""

    def __init__(self, agent: DrainAgent, reactor: IReactorTime, limit: int, timeout: float) -> None:
        self.agent = agent
        self.reactor = reactor
        self.limit = limit
        self.timeout = timeout
        self.done: defer.Deferred = defer.Deferred(self._cancel)
        self.pending: defer.Deferred | None = None  # the request, until its headers arrive
        self.body: _FirstBytes | None = None
        self.response = None
        self.phase = "no answer"
        self.over = False  # cancelled or timed out: what comes later is thrown away
        self.started = False
        self.timer = None

    def start(self, target: DrainTarget, headers: Headers, body: bytes) -> defer.Deferred:
        self.started = True
        self.timer = self.reactor.callLater(self.timeout, self._expire)
        self.pending = self.agent.post(target, headers, _BytesBody(body))
        self.pending.addCallbacks(self._answered, self._failed)
        return self.done

    def _answered(self, response) -> None:
        self.pending = None
        self.response = response
        self.body = _FirstBytes(self.limit, self._read)
        self.phase = f"HTTP {response.code}, then a body that did not end"
        response.deliverBody(self.body)
        if self.over:
            self.body.stop()

    def _read(self, kept: tuple[bytes, bool]) -> None:
        if self.over:
            return
        self._finish()
        body, cut = kept
        response = self.response
        self.done.callback(Answer(response.code, response.headers, body, cut))

    def _failed(self, failure: Failure) -> None:
        self.pending = None
        if self.over:
            return
        self._finish()
        self.done.errback(failure)

    def _expire(self) -> None:
        self.over = True
        error = ExchangeTimeout(f"{self.phase} within {self.timeout:g} s")
        self._stop()
        self.done.errback(error)

    def _cancel(self, _: defer.Deferred) -> None:
        # The drain stopped: Deferred.cancel fails self.done with CancelledError.
        self.over = True
        self._finish()
        self._stop()

    def _stop(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
        if self.body is not None:
            self.body.stop()

    def _finish(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class _HostGate:
    """The exchanges with one endpoint host:port: at most `limit` at once, the rest wait in arrival order."""

    __slots__ = ("active", "waiting", "last_end", "check")

    def __init__(self, now: float) -> None:
        self.active = 0
        self.waiting: deque[tuple[_Exchange, DrainTarget, Headers, bytes]] = deque()
        self.last_end = now  # when an exchange last ended (or the gate was made)
        self.check = None  # the stall check, while POSTs wait


class DrainHttpClient:
    """POSTs to untrusted drain endpoints: no redirects, no cookies, no decoding, bounded answers and time.

    `agent` is a bare DrainAgent (with the node's pool and TLS policy): nothing
    wrapped around it follows a Location, keeps a Set-Cookie or inflates a body.
    """

    def __init__(self, agent: DrainAgent, reactor: IReactorTime, answer_bytes: int = ANSWER_BYTES,
                 per_host: int | None = None, stall: float = HOST_STALL) -> None:
        self.agent = agent
        self.reactor = reactor
        self.answer_bytes = answer_bytes
        self.per_host = per_host
        self.stall = stall
        self._gates: dict[object, _HostGate] = {}

    def post(self, target: DrainTarget, headers: Headers, body: bytes, timeout: float) -> defer.Deferred:
        """Fires with the endpoint's Answer, or fails (ExchangeTimeout after `timeout` seconds in all).

        With per_host set, a POST waits for one of that many connections to
        its endpoint's host:port before its timeout starts, unless none of
        them has answered for `stall` seconds. Order among a drain's batches
        is the drain's to keep (one in flight).
        """
        exchange = _Exchange(self.agent, self.reactor, self.answer_bytes, timeout)
        if self.per_host is None:
            return exchange.start(target, headers, body)
        host = target.key
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = _HostGate(self.reactor.seconds())
        if gate.active < self.per_host:
            return self._start(gate, host, exchange, target, headers, body)
        gate.waiting.append((exchange, target, headers, body))
        if gate.check is None:
            gate.check = self.reactor.callLater(
                max(0.0, gate.last_end + self.stall - self.reactor.seconds()), self._stalled, gate, host)
        return exchange.done

    def _stalled(self, gate: _HostGate, host: object) -> None:
        """Let the waiting POSTs of a host that answered nothing for `stall` seconds open connections."""
        gate.check = None
        left = self.stall - (self.reactor.seconds() - gate.last_end)
        if left > 0:
            if gate.waiting:
                gate.check = self.reactor.callLater(left, self._stalled, gate, host)
            return
        waiting, gate.waiting = gate.waiting, deque()
        for exchange, target, headers, body in waiting:
            if not exchange.over:
                self._start(gate, host, exchange, target, headers, body)

    def _start(self, gate: _HostGate, host: object, exchange: _Exchange, target: DrainTarget,
               headers: Headers, body: bytes) -> defer.Deferred:
        gate.active += 1
        # First on the Deferred: the connection goes to the next in line
        # before the drain hears its answer.
        return exchange.start(target, headers, body).addBoth(self._ended, gate, host)

    def _ended(self, result, gate: _HostGate, host: object):
        gate.active -= 1
        gate.last_end = self.reactor.seconds()
        waiting = gate.waiting
        while waiting and gate.active < self.per_host:
            exchange, target, headers, body = waiting.popleft()
            if not exchange.over:  # else cancelled while it waited (its drain stopped)
                self._start(gate, host, exchange, target, headers, body)
        if not gate.active and not waiting:
            if gate.check is not None and gate.check.active():
                gate.check.cancel()
            gate.check = None
            if self._gates.get(host) is gate:
                del self._gates[host]
        return result

    def queued(self, host: object) -> int:
        """POSTs waiting for a connection to this host (a DrainTarget's key)."""
        gate = self._gates.get(host)
        return len(gate.waiting) if gate is not None else 0


def is_certificate_error(failure) -> bool:
    """Whether a connection failure is the receiver's certificate failing verification."""
    if failure.check(DNSLookupError):
        return False  # its text names the "hostname", but no certificate was seen
    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        value = getattr(reason, "value", reason)
        if isinstance(value, SSL.Error):
            return True
        text = str(value).lower()
        if "certificate" in text or "verif" in text or "hostname" in text:
            return True
    return False


def describe(failure, host: str | None = None) -> str:
    if failure.check(DNSLookupError) and resolved_only_private(host):
        return (f"{host} resolves only to addresses that are not public (loopback, private, "
                "link-local, shared or reserved), which this node does not send drains to")
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        return "; ".join(str(getattr(r, "value", r)) for r in reasons)
    return failure.getErrorMessage() or failure.type.__name__


class HttpDrainTransport:
    """Delivers a drain's batches to its HTTP(S) endpoint and says what became of each."""

    def __init__(self, drain: Drain, client: DrainHttpClient, reactor, timeout: float = 30.0) -> None:
        self.drain = drain
        self.client = client
        self.reactor = reactor
        self.timeout = timeout
        parts = urlsplit(drain.url)
        headers = {
            b"Content-Type": [b"application/logplex-1"],
            b"Logplex-Drain-Token": [drain.token.encode()],
            b"User-Agent": [b"Logplex/" + __version__.encode()],
            # Whatever the endpoint does with it, an answer is never inflated here.
            b"Accept-Encoding": [b"identity"],
        }
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(credentials)]
        # The query string is kept; the user:password goes into the header only.
        netloc = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        # The API takes printable ASCII only; a URL stored otherwise is percent-encoded.
        self.url = quote(url, safe="/:?#[]@!$&'()*+,;=%~").encode("ascii")
        self.host = parts.hostname
        # Parsed and encoded once; it also says which connections the drain
        # shares: those of every drain on the same host:port.
        self.target = DrainTarget.of(self.url, headers)
        self.host_key = self.target.key
        # The worker has one batch in flight at a time.
        self._pending: defer.Deferred | None = None
        self._stopping = False

    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred:
        body, count = http_body(messages)
        if not count:
            return defer.succeed(Outcome.ok())
        target = self.target
        d = self._pending = self.client.post(target, target.request_headers(count, frame_id), body,
                                             self.timeout)
        return d.addCallbacks(self._classify, self._failed)

    def _classify(self, answer: Answer) -> Outcome:
        self._pending = None
        code = answer.code
        if 200 <= code < 300:
            return Outcome.ok()
        error = f"HTTP {code} from the drain endpoint"
        if 300 <= code < 400:
            # Following it would send the batch (and the drain token) where
            # the drain does not point, past the address checks.
            location = printable((answer.header(b"location") or b"").decode("latin-1"))
            error += (": redirects are not followed; point the drain at the URL it redirects to"
                      + (f" ({location})" if location else ""))
            return Outcome.retry_later(error)
        excerpt = answer.excerpt()
        if excerpt:
            error += f": {excerpt}"
        if code in RETRY_STATUSES or code >= 500:
            retry_after = parse_retry_after(answer.header(b"retry-after"), self.reactor.seconds())
            return Outcome.retry_later(error, retry_after)
        return Outcome.rejected(error)

    def _failed(self, failure) -> Outcome:
        self._pending = None
        if failure.check(defer.CancelledError) and self._stopping:
            return Outcome.retry_later("stopped")
        if failure.check(ExchangeTimeout):
            return Outcome.retry_later(str(failure.value))
        if is_certificate_error(failure):
            return Outcome.retry_later(describe(failure, self.host), certificate_error=True)
        return Outcome.retry_later(describe(failure, self.host))

    def stop(self) -> defer.Deferred:
        self._stopping = True
        if self._pending is not None:
            self._pending.cancel()
        return defer.succeed(None)
