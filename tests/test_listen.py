"""Listeners get a deep accept queue unless their description says otherwise."""

import socket

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from logplex.listen import LISTEN_BACKLOG, with_backlog


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
