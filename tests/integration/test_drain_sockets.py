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

from twisted.internet import reactor
from twisted.trial import unittest

from logplex.drains.http import make_client
from logplex.drains.httpclient import DrainTarget
from logplex.framing import encode_logplex1
from tests.harness.certs import TestCA
from tests.harness.sinks import HttpSink

# About 1 MiB of logplex-1 body: a largest batch of a drain that is backed up.
LINES = [b"<134>1 2026-12-03T10:00:00+00:00 host app web.1 - line %06d " % i + b"x" * 150
         for i in range(5000)]


class DrainSocketTests(unittest.TestCase):
    async def post_and_check_the_socket(self, sink: HttpSink, trust_root=None) -> None:
        await sink.start()
        self.addCleanup(sink.stop)
        client = make_client(reactor, trust_root=trust_root, connect_timeout=5)
        target = DrainTarget.of(sink.url.encode(), {})
        answer = await client.post(target, target.request(encode_logplex1(LINES), len(LINES), "frame-1"), 10)
        self.assertEqual(answer.code, 204)
        self.assertEqual(len(sink.messages()), len(LINES))
        [connection] = client.connections._idle[target.key]
        self.addCleanup(client.reactor.stop)  # the timers (the drains' ticker), after the connection:
        self.addCleanup(connection.drop)
        transport = connection.transport
        if sink.url.startswith("https:"):  # the TLS protocol's own transport is the TCP connection
            transport = transport.transport
        sock = transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1,
                         "Nagle's algorithm is on: a large body's tail waits for the endpoint's ACK")

    async def test_an_http_drain_connection_sends_a_body_s_tail_without_waiting_for_acks(self):
        await self.post_and_check_the_socket(HttpSink())

    async def test_an_https_drain_connection_does_too(self):
        directory = tempfile.mkdtemp(prefix="drain-sockets-")
        self.addCleanup(shutil.rmtree, directory)
        ca = TestCA(directory)
        await self.post_and_check_the_socket(HttpSink(tls=ca.issue(["localhost"])), trust_root=ca.trust_root)
