"""Drain connections only to public addresses, whatever a drain's host name resolves to.

The API refuses drain URLs whose host is literally an address that is not
globally routable (loopback, private, link-local, shared, reserved, or such an
IPv4 address carried in IPv6); a host name is checked here, when a connection
is made, against every address it resolves to at that moment (so DNS
rebinding gains nothing). Unless --allow-private-drains, the drains connect
through a reactor whose name resolver drops such addresses (IP literals pass
through it too): a name with no public address fails to connect like a name
that does not resolve, and the drain retries with backoff.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver, IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from logplex.api.validate import is_public_address

log = Logger()

# Host names whose latest resolution had only addresses drains may not use,
# so that a drain's last_error can say why it cannot connect.
_private_only: set[str] = set()
_REMEMBERED = 10_000


def refused(host: str) -> bool:
    """Whether a resolved address is one drains may not connect to."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # not an address: nothing a drain should connect to
    return not is_public_address(address)


def resolved_only_private(host: str | None) -> bool:
    """Whether the latest resolution of host had addresses, all of them refused."""
    return host in _private_only


@implementer(IResolutionReceiver)
class _PublicOnly:
    def __init__(self, receiver, host: str) -> None:
        self.receiver = receiver
        self.host = host
        self.refused: list[str] = []
        self.passed = False

    def resolutionBegan(self, resolution) -> None:
        self.receiver.resolutionBegan(resolution)

    def addressResolved(self, address) -> None:
        if refused(address.host):
            self.refused.append(address.host)
        else:
            self.passed = True
            self.receiver.addressResolved(address)

    def resolutionComplete(self) -> None:
        if self.refused:
            log.warn("drain_private_address_refused host={host} addresses={addresses}",
                     host=self.host, addresses=",".join(self.refused))
        if self.refused and not self.passed:
            if len(_private_only) >= _REMEMBERED:
                _private_only.clear()
            _private_only.add(self.host)
        else:
            _private_only.discard(self.host)
        self.receiver.resolutionComplete()


@implementer(IHostnameResolver)
class PublicOnlyResolver:
    """Resolves like the resolver it wraps, leaving out every address that is not globally routable."""

    def __init__(self, resolver) -> None:
        self.resolver = resolver

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        return self.resolver.resolveHostName(_PublicOnly(resolutionReceiver, hostName), hostName,
                                             portNumber, addressTypes, transportSemantics)


@implementer(IReactorPluggableNameResolver)
class PublicOnlyReactor:
    """The reactor, with PublicOnlyResolver as its name resolver: what drain connections are made with."""

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self.nameResolver = PublicOnlyResolver(reactor.nameResolver)

    def installNameResolver(self, resolver):
        raise NotImplementedError("drains keep their own resolver")

    def __getattr__(self, name):
        return getattr(self._reactor, name)
