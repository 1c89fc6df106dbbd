"""logplex.drains.netpolicy: drains connect only to public addresses; the resolver they use leaves private ones out."""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ServerEndpoint
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from zope.interface import implementer

from logplex.drains.http import HttpDrainTransport, is_certificate_error, make_client
from logplex.drains.netpolicy import PublicOnlyReactor, PublicOnlyResolver
from logplex.drains.syslog import SyslogDrainTransport
from logplex.model import Drain
from logplex.settings import DrainSettings

RESOLVES_PRIVATE = "localhost resolves only to addresses that are not public"
LINE = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - hello"


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


def test_addresses_that_are_not_globally_routable_are_left_out():
    receiver = resolve(
        IPv4Address("TCP", "100.100.100.200", 443),  # shared address space: cloud metadata
        IPv6Address("TCP", "2002:7f00:1::", 443),  # 6to4 of 127.0.0.1
        IPv6Address("TCP", "fec0::1", 443),  # site-local
        IPv6Address("TCP", "64:ff9b::a9fe:a9fe", 443),  # NAT64 of 169.254.169.254
        IPv6Address("TCP", "::ffff:100.64.0.1", 443),
        IPv6Address("TCP", "fe80::1%lo", 443),
        IPv6Address("TCP", "64:ff9b::5db8:d822", 443),  # NAT64 of 93.184.216.34: public
    )
    assert receiver.addresses == ["64:ff9b::5db8:d822"]


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


class DrainErrorTests(unittest.TestCase):
    """What a drain whose host resolves only to private addresses says in its state."""

    @defer.inlineCallbacks
    def listening(self):
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_an_http_drain_says_why_it_cannot_connect(self):
        number = yield self.listening()
        client = make_client(PublicOnlyReactor(reactor), connect_timeout=5)
        drain = Drain(1, "app", "d.tok", f"http://localhost:{number}/logs")
        outcome = yield HttpDrainTransport(drain, client, reactor, timeout=5).send([LINE], "f1")
        self.assertTrue(outcome.retry)
        self.assertIn(RESOLVES_PRIVATE, outcome.error)
        # Not a certificate problem: no L14 goes into the channel for it.
        self.assertFalse(outcome.certificate_error)

    @defer.inlineCallbacks
    def test_a_syslog_drain_says_why_it_cannot_connect(self):
        number = yield self.listening()
        drain = Drain(2, "app", "d.tok", f"syslog://localhost:{number}")
        transport = SyslogDrainTransport(drain, PublicOnlyReactor(reactor), DrainSettings(), connect_timeout=5)
        self.addCleanup(transport.stop)
        outcome = yield transport.send([LINE], "f1")
        self.assertIn(RESOLVES_PRIVATE, outcome.error)
        self.assertFalse(outcome.certificate_error)


def test_an_unknown_name_is_not_a_certificate_error():
    from twisted.python.failure import Failure
    assert not is_certificate_error(Failure(DNSLookupError("Couldn't find the hostname 'nope.invalid'")))


class FailedConnectionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_refused_connection_stops_its_service_cleanly(self):
        # Stopping the service from inside its own failure used to be refused
        # as re-entrant (an unhandled error, which fails this test), leaving it
        # reconnecting on its own behind the drain's back.
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        number = closed.getsockname()[1]
        closed.close()  # nothing listens there: connections are refused
        transport = SyslogDrainTransport(Drain(3, "app", "d.tok", f"syslog://127.0.0.1:{number}"), reactor, DrainSettings(),
                                         connect_timeout=5)
        outcome = yield transport.send([LINE], "f1")
        self.assertIn("refused", outcome.error)
        self.assertIsNone(transport.service)
        yield task.deferLater(reactor, 0, lambda: None)  # the turn on which it is stopped
        yield transport.stop()
