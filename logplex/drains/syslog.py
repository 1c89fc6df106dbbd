"""Syslog drains over TCP or TLS (RFC 6587 octet counting, RFC 5425): one connection per drain and node."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS, platformTrust
from twisted.python.failure import Failure
from zope.interface import implementer

from logplex.drains.formats import syslog_frames
from logplex.drains.policy import Outcome
from logplex.drains.http import describe, is_certificate_error
from logplex.model import SYSLOG_DEFAULT_PORTS, Drain
from logplex.settings import DrainSettings


class NotReady(Exception):
    pass


@implementer(IHandshakeListener, IPushProducer)
class SyslogDrainProtocol(Protocol):
    """Writable once connected, or, over TLS, once the handshake has verified the peer.

    It is also its own transport's producer: when the receiver stops reading
    and the socket's buffers fill, the transport pauses it, and the drain
    holds its batches (and spools them) instead of piling them up in memory.
    """

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.is_ready = False
        self.paused = False
        self.lost = None
        self._waiting: list[defer.Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def when_ready(self) -> defer.Deferred:
        if self.is_ready:
            return defer.succeed(self)
        if self.lost is not None:
            return defer.fail(self.lost)
        d = defer.Deferred()
        self._waiting.append(d)
        return d

    def _settle(self, reason=None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if reason is None:
                d.callback(self)
            else:
                d.errback(reason)

    def connectionMade(self) -> None:
        # A batch is written whole, each flush of the drain: Nagle's algorithm would hold
        # the tail of a large one until the receiver, which never answers, acknowledges the
        # rest (a delayed ACK: up to 40 ms on Linux), as it did the HTTP drains' bodies.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)  # TLS passes it on to TCP
        if no_delay is not None:
            no_delay(True)
        self.transport.registerProducer(self, True)
        self.factory.connected.add(self)
        if not self.tls:
            self.is_ready = True
            self._settle()

    def handshakeCompleted(self) -> None:
        self.is_ready = True
        self._settle()

    def dataReceived(self, data: bytes) -> None:
        pass  # syslog receivers have nothing to say back

    def connectionLost(self, reason=None) -> None:
        self.factory.connected.discard(self)
        self.is_ready = False
        self.lost = reason
        self._settle(reason)


class SyslogDrainFactory(Factory):
    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.connected: set[SyslogDrainProtocol] = set()

    def buildProtocol(self, addr):
        protocol = SyslogDrainProtocol(self.tls)
        protocol.factory = self
        return protocol

    def let_go(self) -> None:
        """Ready every connection to be closed: none stays its transport's producer.

        A transport closes only once its registered producer is gone (TLS) or
        not paused (TCP): a syslog+tls drain's connection stopped with it
        registered stayed open for good, and the drain's stop never ended.
        """
        for protocol in list(self.connected):
            protocol.transport.unregisterProducer()

    def abort(self) -> None:
        """Close every connection at once, whatever it still buffers."""
        for protocol in list(self.connected):
            protocol.transport.abortConnection()


class SyslogDrainTransport:
    """Writes batches as octet-counted frames; the connection comes and goes on demand.

    TCP syslog has no acknowledgement: a batch counts as delivered once
    written to a verified connection. What a breaking connection still held in
    socket buffers is lost; that is the protocol's limit, not ours to hide.
    """

    def __init__(self, drain: Drain, reactor, settings: DrainSettings, trust_root=None, *,
                 connect_timeout: float = 10.0) -> None:
        self.drain = drain
        self.reactor = reactor
        self.idle_timeout = settings.syslog_idle
        self.connect_timeout = connect_timeout
        self.max_delay = settings.backoff_max
        parts = urlsplit(drain.url)
        self.tls = parts.scheme == "syslog+tls"
        self.host, self.port = parts.hostname, parts.port or SYSLOG_DEFAULT_PORTS[parts.scheme]
        self.token = drain.token.encode()
        self.trust_root = trust_root
        self.service: ClientService | None = None
        self._factory: SyslogDrainFactory | None = None
        self._current: SyslogDrainProtocol | None = None
        self._idle = None

    def _endpoint(self):
        endpoint = HostnameEndpoint(self.reactor, self.host, self.port, timeout=self.connect_timeout)
        if self.tls:
            options = optionsForClientTLS(self.host, trustRoot=self.trust_root or platformTrust())
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _service(self) -> ClientService:
        if self.service is None:
            self._factory = SyslogDrainFactory(self.tls)
            self.service = ClientService(
                self._endpoint(), self._factory,
                retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=self.max_delay),
                clock=self.reactor,
            )
            self.service.startService()
        return self.service

    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred:
        data = syslog_frames(messages, self.token)
        if not data:
            return defer.succeed(Outcome.ok())
        current = self._current
        if current is not None and current.is_ready:
            if current.paused:
                # The receiver is not reading: hold the batch (the worker
                # backs off and spools) rather than buffer without bound.
                return defer.succeed(Outcome.retry_later("the receiver is not reading"))
            # The usual case: connected, verified; no Deferred, no timer.
            current.transport.write(data)
            self._touch()
            return defer.succeed(Outcome.ok())
        d = self._service().whenConnected(failAfterFailures=1)
        d.addCallback(lambda protocol: protocol.when_ready())
        d.addTimeout(self.connect_timeout, self.reactor)

        def write(protocol):
            if not protocol.is_ready:
                return failed(Failure(NotReady("the connection closed before the write")))
            if protocol.paused:
                self._current = protocol
                return Outcome.retry_later("the receiver is not reading")
            protocol.transport.write(data)
            self._current = protocol
            self._touch()
            return Outcome.ok()

        def failed(failure):
            # Start afresh next time: a half-open TLS session must not be reused.
            self._drop_connection(later=True)
            return Outcome.retry_later(describe(failure, self.host),
                                       certificate_error=is_certificate_error(failure))

        return d.addCallbacks(write, failed)

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        else:
            self._idle = self.reactor.callLater(self.idle_timeout, self._drop_connection)

    def _drop_connection(self, later: bool = False) -> defer.Deferred:
        """Forget the connection and stop its service.

        later: called from inside the service's own failure (whenConnected
        failing): stopping it right there is re-entrant, which ClientService
        refuses, and it would go on reconnecting on its own. So it is stopped
        on the next turn of the reactor; the next send starts a new one.
        """
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._current = None
        service, self.service = self.service, None
        if service is None:
            return defer.succeed(None)
        factory = self._factory
        factory.let_go()
        # A connection closes once what it still buffers is written: one whose receiver
        # stopped reading never would, and would hold its socket and buffers for good.
        # So what is still open connect_timeout later is aborted.
        abort = self.reactor.callLater(self.connect_timeout, factory.abort)

        def stopped(result):
            if abort.active():
                abort.cancel()
            return result

        def stop():
            return defer.maybeDeferred(service.stopService).addBoth(stopped)

        if later:
            self.reactor.callLater(0, stop)
            return defer.succeed(None)
        return stop()

    def stop(self) -> defer.Deferred:
        return self._drop_connection()
