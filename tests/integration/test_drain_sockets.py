"""The node's drain HTTP client on real sockets: what its connections are, as the kernel sees them.

A request is written whole and then nothing is sent until its answer. With
Nagle's algorithm on, the last part of a large body waits for the endpoint to
acknowledge the rest, which a delayed ACK puts off by up to 40 ms: 1 MiB
batches to a loopback sink took 21 ms each in bench/peers.py (b) and the
node delivered 262,000 lines a second instead of 960,000.
"""

from __future__ import annotations

import shutil
import socket
import tempfile

from twisted.internet import protocol, reactor
from twisted.internet.ssl import CertificateOptions
from twisted.trial import unittest

from logplex.drains.http import make_client
from logplex.drains.httpclient import DrainTarget
from tests.harness.certs import TestCA, server_context


class _Answers(protocol.Protocol):
    """Reads a request's head and Content-Length bytes of body, answers 204; keeps the connection."""

    def connectionMade(self) -> None:
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            if len(rest) < length:
                return
            self.buf = rest[length:]
            self.factory.bodies.append(length)
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")


class DrainSocketTests(unittest.TestCase):
    def listen(self, tls: CertificateOptions | None = None) -> int:
        factory = protocol.Factory.forProtocol(_Answers)
        factory.bodies = self.bodies = []
        if tls is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def post_and_check_the_socket(self, url: bytes, trust_root=None) -> None:
        client = make_client(reactor, trust_root=trust_root, connect_timeout=5)
        target = DrainTarget.of(url, {})
        body = b"x" * (1024 * 1024)
        answer = await client.post(target, target.request(body, 1, "frame-1"), 10)
        self.assertEqual(answer.code, 204)
        self.assertEqual(self.bodies, [len(body)])
        [connection] = client.connections._idle[target.key]
        self.addCleanup(client.reactor.stop)  # the timers (the drains' ticker), after the connection:
        self.addCleanup(connection.drop)
        transport = connection.transport
        if url.startswith(b"https:"):  # the TLS protocol's own transport is the TCP connection
            transport = transport.transport
        sock = transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1,
                         "Nagle's algorithm is on: a large body's tail waits for the endpoint's ACK")

    async def test_an_http_drain_connection_sends_a_body_s_tail_without_waiting_for_acks(self):
        port = self.listen()
        await self.post_and_check_the_socket(b"http://127.0.0.1:%d/logs" % port)

    async def test_an_https_drain_connection_does_too(self):
        directory = tempfile.mkdtemp(prefix="drain-sockets-")
        self.addCleanup(shutil.rmtree, directory)
        ca = TestCA(directory)
        port = self.listen(server_context(ca.issue(["localhost"])))
        await self.post_and_check_the_socket(b"https://localhost:%d/logs" % port, trust_root=ca.trust_root)
