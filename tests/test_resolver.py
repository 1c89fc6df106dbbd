"""Drains connect only to public addresses: the resolver they use leaves private ones out."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from logplex.drains.resolver import PublicOnlyReactor, PublicOnlyResolver


class FixedResolver:
    """Answers every name with the same addresses, at once."""

    def __init__(self, *addresses):
        self.addresses = addresses

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        receiver.resolutionBegan(None)
        for address in self.addresses:
            receiver.addressResolved(address)
        receiver.resolutionComplete()
        return receiver


@implementer(IResolutionReceiver)
class Collect:
    def __init__(self):
        self.addresses, self.complete = [], False

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        self.addresses.append(address.host)

    def resolutionComplete(self):
        self.complete = True


def resolve(*addresses):
    receiver = Collect()
    PublicOnlyResolver(FixedResolver(*addresses)).resolveHostName(receiver, "drain.example.com", 443)
    return receiver


def test_only_public_addresses_are_passed_on():
    receiver = resolve(
        IPv4Address("TCP", "127.0.0.1", 443), IPv4Address("TCP", "10.1.2.3", 443),
        IPv4Address("TCP", "169.254.169.254", 443), IPv4Address("TCP", "93.184.216.34", 443),
        IPv6Address("TCP", "::1", 443), IPv6Address("TCP", "fd00::1", 443),
        IPv6Address("TCP", "::ffff:192.168.1.1", 443), IPv6Address("TCP", "2606:2800:220:1::1", 443),
    )
    assert receiver.addresses == ["93.184.216.34", "2606:2800:220:1::1"]
    assert receiver.complete


def test_a_name_with_only_private_addresses_resolves_to_nothing():
    receiver = resolve(IPv4Address("TCP", "192.168.0.10", 443))
    assert receiver.addresses == [] and receiver.complete


class RealConnectionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_drain_cannot_reach_a_loopback_listener_by_name(self):
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # The same name, the same listener: the node's own reactor connects...
        plain = yield HostnameEndpoint(reactor, "localhost", number, timeout=5).connect(
            Factory.forProtocol(Protocol))
        plain.transport.loseConnection()
        # ...a drain's does not.
        with self.assertRaises(DNSLookupError):
            yield HostnameEndpoint(PublicOnlyReactor(reactor), "localhost", number, timeout=5).connect(
                Factory.forProtocol(Protocol))
