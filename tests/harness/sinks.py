"""The HTTP sinks of the harness: HttpSink, an HTTP(S) drain endpoint in the reactor that records
what arrives and misbehaves on command, and ThreadSink, a plain one in a thread for blocking tests.
The syslog sink (tests.harness.syslog_sink) shares the waiting and stopping parts of this module.

Both Twisted sinks listen on a free port of 127.0.0.1, and ``stop()`` aborts every
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
import http.server
import re
import threading
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

from tests.harness.certs import Issued, server_context

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


class Waiters:
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


class Connections:
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

    def all_closed(self) -> defer.Deferred:
        """Fires once no connection is open (at once if none is)."""
        if not self.open:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._all_lost.append(d)
        return d

    def abort_all(self) -> defer.Deferred:
        """Abort every open connection; fires once each has seen connectionLost."""
        d = self.all_closed()
        for protocol in list(self.open):
            protocol.transport.abortConnection()
        return d


async def listen_loopback(reactor: Any, factory: Factory, tls: Issued | None) -> IListeningPort:
    if tls is None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    else:
        endpoint = SSL4ServerEndpoint(reactor, 0, server_context(tls), interface="127.0.0.1")
    return await endpoint.listen(factory)


def default_reactor() -> Any:
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
        self.connections = Connections()

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
        self._reactor = reactor if reactor is not None else default_reactor()
        self._tls = tls
        self._path = path
        self._site = _SinkSite(_Everything(self._receive), self._reactor)
        self._port: IListeningPort | None = None
        self._requests: list[ReceivedRequest] = []
        self._standing = Behaviour("ok")
        self._queued: collections.deque[Behaviour] = collections.deque()
        self._late_answers: set[Any] = set()
        self._waiters = Waiters(self._reactor, lambda: len(self.messages()), self._summary)
        self._attempt_waiters = Waiters(self._reactor, lambda: self.attempts, self._summary)

    # -- lifecycle

    def start(self) -> defer.Deferred:
        """Listen on a free port; fires with this sink."""
        async def listen() -> HttpSink:
            self._port = await listen_loopback(self._reactor, self._site, self._tls)
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


# --- HTTP, blocking ----------------------------------------------------------

class ThreadSink:
    """An HTTP drain endpoint in a thread, for the plain (not trial) tests: 503 while `failing`, else
    it keeps every logplex-1 line."""

    def __init__(self, failing: bool = False) -> None:
        self.lines: list[bytes] = []
        self.failing = failing
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = 503 if sink.failing else 200
                if not sink.failing:
                    sink.lines.extend(split_logplex_body(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/logs"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def texts(self) -> list[str]:
        return [line.decode().rsplit(" - ", 1)[-1].strip() for line in list(self.lines)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
