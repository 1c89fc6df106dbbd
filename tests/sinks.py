"""Loopback receivers for drain tests: an HTTP(S) and a syslog TCP/TLS endpoint that record what arrives and misbehave on command.

Both listen on a free port of 127.0.0.1, and ``stop()`` aborts every
connection they hold (hung ones too), so a trial reactor is clean after it.

    sink = HttpSink()
    await sink.start()
    self.addCleanup(sink.stop)
    sink.behave("status", code=503, retry_after="1", times=2)  # then back to 204
    ... point a drain at sink.url ...
    await sink.wait_for(3)
    self.assertEqual(sink.messages(), [b"<13>1 ...", ...])

The frame parsers here are deliberately not logplex.framing: a receiver that
shared the sender's parser would agree with its bugs.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tests.certs import Issued, server_context

# Ten digits is a count of up to ~10 GB: longer is not a count.
_COUNT = re.compile(rb"([0-9]{1,10}) ")
# In a stream, digits reaching the end of what has arrived may be a count
# whose space is still on the way.
_STREAM_COUNT = re.compile(rb"([0-9]{1,10})( |\Z)")
_CR, _LF = 13, 10


class FramingError(ValueError):
    """A logplex-1 body is not ``LENGTH SP MESSAGE`` frames back to back."""


def split_logplex_body(body: bytes) -> list[bytes]:
    """The messages of an application/logplex-1 body, byte for byte; raises FramingError."""
    messages = []
    pos = 0
    while pos < len(body):
        count = _COUNT.match(body, pos)
        if count is None:
            raise FramingError(
                f"byte {pos} starts {body[pos:pos + 20]!r}, not 'LENGTH SP'; "
                "a logplex-1 body is octet-counted frames with nothing between them."
            )
        start = count.end()
        end = start + int(count.group(1))
        if end > len(body):
            raise FramingError(
                f"the frame at byte {pos} counts {int(count.group(1))} bytes "
                f"but only {len(body) - start} follow."
            )
        messages.append(body[start:end])
        pos = end
    return messages


class StreamFrames:
    """Splits a syslog TCP stream into messages as it arrives.

    Octet-counted frames (``LENGTH SP MESSAGE``) keep their bytes exactly;
    anything else is a line ending in LF (CRLF too), given without its line
    end. Line ends between frames are skipped.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data
        messages = []
        pos = 0
        while pos < len(buffer):
            if buffer[pos] in (_CR, _LF):
                pos += 1
                continue
            count = _STREAM_COUNT.match(buffer, pos)
            if count is not None:
                if not count.group(2):
                    break
                start = count.end()
                end = start + int(count.group(1))
                if end > len(buffer):
                    break
                messages.append(buffer[start:end])
                pos = end
                continue
            line_end = buffer.find(b"\n", pos)
            if line_end < 0:
                break
            line = buffer[pos:line_end]
            messages.append(line[:-1] if line.endswith(b"\r") else line)
            pos = line_end + 1
        self._buffer = buffer[pos:]
        return messages


class _Waiters:
    """Deferreds waiting for a count to reach a target; fired by ``check()`` after each change."""

    def __init__(self, reactor: IReactorTime, count: Callable[[], int],
                 describe: Callable[[], str]) -> None:
        self._reactor = reactor
        self._count = count
        self._describe = describe
        self._waiting: list[tuple[int, defer.Deferred]] = []

    def wait(self, n: int, timeout: float) -> defer.Deferred:
        if self._count() >= n:
            return defer.succeed(self._count())

        def forget(d: defer.Deferred) -> None:
            self._waiting = [(m, w) for m, w in self._waiting if w is not d]

        def timed_out(result: Any, seconds: float) -> Failure:
            return Failure(TimeoutError(
                f"waited {seconds} s for {n}, got {self._count()}: {self._describe()}"
            ))

        d: defer.Deferred = defer.Deferred(canceller=forget)
        self._waiting.append((n, d))
        d.addTimeout(timeout, self._reactor, onTimeoutCancel=timed_out)
        return d

    def check(self) -> None:
        have = self._count()
        ready = [d for n, d in self._waiting if have >= n]
        self._waiting = [(n, d) for n, d in self._waiting if have < n]
        for d in ready:
            d.callback(have)

    def fail_all(self, reason: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for _, d in waiting:
            d.errback(reason)


class _Connections:
    """The open connections of a sink, so stopping it can abort them and wait for them to go."""

    def __init__(self) -> None:
        self.open: set[Protocol] = set()
        self.total = 0
        self._all_lost: list[defer.Deferred] = []

    def opened(self, protocol: Protocol) -> None:
        self.open.add(protocol)
        self.total += 1

    def lost(self, protocol: Protocol) -> None:
        self.open.discard(protocol)
        if not self.open:
            waiting, self._all_lost = self._all_lost, []
            for d in waiting:
                d.callback(None)

    def abort_all(self) -> defer.Deferred:
        """Abort every open connection; fires once each has seen connectionLost."""
        if not self.open:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._all_lost.append(d)
        for protocol in list(self.open):
            protocol.transport.abortConnection()
        return d


async def _listen(reactor: Any, factory: Factory, tls: Issued | None) -> IListeningPort:
    if tls is None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    else:
        endpoint = SSL4ServerEndpoint(reactor, 0, server_context(tls), interface="127.0.0.1")
    return await endpoint.listen(factory)


def _default_reactor() -> Any:
    from twisted.internet import reactor
    return reactor


# --- HTTP ------------------------------------------------------------------

HTTP_MODES = ("ok", "status", "hang", "close", "slow")


@attrs.frozen
class Behaviour:
    """How an HttpSink answers one request; see HttpSink.behave."""

    mode: str
    code: int = 204
    retry_after: str | None = None
    delay: float = 0.0


@attrs.define(eq=False)
class ReceivedRequest:
    """One request as an HttpSink saw it.

    Header names are lower-case; a repeated header's values are joined with
    ", ". ``frames`` is empty and ``framing_error`` says why when the body
    is not logplex-1. ``status`` is what the sink answered, None while it
    has not (hang, slow) or when it never did (close, client gone first).
    """

    method: bytes
    path: bytes
    query: dict[bytes, list[bytes]]
    headers: dict[bytes, bytes]
    body: bytes
    frames: list[bytes]
    framing_error: str | None
    mode: str
    status: int | None = None

    @property
    def frame_id(self) -> bytes | None:
        return self.headers.get(b"logplex-frame-id")

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _SinkChannel(HTTPChannel):
    site: _SinkSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections.opened(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.site.connections.lost(self)


class _SinkSite(Site):
    # HTTP/1.1 only: tests of drains do not need h2 negotiation.
    protocol = _SinkChannel

    def __init__(self, resource: Resource, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self.connections = _Connections()

    def log(self, request: Request) -> None:
        pass


class _Everything(Resource):
    isLeaf = True

    def __init__(self, receive: Callable[[Request], bytes | int]) -> None:
        super().__init__()
        self._receive = receive

    def render(self, request: Request) -> bytes | int:
        return self._receive(request)


class HttpSink:
    """An HTTP(S) endpoint on 127.0.0.1 that records every request and answers as told.

    Any method and path is accepted; ``url`` names ``path``. With ``tls``
    (an Issued for ``localhost`` and 127.0.0.1) it serves HTTPS and ``url``
    uses the host name ``localhost``.
    """

    def __init__(self, tls: Issued | None = None, reactor: Any = None,
                 path: str = "/logs") -> None:
        self._reactor = reactor if reactor is not None else _default_reactor()
        self._tls = tls
        self._path = path
        self._site = _SinkSite(_Everything(self._receive), self._reactor)
        self._port: IListeningPort | None = None
        self._requests: list[ReceivedRequest] = []
        self._standing = Behaviour("ok")
        self._queued: collections.deque[Behaviour] = collections.deque()
        self._late_answers: set[Any] = set()
        self._waiters = _Waiters(self._reactor, lambda: len(self.messages()), self._summary)
        self._attempt_waiters = _Waiters(self._reactor, lambda: self.attempts, self._summary)

    # -- lifecycle

    def start(self) -> defer.Deferred:
        """Listen on a free port; fires with this sink."""
        async def listen() -> HttpSink:
            self._port = await _listen(self._reactor, self._site, self._tls)
            return self
        return defer.Deferred.fromCoroutine(listen())

    def stop(self) -> defer.Deferred:
        """Stop listening, drop every connection and pending answer; fires when all are gone."""
        for call in list(self._late_answers):
            if call.active():
                call.cancel()
        self._late_answers.clear()
        stopped_first = f"the sink stopped first: {self._summary()}"
        self._waiters.fail_all(TimeoutError(stopped_first))
        self._attempt_waiters.fail_all(TimeoutError(stopped_first))
        port, self._port = self._port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        return defer.gatherResults([stopped, self._site.connections.abort_all()],
                                   consumeErrors=True).addCallback(lambda _: None)

    # -- where and what

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sink is not listening; call start() first.")
        return self._port.getHost().port

    @property
    def url(self) -> str:
        if self._tls is not None:
            return f"https://localhost:{self.port}{self._path}"
        return f"http://127.0.0.1:{self.port}{self._path}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request that arrived, in order, whatever the answer."""
        return list(self._requests)

    @property
    def attempts(self) -> int:
        return len(self._requests)

    @property
    def open_connections(self) -> int:
        return len(self._site.connections.open)

    @property
    def framing_errors(self) -> list[str]:
        return [r.framing_error for r in self._requests if r.framing_error]

    def _accepted_once(self) -> list[ReceivedRequest]:
        # A retried batch carries the same Frame-Id: count its first success.
        seen: set[bytes] = set()
        accepted = []
        for request in self._requests:
            if not request.accepted:
                continue
            frame_id = request.frame_id
            if frame_id is not None:
                if frame_id in seen:
                    continue
                seen.add(frame_id)
            accepted.append(request)
        return accepted

    def messages(self) -> list[bytes]:
        """The messages of accepted (2xx) requests in arrival order, a retried Frame-Id once."""
        return [m for request in self._accepted_once() for m in request.frames]

    @property
    def accepted_frame_ids(self) -> list[bytes]:
        return [r.frame_id for r in self._accepted_once() if r.frame_id is not None]

    def wait_for(self, n_messages: int, timeout: float = 5.0) -> defer.Deferred:
        """Fires with the count once messages() has ``n_messages``; TimeoutError after ``timeout`` s."""
        return self._waiters.wait(n_messages, timeout)

    def wait_for_attempts(self, n: int, timeout: float = 5.0) -> defer.Deferred:
        """Fires once ``n`` requests arrived, whatever their answer (to see a retry or a hang)."""
        return self._attempt_waiters.wait(n, timeout)

    def _summary(self) -> str:
        statuses = [r.status if r.status is not None else r.mode for r in self._requests]
        return (f"{len(self.messages())} messages accepted from {self.attempts} requests "
                f"(answers: {statuses})")

    # -- behaviour

    def behave(self, mode: str, *, times: int | None = None, code: int | None = None,
               retry_after: str | int | None = None, delay: float | None = None) -> None:
        """Answer the next requests this way.

        ``"ok"``: 204. ``"status"``: ``code``, with a Retry-After of
        ``retry_after`` if given. ``"hang"``: never answer, holding the
        connection. ``"close"``: drop the connection without answering.
        ``"slow"``: answer ``code`` (204) after ``delay`` seconds.

        Without ``times`` this replaces how every later request is answered
        (and forgets queued ones); with it, only the next ``times`` requests
        (after any already queued) are answered so, then the standing
        behaviour resumes.
        """
        behaviour = _behaviour(mode, code, retry_after, delay)
        if times is None:
            self._standing = behaviour
            self._queued.clear()
        else:
            if times < 1:
                raise ValueError(
                    f"times={times} would change nothing; give 1 or more, or leave it out.")
            self._queued.extend([behaviour] * times)

    # -- the server side

    def _receive(self, request: Request) -> bytes | int:
        body = request.content.read()
        try:
            frames, error = split_logplex_body(body), None
        except FramingError as e:
            frames, error = [], str(e)
        behaviour = self._queued.popleft() if self._queued else self._standing
        received = ReceivedRequest(
            method=request.method,
            path=request.path,
            query={k: list(v) for k, v in request.args.items()},
            headers={
                name.lower(): b", ".join(values)
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            body=body,
            frames=frames,
            framing_error=error,
            mode=behaviour.mode,
        )
        self._requests.append(received)
        self._attempt_waiters.check()

        if behaviour.mode in ("ok", "status"):
            return self._answer(request, received, behaviour)
        if behaviour.mode == "close":
            request.channel.transport.abortConnection()
        elif behaviour.mode == "slow":
            self._answer_later(request, received, behaviour)
        # "hang" holds the request until the client gives up or stop() aborts it.
        return NOT_DONE_YET

    def _answer(self, request: Request, received: ReceivedRequest, behaviour: Behaviour) -> bytes:
        request.setResponseCode(behaviour.code)
        if behaviour.retry_after is not None:
            request.setHeader(b"retry-after", behaviour.retry_after.encode("ascii"))
        received.status = behaviour.code
        if received.accepted:
            if received.framing_error:
                self._waiters.fail_all(AssertionError(
                    f"the sink accepted a body that is not logplex-1: {received.framing_error}"))
            self._waiters.check()
        if behaviour.code in (204, 304) or behaviour.code < 200:
            return b""
        return b"sink answered %d\n" % behaviour.code

    def _answer_later(self, request: Request, received: ReceivedRequest,
                      behaviour: Behaviour) -> None:
        def answer() -> None:
            self._late_answers.discard(call)
            request.write(self._answer(request, received, behaviour))
            request.finish()

        def client_gone(reason: Failure) -> None:
            # Not accepted: the client never saw an answer.
            if call.active():
                call.cancel()
            self._late_answers.discard(call)

        call = self._reactor.callLater(behaviour.delay, answer)
        self._late_answers.add(call)
        request.notifyFinish().addErrback(client_gone)


def _behaviour(mode: str, code: int | None, retry_after: str | int | None,
               delay: float | None) -> Behaviour:
    if mode not in HTTP_MODES:
        raise ValueError(f"unknown sink mode {mode!r}; use one of {', '.join(HTTP_MODES)}.")
    if mode == "status" and code is None:
        raise ValueError('behave("status") needs code=, e.g. code=503.')
    if mode == "slow" and delay is None:
        raise ValueError('behave("slow") needs delay= in seconds.')
    if code is not None and mode not in ("status", "slow"):
        raise ValueError(f'code= applies to "status" and "slow", not {mode!r}.')
    if retry_after is not None and mode != "status":
        raise ValueError(f'retry_after= applies to "status", not {mode!r}.')
    if delay is not None and mode != "slow":
        raise ValueError(f'delay= applies to "slow", not {mode!r}.')
    if code is not None and not 100 <= code <= 599:
        raise ValueError(f"code={code} is not an HTTP status; give 100 to 599.")
    return Behaviour(
        mode=mode,
        code=code if code is not None else 204,
        retry_after=str(retry_after) if retry_after is not None else None,
        delay=float(delay or 0.0),
    )


# --- syslog ----------------------------------------------------------------


class _SyslogConnection(Protocol):
    def __init__(self, sink: SyslogSink) -> None:
        self._sink = sink
        self._frames = StreamFrames()
        self._received: list[bytes] = []

    def connectionMade(self) -> None:
        self._sink._connected(self, self._received)

    def dataReceived(self, data: bytes) -> None:
        frames = self._frames.feed(data)
        if frames:
            self._received.extend(frames)
            self._sink._arrived(frames)

    def connectionLost(self, reason: Failure = None) -> None:
        self._sink._connections.lost(self)


class _SyslogFactory(Factory):
    def __init__(self, sink: SyslogSink) -> None:
        self._sink = sink

    def buildProtocol(self, addr: Any) -> _SyslogConnection:
        return _SyslogConnection(self._sink)


class SyslogSink:
    """A syslog TCP (or, with ``tls``, TLS) endpoint on 127.0.0.1 that records each frame.

    Frames may be octet-counted or LF-terminated lines. With ``tls`` (an
    Issued for ``localhost``) ``url`` is ``syslog+tls://localhost:PORT``.
    """

    def __init__(self, tls: Issued | None = None, reactor: Any = None) -> None:
        self._reactor = reactor if reactor is not None else _default_reactor()
        self._tls = tls
        self._port: IListeningPort | None = None
        self._connections = _Connections()
        self._frames: list[bytes] = []
        self._by_connection: list[list[bytes]] = []
        self._waiters = _Waiters(self._reactor, lambda: len(self._frames), self._summary)

    def start(self) -> defer.Deferred:
        """Listen on a free port; fires with this sink."""
        async def listen() -> SyslogSink:
            self._port = await _listen(self._reactor, _SyslogFactory(self), self._tls)
            return self
        return defer.Deferred.fromCoroutine(listen())

    def stop(self) -> defer.Deferred:
        """Stop listening and abort every connection; fires when all are gone."""
        self._waiters.fail_all(TimeoutError(f"the sink stopped first: {self._summary()}"))
        port, self._port = self._port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        return defer.gatherResults([stopped, self._connections.abort_all()],
                                   consumeErrors=True).addCallback(lambda _: None)

    def close_all(self) -> defer.Deferred:
        """Abort every client connection, as a restarting receiver would; keeps listening."""
        return self._connections.abort_all()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sink is not listening; call start() first.")
        return self._port.getHost().port

    @property
    def url(self) -> str:
        if self._tls is not None:
            return f"syslog+tls://localhost:{self.port}"
        return f"syslog://127.0.0.1:{self.port}"

    @property
    def frames(self) -> list[bytes]:
        """Every message from every connection, in arrival order."""
        return list(self._frames)

    @property
    def frames_by_connection(self) -> list[list[bytes]]:
        """The messages of each connection ever accepted, in the order they connected."""
        return [list(frames) for frames in self._by_connection]

    @property
    def connections(self) -> int:
        """How many connections were ever accepted (TLS ones count before their handshake)."""
        return self._connections.total

    @property
    def open_connections(self) -> int:
        return len(self._connections.open)

    def wait_for(self, n: int, timeout: float = 5.0) -> defer.Deferred:
        """Fires with the count once ``n`` frames arrived; TimeoutError after ``timeout`` s."""
        return self._waiters.wait(n, timeout)

    def _summary(self) -> str:
        return (f"{len(self._frames)} frames over {self.connections} connections, "
                f"{self.open_connections} open")

    def _connected(self, protocol: Protocol, frames: list[bytes]) -> None:
        self._connections.opened(protocol)
        self._by_connection.append(frames)

    def _arrived(self, frames: list[bytes]) -> None:
        self._frames.extend(frames)
        self._waiters.check()
