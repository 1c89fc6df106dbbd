"""Listeners: a deep accept queue unless their description says otherwise, and the TLS policy on every ssl: one."""

import socket
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest
from twisted.web import server
from twisted.web.resource import Resource

from logplex.listen import LISTEN_BACKLOG, ProxiedEndpoint, normalised, server_endpoint, with_backlog
from logplex.metrics import Metrics
from logplex.tls import ServerTLS, choose_protocol
from logplex.http.site import ConnectionCap
from tests.harness.certs import TestCA, endpoint_description


def test_tcp_tls_and_unix_listeners_get_the_deep_queue():
    assert with_backlog("tcp:6001") == f"tcp:6001:backlog={LISTEN_BACKLOG}"
    assert with_backlog("tcp6:6001:interface=\\:\\:1").endswith(f":backlog={LISTEN_BACKLOG}")
    assert with_backlog("ssl:6514:privateKey=k.pem").endswith(f":backlog={LISTEN_BACKLOG}")
    assert with_backlog("unix:/run/logplex.sock").endswith(f":backlog={LISTEN_BACKLOG}")


def test_an_explicit_backlog_wins_and_other_types_are_left_alone():
    assert with_backlog("tcp:6001:backlog=10") == "tcp:6001:backlog=10"
    assert with_backlog("systemd:domain=INET:index=0") == "systemd:domain=INET:index=0"


class BurstTests(unittest.TestCase):
    def test_a_burst_of_connections_is_queued_not_refused(self):
        """Twice Twisted's default queue, connected while the reactor cannot accept: none is lost."""
        d = serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1")).listen(
            Factory.forProtocol(Protocol))

        def listening(port):
            self.addCleanup(port.stopListening)
            address = port.getHost()
            clients = []
            try:
                for _ in range(100):
                    # The reactor does not run during this loop, so nothing is accepted:
                    # every connection waits in the kernel's queue.
                    s = socket.socket()
                    s.setblocking(False)
                    clients.append(s)
                    s.connect_ex((address.host, address.port))
                established = 0
                for s in clients:
                    s.settimeout(2)
                    try:
                        s.send(b"x")
                        established += 1
                    except OSError:
                        pass
                self.assertEqual(established, 100)
            finally:
                for s in clients:
                    s.close()

        return d.addCallback(listening)


# -- TLS: the policy every ssl: listener gets ------------------------------------------------------------


@pytest.fixture(scope="module")
def issued():
    return TestCA(tempfile.mkdtemp(prefix="logplex-listen-")).issue(["localhost"])


class _TLSProtocolStandIn:
    """What the ALPN choice reads of Twisted's TLS protocol: the factory TLS wraps."""

    def __init__(self, wrapped_factory) -> None:
        self.factory = type("TLSFactory", (), {"wrappedFactory": wrapped_factory})()


def handshake(issued, wrapped_factory, offered: list[bytes] | None, ciphers: str | None = None,
              max_version: int | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    """A client and a listener's server connection, handshaken through memory BIOs (no socket).

    A refused handshake raises the server's SSL.Error.
    """
    tls = server_endpoint(MemoryReactor(), endpoint_description(issued, 0))._sslContextFactory
    server_side = tls.serverConnectionForTLS(None)
    server_side.set_app_data(_TLSProtocolStandIn(wrapped_factory))
    server_side.set_accept_state()
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if ciphers is not None:
        context.set_cipher_list(ciphers.encode())
    if max_version is not None:
        context.set_max_proto_version(max_version)
    client = SSL.Connection(context, None)
    if offered is not None:
        client.set_alpn_protos(offered)
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server_side), (server_side, client)):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                other.bio_write(one.bio_read(65536))
            except SSL.WantReadError:
                pass
    return client, server_side


def _site() -> server.Site:
    return server.Site(Resource())


def test_a_site_behind_the_connection_cap_agrees_on_http_1_1(issued):
    cap = ConnectionCap(_site(), 10, Metrics(), negotiable=(b"http/1.1",))
    client, _ = handshake(issued, cap, [b"h2", b"http/1.1"])
    assert client.get_alpn_proto_negotiated() == b"http/1.1"


def test_h2_is_not_offered_even_where_twisted_could_speak_it(issued, monkeypatch):
    monkeypatch.setattr(server.Site, "acceptableProtocols", lambda self: [b"h2", b"http/1.1"])
    cap = ConnectionCap(_site(), 10, Metrics(), negotiable=(b"http/1.1",))
    assert cap.acceptableProtocols() == [b"http/1.1"]
    client, _ = handshake(issued, cap, [b"h2", b"http/1.1"])
    assert client.get_alpn_proto_negotiated() == b"http/1.1"


@pytest.mark.parametrize("offered", [[b"syslog"], [b"h2"], [b"http/1.1", b"x"], None])
def test_a_factory_that_names_no_protocol_handshakes_without_alpn(issued, offered):
    client, server_side = handshake(issued, Factory.forProtocol(Protocol), offered)
    assert client.get_protocol_version_name() in ("TLSv1.2", "TLSv1.3")
    assert client.get_alpn_proto_negotiated() == b""


@pytest.mark.parametrize("cipher", ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-ECDSA-AES128-SHA"])
def test_tls_1_2_without_forward_secret_aead_is_refused(issued, cipher):
    with pytest.raises(SSL.Error, match="no shared cipher"):
        handshake(issued, Factory.forProtocol(Protocol), None, ciphers=cipher, max_version=SSL.TLS1_2_VERSION)


def test_ecdhe_gcm_on_tls_1_2_is_accepted(issued):
    client, _ = handshake(issued, Factory.forProtocol(Protocol), None, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256",
                          max_version=SSL.TLS1_2_VERSION)
    assert client.get_cipher_name() == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_every_ssl_description_gets_the_policy_and_keeps_its_syntax(issued):
    endpoint = server_endpoint(MemoryReactor(), endpoint_description(issued, 6514))
    # If Twisted renames where SSL4ServerEndpoint keeps its context, this fails first.
    assert isinstance(endpoint, SSL4ServerEndpoint)
    assert isinstance(endpoint._sslContextFactory, ServerTLS)
    assert endpoint._port == 6514 and endpoint._backlog == LISTEN_BACKLOG
    names = SSL.Connection(endpoint._sslContextFactory.context, None).get_cipher_list()
    assert names and all(n.startswith("TLS_") or ("GCM" in n or "CHACHA20" in n) and n.startswith(("ECDHE", "DHE"))
                         for n in names), names


def test_sslmethod_is_refused_with_a_sentence(issued):
    with pytest.raises(ValueError, match="sslmethod= is not supported"):
        server_endpoint(MemoryReactor(), endpoint_description(issued, 0) + ":sslmethod=TLSv1_METHOD")


def test_the_endpoint_type_is_read_in_any_case():
    assert normalised("TCP:6001:interface=127.0.0.1") == "tcp:6001:interface=127.0.0.1"
    assert with_backlog("TCP6:6001").endswith(f":backlog={LISTEN_BACKLOG}")
    assert with_backlog("tcp:6001:interface=\\:\\:1:backlog=3") == "tcp:6001:interface=\\:\\:1:backlog=3"


@given(st.lists(st.binary(min_size=1, max_size=8), max_size=6), st.lists(st.binary(min_size=1, max_size=8), max_size=6))
def test_the_chosen_protocol_is_the_listeners_first_that_the_client_offered(spoken, offered):
    chosen = choose_protocol(spoken, offered)
    common = [p for p in spoken if p in offered]
    assert chosen == (common[0] if common else None)


def test_a_proxied_listener_gets_the_deep_queue_and_the_tls_policy_of_the_one_behind_it(issued):
    reactor = MemoryReactor()
    plain = server_endpoint(reactor, "haproxy:tcp:6001:interface=127.0.0.1")
    assert isinstance(plain, ProxiedEndpoint) and plain.inner._backlog == LISTEN_BACKLOG
    tls = server_endpoint(reactor, "HAPROXY:" + endpoint_description(issued, 6514))
    assert isinstance(tls.inner._sslContextFactory, ServerTLS)
    # The PROXY header comes before the TLS handshake: the port listens in the clear,
    # with the PROXY parser first, TLS behind it, then the listener's own factory.
    site = Factory.forProtocol(Protocol)
    tls.listen(site)
    (port, factory, backlog, interface), = reactor.tcpServers
    assert (port, backlog, interface) == (6514, LISTEN_BACKLOG, "127.0.0.1")
    assert isinstance(factory, HAProxyWrappingFactory)
    assert isinstance(factory.wrappedFactory, TLSMemoryBIOFactory)
    assert factory.wrappedFactory.wrappedFactory is site
    assert reactor.sslServers == []
