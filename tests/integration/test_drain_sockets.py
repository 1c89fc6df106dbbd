"""The node's drain clients on real sockets: what their connections are, as the kernel sees them.

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

from twisted.internet import reactor, task
from twisted.trial import unittest

from logplex.drains.http import make_client
from logplex.drains.httpclient import DrainTarget
from logplex.drains.syslog import SyslogDrainTransport
from logplex.framing import encode_logplex1
from logplex.model import Drain
from logplex.settings import DrainSettings
from tests.harness.certs import TestCA
from tests.harness.sinks import HttpSink
from tests.harness.syslog_sink import SyslogSink

# About 1 MiB of logplex-1 body: a largest batch of a drain that is backed up.
LINES = [b"<134>1 2026-12-03T10:00:00+00:00 host app web.1 - line %06d " % i + b"x" * 150
         for i in range(5000)]
# The same as the router keeps them (a syslog drain re-frames each message: it needs the SD field).
ROUTED = [b"<134>1 2026-12-03T10:00:00+00:00 host app web.1 - - line %06d " % i + b"x" * 150
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

    async def send_syslog_and_check_the_socket(self, sink: SyslogSink, trust_root=None) -> None:
        await sink.start()
        self.addCleanup(sink.stop)
        drain = SyslogDrainTransport(Drain(1, "app-1", "d.tok", sink.url), reactor, DrainSettings(),
                                     trust_root=trust_root, connect_timeout=5)
        self.addCleanup(drain.stop)
        outcome = await drain.send(ROUTED, "frame-1")
        self.assertTrue(outcome.delivered, outcome)
        await sink.wait_for(len(ROUTED), timeout=10)
        transport = drain._current.transport
        if sink.url.startswith("syslog+tls:"):
            transport = transport.transport
        self.assertEqual(transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1,
                         "Nagle's algorithm is on: a large batch's tail waits for the receiver's ACK")

    async def test_a_syslog_drain_connection_sends_a_batch_s_tail_without_waiting_for_acks(self):
        await self.send_syslog_and_check_the_socket(SyslogSink())

    async def test_a_syslog_tls_drain_connection_does_too(self):
        directory = tempfile.mkdtemp(prefix="drain-sockets-")
        self.addCleanup(shutil.rmtree, directory)
        ca = TestCA(directory)
        await self.send_syslog_and_check_the_socket(SyslogSink(tls=ca.issue(["localhost"])),
                                                    trust_root=ca.trust_root)

    async def stop_while_connected(self, sink: SyslogSink, trust_root=None) -> None:
        await sink.start()
        self.addCleanup(sink.stop)
        drain = SyslogDrainTransport(Drain(1, "app-1", "d.tok", sink.url), reactor, DrainSettings(),
                                     trust_root=trust_root, connect_timeout=5)
        outcome = await drain.send(ROUTED[:10], "frame-1")
        self.assertTrue(outcome.delivered, outcome)
        await sink.wait_for(10)
        # Deleted, idle, or the node stopping: the drain lets its connection go, and its
        # receiver sees it closed.
        await drain.stop().addTimeout(5, reactor)
        await sink.all_closed()
        self.assertEqual(sink.open_connections, 0)

    async def test_a_syslog_drain_that_stops_closes_its_connection(self):
        await self.stop_while_connected(SyslogSink())

    async def test_a_syslog_tls_drain_that_stops_closes_its_connection(self):
        # It used to stay open for good: a TLS transport closes only once its
        # producer (the drain's connection) is unregistered.
        directory = tempfile.mkdtemp(prefix="drain-sockets-")
        self.addCleanup(shutil.rmtree, directory)
        ca = TestCA(directory)
        await self.stop_while_connected(SyslogSink(tls=ca.issue(["localhost"])), trust_root=ca.trust_root)

    async def test_a_syslog_drain_that_stops_while_its_receiver_does_not_read_aborts_its_connection(self):
        # A receiver that accepts and never reads: the drain's writes fill its window and
        # the kernel's buffers, and the rest waits in the node. A close would wait for that
        # forever, holding the socket and its buffers; after connect_timeout it is aborted.
        server = socket.socket()
        self.addCleanup(server.close)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = "syslog://127.0.0.1:%d" % server.getsockname()[1]
        drain = SyslogDrainTransport(Drain(1, "app-1", "d.tok", url), reactor, DrainSettings(), connect_timeout=1)
        outcome = await drain.send(ROUTED * 10, "frame-1")  # about 10 MiB: more than the kernel holds
        self.assertTrue(outcome.delivered, outcome)
        # (Out of the connection's own callbacks, as a drain is stopped.)
        await task.deferLater(reactor, 0)
        await drain.stop().addTimeout(5, reactor)
        accepted, _ = server.accept()
        self.addCleanup(accepted.close)
        accepted.settimeout(5)
        with self.assertRaises(ConnectionResetError):
            while accepted.recv(1 << 20):
                pass
