"""One POST to a drain endpoint and its answer, lean and bounded: the request/response half of HTTP drains.

What can be done once per drain is done once (DrainTarget): the URL is
parsed, its endpoint key and Host header computed, and the constant headers
encoded when the drain starts, and each POST goes to DrainAgent.post, which
skips Agent.request's parsing of the URL. The address check stays per
connection: a HostnameEndpoint resolves at every connect.

An answer is read as hostile: at most ANSWER_BYTES of its body are kept, one
timeout bounds the whole exchange, and the POSTs to one host:port share at
most a few connections (DrainHttpClient), unless that host stalls.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, ResponseDone
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

# What is kept of an answer's body: enough for a receiver's error sentence.
ANSWER_BYTES = 4096
# What of it (or of a Location) goes into a drain's last_error.
EXCERPT_CHARS = 200
# A host whose connections all went this long without an answer is stalled
# (one tenant's slow path, a hung load balancer): the POSTs waiting for it
# then get connections of their own, as each drain had before they shared,
# so that a few hung drains of a host do not hold up all its others.
HOST_STALL = 1.0

_UNPRINTABLE = re.compile(r"[^ -~]+")


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
        # (test_drains_http checks the request on the wire).
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
