"""One POST to a drain endpoint and its answer, lean and bounded: the request/response half of HTTP drains.

What can be done once per drain is done once (DrainTarget): the URL is
parsed, its endpoint key computed, and the request's head, up to the three
headers each batch sets, encoded when the drain starts. A POST is then one
transport write of head and body on a connection of the node's own
(DrainConnection), whose answer logplex.drains.http1's AnswerParser reads.
Idle connections are kept per (scheme, host, port) by DrainConnections, which
connects through the endpoints it is given (logplex.drains.http's
DrainEndpoints: the address checks and TLS policy, per connection).

This is below twisted.web's Agent on purpose: Agent's pool, parser and
chain of Deferreds cost several times a bare protocol per POST, and a node
makes thousands of POSTs a second. Being our own, the client follows no
redirect, keeps no cookie and decodes no body: it has no code that could.

An answer is read as hostile: at most ANSWER_BYTES of its body are kept
(past them the connection is dropped, never read on nor reused), at most
ANSWER_WIRE_BYTES of the rest, one timeout bounds the whole exchange, and the
POSTs to one host:port share at most a few connections (DrainHttpClient),
unless that host stalls.

A connection is reused only after a whole answer that allows it (keep-alive,
length-delimited, not cut, nothing after it); bytes that arrive while it is
idle drop it. Nothing is retried here: a POST on a kept connection that the
endpoint closed before answering fails, and the drain retries it under the
same frame id, since the endpoint may have taken the batch before closing.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import URI

from logplex.drains.http1 import ANSWER_BYTES, ANSWER_WIRE_BYTES, Answer, AnswerError, AnswerParser

# A host whose connections all went this long without an answer is stalled
# (one tenant's slow path, a hung load balancer): the POSTs waiting for it
# then get connections of their own, as each drain had before they shared,
# so that a few hung drains of a host do not hold up all its others.
HOST_STALL = 1.0
# Connections open at once to one endpoint host:port, shared by all its
# drains (each drain has one batch in flight; the others queue for a
# connection), and as many kept idle. At 1,000 drains of one host, one
# connection each would be 1,000 sockets, and a pool would keep few of them:
# a connect per POST.
HOST_CONNECTIONS = 16
# How long a connection is kept idle for a next POST.
IDLE_TIMEOUT = 120.0


def _clean(value: bytes) -> bytes:
    # A CR, LF or NUL would end the header early (header injection): a space instead, as Twisted does.
    return value.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\x00", b" ")


@attrs.frozen
class DrainTarget:
    """Where a drain POSTs, worked out once per drain: its URL, parsed, and what every request to it shares."""

    url: bytes
    # The request line's target.
    path: bytes
    # (scheme, host, port): the pool's key, and the key of the host's connection gate.
    key: tuple[bytes, bytes, int]
    # The request line and every header but the three each batch sets, Host included, encoded.
    head: bytes

    @classmethod
    def of(cls, url: bytes, headers: dict[bytes, list[bytes]]) -> DrainTarget:
        uri = URI.fromBytes(url)
        host = b"[" + uri.host + b"]" if b":" in uri.host else uri.host
        if (uri.scheme, uri.port) not in ((b"http", 80), (b"https", 443)):
            host += b":%d" % uri.port
        lines = [b"POST %s HTTP/1.1\r\nHost: %s\r\n" % (_clean(uri.originForm), _clean(host))]
        lines += [b"%s: %s\r\n" % (_clean(name), _clean(value)) for name, values in headers.items()
                  for value in values]
        return cls(url, uri.originForm, (uri.scheme, uri.host, uri.port), b"".join(lines))

    def request(self, body: bytes, count: int, frame_id: str) -> bytes:
        """One batch's POST, whole: the drain's head, the body's length, count and frame id, and the body."""
        return b"%sContent-Length: %d\r\nLogplex-Msg-Count: %d\r\nLogplex-Frame-Id: %s\r\n\r\n%s" % (
            self.head, len(body), count, _clean(frame_id.encode("ascii")), body)


class ExchangeTimeout(Exception):
    """A drain endpoint did not complete its answer within --http-drain-timeout."""


class ClosedBeforeAnswer(Exception):
    """The endpoint closed the connection before the status line of its answer."""


class DrainConnection(Protocol):
    """One connection to a drain endpoint: one request at a time, its answer read by an AnswerParser.

    Its states: busy (`exchange` set: a request written, its answer being
    read), idle (in its pool, no exchange), or closed (lost, or dropped by
    us: never used again).
    """

    def __init__(self, pool: DrainConnections, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key
        self.exchange: _Exchange | None = None
        self.parser: AnswerParser | None = None
        self.idle_since = 0.0
        self.closed = False

    def connectionMade(self) -> None:
        # A request is written whole, then nothing until its answer: Nagle's
        # algorithm gains nothing here and holds the last part of a large body
        # until the endpoint acknowledges the rest, which a delayed ACK puts
        # off by up to 40 ms (Linux). 1 MiB POSTs on loopback took 21 ms.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)  # TLS passes it on to TCP
        if no_delay is not None:
            no_delay(True)

    def send(self, exchange: _Exchange, request: bytes) -> None:
        self.exchange = exchange
        exchange.connection = self
        self.parser = AnswerParser(self.pool.wire_limit, self.pool.body_limit)
        self.transport.write(request)

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes nobody asked for (after a whole answer, or while idle):
            # whatever the endpoint meant, the connection is out of step.
            self.drop()
            return
        try:
            answer = self.parser.feed(data)
        except AnswerError as e:
            self.exchange = None
            self.drop()
            exchange.failed(Failure(e))
            return
        if answer is not None:
            self.exchange = None
            if self.parser.reusable:
                # Back in the pool before the drain hears its answer: the
                # next POST waiting for this host takes this connection.
                self.pool.release(self)
            else:
                self.drop()
            exchange.answered(answer)

    def connectionLost(self, reason: Failure = None) -> None:
        self.closed = True
        self.pool.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        answer = self.parser.eof()
        if answer is not None:
            exchange.answered(answer)
        elif reason is not None and reason.check(ConnectionDone):
            exchange.failed(Failure(ClosedBeforeAnswer(
                "the endpoint closed the connection before answering")))
        else:
            exchange.failed(reason)

    def drop(self) -> None:
        """Close at once, unread (over TLS too, without waiting on the peer); never reused."""
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            self.transport.abortConnection()


class _Connect(Factory):
    noisy = False  # a line per connection in the node's log otherwise (TLS starts its wrapped factory)

    def __init__(self, pool: DrainConnections, key: tuple[bytes, bytes, int]) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr) -> DrainConnection:
        return DrainConnection(self.pool, self.key)


class DrainConnections:
    """The node's connections to drain endpoints, up to `kept` idle ones per (scheme, host, port).

    `endpoints.endpoint(key)` gives what a new connection is made through.
    One timer, from `timers` (the drains' DrainTicker), closes the connections
    idle for `idle_timeout`, and runs only while some are.
    """

    def __init__(self, endpoints, timers: IReactorTime, kept: int = HOST_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT, wire_limit: int = ANSWER_WIRE_BYTES,
                 body_limit: int = ANSWER_BYTES) -> None:
        self.endpoints = endpoints
        self.timers = timers
        self.kept = kept
        self.idle_timeout = idle_timeout
        self.wire_limit = wire_limit
        self.body_limit = body_limit
        self._idle: dict[tuple[bytes, bytes, int], list[DrainConnection]] = {}
        self._sweep_call = None

    def send(self, target: DrainTarget, exchange: _Exchange, request: bytes) -> None:
        """Write `request` on an idle connection to the target's host, or on a new one; no retry."""
        idle = self._idle.get(target.key)
        if idle:
            connection = idle.pop()  # the last used: the others may idle out
            if not idle:
                del self._idle[target.key]
            connection.send(exchange, request)
            return
        try:
            endpoint = self.endpoints.endpoint(target.key)
        except Exception:
            exchange.failed(Failure())
            return
        d = exchange.connecting = endpoint.connect(_Connect(self, target.key))
        d.addCallbacks(self._connected, exchange.failed, callbackArgs=(exchange, request))

    def _connected(self, connection: DrainConnection, exchange: _Exchange, request: bytes) -> None:
        exchange.connecting = None
        if exchange.over:  # cannot be, bar a connect that ignored its cancel: nothing to send
            connection.drop()
            return
        connection.send(exchange, request)

    def release(self, connection: DrainConnection) -> None:
        """Keep a connection whose answer was whole for the next POST to its host."""
        idle = self._idle.setdefault(connection.key, [])
        connection.idle_since = self.timers.seconds()
        idle.append(connection)
        if len(idle) > self.kept:
            idle[0].drop()  # the longest idle
        if self._sweep_call is None:
            self._sweep_call = self.timers.callLater(self.idle_timeout, self._sweep)

    def forget(self, connection: DrainConnection) -> None:
        """A connection closed: no longer kept."""
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)
            if not idle:
                del self._idle[connection.key]
                if not self._idle and self._sweep_call is not None:
                    self._sweep_call.cancel()
                    self._sweep_call = None

    def idle(self, key: tuple[bytes, bytes, int]) -> int:
        """Connections kept idle to this host (a DrainTarget's key)."""
        return len(self._idle.get(key, ()))

    def _sweep(self) -> None:
        self._sweep_call = None
        now = self.timers.seconds()
        expired = [c for idle in self._idle.values() for c in idle if now - c.idle_since >= self.idle_timeout]
        for connection in expired:
            connection.drop()
        if self._idle and self._sweep_call is None:
            oldest = min(c.idle_since for idle in self._idle.values() for c in idle)
            self._sweep_call = self.timers.callLater(oldest + self.idle_timeout - now, self._sweep)


class _Exchange:
    """One POST and its answer, bounded as a whole by a timeout (from when it may use a connection)."""

    __slots__ = ("connections", "reactor", "timeout", "done", "connecting", "connection", "over", "timer",
                 "ended")

    def __init__(self, connections: DrainConnections, reactor: IReactorTime, timeout: float) -> None:
        self.connections = connections
        self.reactor = reactor
        self.timeout = timeout
        self.done: defer.Deferred = defer.Deferred(self._cancel)
        self.connecting: defer.Deferred | None = None  # until connected
        self.connection: DrainConnection | None = None  # from the request's write to its answer
        self.over = False  # answered, failed, cancelled or timed out: what comes later is thrown away
        self.timer = None
        # Called once when the exchange ends, before `done` fires: its host
        # gate's place goes to the next POST in line even if a callback on
        # `done` (added while the POST waited) returns an unfired Deferred.
        self.ended: Callable[[], None] | None = None

    def start(self, target: DrainTarget, request: bytes) -> defer.Deferred:
        self.timer = self.reactor.callLater(self.timeout, self._expire)
        self.connections.send(target, self, request)
        return self.done

    def answered(self, answer: Answer) -> None:
        self.connection = None
        if not self.over:
            self._end()
            self.done.callback(answer)

    def failed(self, failure: Failure) -> None:
        self.connection = self.connecting = None
        if not self.over:
            self._end()
            self.done.errback(failure)

    def _expire(self) -> None:
        self.timer = None
        connection = self.connection
        code = connection.parser.code if connection is not None else 0
        phase = f"HTTP {code}, then a body that did not end" if code else "no answer"
        self._abandon()
        self._end()
        self.done.errback(ExchangeTimeout(f"{phase} within {self.timeout:g} s"))

    def _cancel(self, _: defer.Deferred) -> None:
        # The drain stopped: Deferred.cancel fails self.done with CancelledError.
        self._abandon()
        self._end()

    def _end(self) -> None:
        self.over = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ended, self.ended = self.ended, None
        if ended is not None:
            ended()

    def _abandon(self) -> None:
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.exchange = None
            connection.drop()


class _HostGate:
    """The exchanges with one endpoint host:port: at most `limit` at once, the rest wait in arrival order."""

    __slots__ = ("active", "waiting", "last_end", "check")

    def __init__(self, now: float) -> None:
        self.active = 0
        self.waiting: deque[tuple[_Exchange, DrainTarget, bytes]] = deque()
        self.last_end = now  # when an exchange last ended (or the gate was made)
        self.check = None  # the stall check, while POSTs wait


class DrainHttpClient:
    """POSTs to untrusted drain endpoints: no redirects, no cookies, no decoding, bounded answers and time.

    `connections` is the node's DrainConnections (its endpoints carry the
    address checks and TLS policy); `reactor` times the exchanges (the
    drains' DrainTicker in a node).
    """

    def __init__(self, connections: DrainConnections, reactor: IReactorTime,
                 per_host: int | None = None, stall: float = HOST_STALL) -> None:
        self.connections = connections
        self.reactor = reactor
        self.per_host = per_host
        self.stall = stall
        self._gates: dict[object, _HostGate] = {}

    def post(self, target: DrainTarget, request: bytes, timeout: float) -> defer.Deferred:
        """Fires with the endpoint's Answer, or fails (ExchangeTimeout after `timeout` seconds in all).

        With per_host set, a POST waits for one of that many connections to
        its endpoint's host:port before its timeout starts, unless none of
        them has answered for `stall` seconds. Order among a drain's batches
        is the drain's to keep (one in flight).
        """
        exchange = _Exchange(self.connections, self.reactor, timeout)
        if self.per_host is None:
            return exchange.start(target, request)
        host = target.key
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = _HostGate(self.reactor.seconds())
        if gate.active < self.per_host:
            return self._start(gate, host, exchange, target, request)
        gate.waiting.append((exchange, target, request))
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
        for exchange, target, request in waiting:
            if not exchange.over:
                self._start(gate, host, exchange, target, request)

    def _start(self, gate: _HostGate, host: object, exchange: _Exchange, target: DrainTarget,
               request: bytes) -> defer.Deferred:
        gate.active += 1
        # Not a callback on the exchange's Deferred: one added after the
        # drain's own (a POST that waited) would run only after them, and
        # not at all while one of them waits on a Deferred of its own.
        exchange.ended = lambda: self._ended(gate, host)
        return exchange.start(target, request)

    def _ended(self, gate: _HostGate, host: object) -> None:
        gate.active -= 1
        gate.last_end = self.reactor.seconds()
        waiting = gate.waiting
        while waiting and gate.active < self.per_host:
            exchange, target, request = waiting.popleft()
            if not exchange.over:  # else cancelled while it waited (its drain stopped)
                self._start(gate, host, exchange, target, request)
        if not gate.active and not waiting:
            if gate.check is not None and gate.check.active():
                gate.check.cancel()
            gate.check = None
            if self._gates.get(host) is gate:
                del self._gates[host]

    def queued(self, host: object) -> int:
        """POSTs waiting for a connection to this host (a DrainTarget's key)."""
        gate = self._gates.get(host)
        return len(gate.waiting) if gate is not None else 0
