"""Listening sockets: how a listener's endpoint description becomes the endpoint the node listens on.

`ApiUrl` makes the API's public URL from its listener's bound address when
no --api-url is given. Every listener (API, /logs, syslog, the admin shell; in one process or
under --workers) goes through `server_endpoint`, so each gets:

- a deeper accept queue than Twisted's default of 50. When a node
  restarts, every sender of a busy cluster reconnects within a second or
  two; with a queue of 50 the rest of their SYNs are dropped and retried
  seconds later. An explicit `backlog=` in a description wins; the kernel
  caps the figure at net.core.somaxconn.
- for `ssl:`, the node's TLS policy (logplex.tls): TLS 1.2+, forward-secret
  AEAD suites, ALPN that reaches the real factory.
- for `haproxy:` in front of any of them, the PROXY protocol (v1 and v2,
  Twisted's parser): the client address the header reports is what the node
  sees (logs, login throttles). In front of `ssl:` the header comes first, in
  the clear, as a load balancer in TCP mode sends it (HAProxy's send-proxy),
  then the TLS handshake.
"""

from __future__ import annotations

import re
import socket
from typing import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory  # proxyEndpoint's own factory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from logplex.errors import StartFailed
from logplex.tls import ServerTLS

log = Logger()

LISTEN_BACKLOG = 1024
_TYPES_WITH_BACKLOG = ("tcp", "tcp6", "ssl", "unix")
# Fields are separated by colons; a backslash escapes one (as in "\:\:1").
_FIELD_SEPARATOR = re.compile(r"(?<!\\):")


def description_fields(description: str) -> tuple[str, list[str]]:
    """(endpoint type in lower case, the other fields as written) of an endpoint description."""
    fields = _FIELD_SEPARATOR.split(description)
    return fields[0].lower(), fields[1:]


def has_argument(description: str, name: str) -> bool:
    """Whether the description gives the keyword argument name= (keywords are case-sensitive in Twisted)."""
    return any(field.startswith(name + "=") for field in description_fields(description)[1])


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """The endpoint description with backlog= added where the type takes one and none is given."""
    kind, _ = description_fields(description)
    if kind in _TYPES_WITH_BACKLOG and not has_argument(description, "backlog"):
        return f"{description}:backlog={backlog}"
    return description


def normalised(description: str) -> str:
    """The description with its type in lower case: Twisted finds "TCP6:" (a plugin) but not "TCP:" or "SSL:"."""
    kind, fields = description_fields(description)
    return ":".join([kind, *fields])


def proxied(description: str) -> tuple[bool, str]:
    """(whether the description asks for the PROXY protocol, the description of the listener behind it)."""
    kind, fields = description_fields(description)
    if kind == "haproxy":
        return True, ":".join(fields)
    return False, description


def behind_proxy(factory, context=None):
    """factory as a PROXY-protocol listener serves it: the header first, then TLS (with context), then factory."""
    if context is not None:
        factory = TLSMemoryBIOFactory(context, False, factory)
    return HAProxyWrappingFactory(factory)


@implementer(IStreamServerEndpoint)
class ProxiedEndpoint:
    """A listener behind a load balancer that speaks the PROXY protocol (v1 or v2)."""

    def __init__(self, reactor, inner: IStreamServerEndpoint) -> None:
        self.reactor = reactor
        self.inner = inner

    def listen(self, factory):
        if isinstance(self.inner, SSL4ServerEndpoint):
            # The header precedes the handshake: listen in the clear, then TLS.
            tcp = TCP4ServerEndpoint(self.reactor, self.inner._port, self.inner._backlog, self.inner._interface)
            return tcp.listen(behind_proxy(factory, self.inner._sslContextFactory))
        return self.inner.listen(behind_proxy(factory))


def server_endpoint(reactor, description: str) -> IStreamServerEndpoint:
    """The endpoint a listener description names, with the node's accept queue and TLS policy."""
    is_proxied, inner = proxied(description)
    if is_proxied:
        return ProxiedEndpoint(reactor, server_endpoint(reactor, inner))
    endpoint = serverFromString(reactor, with_backlog(normalised(description)))
    if isinstance(endpoint, SSL4ServerEndpoint):
        # Twisted parsed the key, certificate, chain and DH parameters into
        # CertificateOptions; the same material is served under our policy.
        # (SSL4ServerEndpoint keeps them in _sslContextFactory, its only
        # store for them; tests/test_listen.py notices if that changes.)
        endpoint._sslContextFactory = ServerTLS(endpoint._sslContextFactory)
    return endpoint


@implementer(IStreamServerEndpoint)
class _Reporting:
    """An endpoint that tells its Listener what listening gave: the port, or why it could not."""

    def __init__(self, listener: Listener, inner: IStreamServerEndpoint) -> None:
        self.listener = listener
        self.inner = inner

    def listen(self, factory):
        return defer.maybeDeferred(self.inner.listen, factory).addCallbacks(
            self.listener._bound, self.listener._refused)


class Listener(StreamServerEndpointService):
    """One listener of the node (kind "api", "logs", "syslog", ...) as a service: it listens when
    started and stops listening when stopped; `listening()` gives its port, or StartFailed."""

    def __init__(self, kind: str, description: str, endpoint: IStreamServerEndpoint, factory) -> None:
        super().__init__(_Reporting(self, endpoint), factory)
        self.kind = kind
        self.description = description
        self.setName(f"{kind} {description}")
        self.port = None
        self._outcome = None  # the port, or the Failure of listening
        self._waiting: list[defer.Deferred] = []

    def listening(self) -> defer.Deferred:
        """Fires with the listening port once bound; fails with StartFailed if it cannot listen."""
        d = defer.Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            d.callback(self._outcome)
        return d

    def _bound(self, port):
        self.port = port
        self._tell(port)
        return port

    def _refused(self, failure):
        if failure.check(CannotListenError):
            failure = Failure(StartFailed(
                f"The {self.kind} listener cannot listen on {self.description}: "
                f"{failure.value.socketError}. Stop what uses that address, or give the node "
                f"another one (--{self.kind})."))
        self._tell(failure)
        # Told to whoever waits for listening(); the service itself has no port to stop.
        return None

    def _tell(self, outcome) -> None:
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(outcome)


class ApiUrl:
    """The API's public URL: --api-url, or one made from the API listener's address once it is bound."""

    def __init__(self, configured: str | None, description: str, port: Callable[[], object | None]) -> None:
        self.configured = configured
        self.description = description
        self.port = port
        self._made: str | None = None

    def __call__(self) -> str:
        if self.configured:
            return self.configured
        if self._made is None:
            port = self.port()
            if port is None:
                return ""  # not bound yet: what asks now (nothing the boot starts) gets "", as before
            self._made = _default_api_url(self.description, port)
        return self._made


def _default_api_url(description: str, port) -> str:
    host = port.getHost()
    interface = getattr(host, "host", "")
    if interface in ("", "0.0.0.0", "::"):
        # Bound to every interface: the host name is the best guess at a
        # public address, if it resolves at all; --api-url says it exactly.
        interface = _resolvable(socket.gethostname()) or "localhost"
    scheme = "https" if description_fields(description)[0] in ("ssl", "tls") else "http"
    if ":" in interface:
        interface = f"[{interface}]"
    return f"{scheme}://{interface}:{host.port}"


def _resolvable(name: str) -> str | None:
    """name if it resolves to an address, else None (once, at start: a blocking look-up is fine)."""
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        log.warn("api_url_host_unresolvable host={host!r}: session URLs name localhost instead; "
                 "set --api-url to the URL clients reach this node's API at", host=name)
        return None
    return name
