"""The syslog sink of the harness: a TCP/TLS endpoint on a free loopback port that records each
frame (octet-counted or LF-terminated) by connection; ``stop()`` aborts every connection.

    sink = SyslogSink()
    await sink.start()
    self.addCleanup(sink.stop)
    ... point a drain at sink.url ...
    await sink.wait_for(3)
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.harness.certs import Issued
from tests.harness.sinks import StreamFrames, Connections, default_reactor, listen_loopback, Waiters


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
        self._reactor = reactor if reactor is not None else default_reactor()
        self._tls = tls
        self._port: IListeningPort | None = None
        self._connections = Connections()
        self._frames: list[bytes] = []
        self._by_connection: list[list[bytes]] = []
        self._waiters = Waiters(self._reactor, lambda: len(self._frames), self._summary)

    def start(self) -> defer.Deferred:
        """Listen on a free port; fires with this sink."""
        async def listen() -> SyslogSink:
            self._port = await listen_loopback(self._reactor, _SyslogFactory(self), self._tls)
            return self
        return defer.Deferred.fromCoroutine(listen())

    def stop(self) -> defer.Deferred:
        """Stop listening and abort every connection; fires when all are gone."""
        self._waiters.fail_all(TimeoutError(f"the sink stopped first: {self._summary()}"))
        port, self._port = self._port, None
        stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
        return defer.gatherResults([stopped, self._connections.abort_all()],
                                   consumeErrors=True).addCallback(lambda _: None)

    def all_closed(self, timeout: float = 5.0) -> defer.Deferred:
        """Fires once the clients closed every connection; TimeoutError after ``timeout`` s."""
        return self._connections.all_closed().addTimeout(timeout, self._reactor)

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
