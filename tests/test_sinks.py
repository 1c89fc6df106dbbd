"""Tests for tests.harness.sinks and tests.harness.certs: the loopback receivers drain tests use, over real sockets."""

from __future__ import annotations

import os
import shutil
import tempfile

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, reactor
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)
from treq.client import HTTPClient

from tests.harness.certs import (
    WRONG_HOSTNAME,
    TestCA,
    TrustOnly,
    client_creator,
    endpoint_description,
)
from tests.harness.sinks import (
    FramingError,
    HttpSink,
    StreamFrames,
    split_logplex_body,
)
from tests.harness.syslog_sink import SyslogSink

MSG_A = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - GET / 200"
# Digits, spaces, LF and CR inside a message are message bytes, never framing.
MSG_B = b"<134>1 2026-11-24T10:00:01+00:00 host app web.1 - - 12 34\nnext\r"
MSG_C = b"<13>1 - host app worker.1 - - \xff\x00 binary"


def frame(message: bytes) -> bytes:
    return b"%d %s" % (len(message), message)


def body(*messages: bytes) -> bytes:
    return b"".join(frame(m) for m in messages)


class FramingTests(unittest.SynchronousTestCase):
    def test_logplex_body_keeps_message_bytes_exactly(self):
        self.assertEqual(split_logplex_body(body(MSG_A, MSG_B, MSG_C, b"")),
                         [MSG_A, MSG_B, MSG_C, b""])
        self.assertEqual(split_logplex_body(b""), [])

    def test_logplex_body_rejects_what_is_not_octet_counted(self):
        for bad in (MSG_A, frame(MSG_A) + b"\n", frame(MSG_A)[:-1], b"5x hello"):
            with self.assertRaises(FramingError):
                split_logplex_body(bad)

    def test_stream_byte_by_byte(self):
        stream = frame(MSG_A) + frame(MSG_B) + b"\n" + frame(MSG_C)
        frames = StreamFrames()
        got = [m for i in range(len(stream)) for m in frames.feed(stream[i:i + 1])]
        self.assertEqual(got, [MSG_A, MSG_B, MSG_C])

    def test_stream_tolerates_lines(self):
        frames = StreamFrames()
        self.assertEqual(frames.feed(b"<13>1 one\n<13>1 tw"), [b"<13>1 one"])
        self.assertEqual(frames.feed(b"o\r\n" + frame(MSG_B) + b"123"), [b"<13>1 two", MSG_B])
        # "123" could still become a count: it waits for the next byte.
        self.assertEqual(frames.feed(b"4567890123 is a line\n"),
                         [b"1234567890123 is a line"])


class SinkTestCase(unittest.TestCase):
    timeout = 5

    def setUp(self) -> None:
        self.ca = TestCA(self.directory())

    def directory(self) -> str:
        # Not self.mktemp(): under pytest it would litter the working directory.
        path = tempfile.mkdtemp(prefix="logplex-certs-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    async def started(self, sink):
        await sink.start()
        self.addCleanup(sink.stop)
        return sink

    def http(self, ca: TestCA | None = None) -> HTTPClient:
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        if ca is None:
            return HTTPClient(Agent(reactor, pool=pool))
        return HTTPClient(Agent(reactor, contextFactory=TrustOnly(ca), pool=pool))

    async def post(self, client: HTTPClient, url: str, payload: bytes,
                   frame_id: str | None = None, **kwargs):
        headers = {b"Content-Type": [b"application/logplex-1"]}
        if frame_id is not None:
            headers[b"Logplex-Frame-Id"] = [frame_id.encode()]
        response = await client.post(url, data=payload, headers=headers, **kwargs)
        await response.content()
        return response


class HttpSinkTests(SinkTestCase):
    async def test_ok_records_the_request(self):
        sink = await self.started(HttpSink())
        self.assertTrue(sink.url.startswith("http://127.0.0.1:"))
        self.assertTrue(sink.url.endswith("/logs"))
        client = self.http()
        response = await self.post(client, sink.url + "?drain=d.1", body(MSG_A, MSG_B),
                                   frame_id="f1")
        self.assertEqual(response.code, 204)
        [request] = sink.requests
        self.assertEqual((request.method, request.path), (b"POST", b"/logs"))
        self.assertEqual(request.query, {b"drain": [b"d.1"]})
        self.assertEqual(request.headers[b"content-type"], b"application/logplex-1")
        self.assertEqual(request.frame_id, b"f1")
        self.assertEqual(request.body, body(MSG_A, MSG_B))
        self.assertEqual(request.frames, [MSG_A, MSG_B])
        self.assertEqual((request.status, request.mode), (204, "ok"))
        self.assertEqual(sink.messages(), [MSG_A, MSG_B])
        self.assertEqual(sink.accepted_frame_ids, [b"f1"])
        self.assertEqual((sink.attempts, sink.framing_errors), (1, []))

    async def test_status_with_retry_after_is_not_accepted(self):
        sink = await self.started(HttpSink())
        sink.behave("status", code=503, retry_after=7)
        response = await self.post(self.http(), sink.url, body(MSG_A), frame_id="f1")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])
        self.assertEqual(sink.messages(), [])
        self.assertEqual(sink.accepted_frame_ids, [])
        self.assertEqual(sink.attempts, 1)

    async def test_behaviour_for_the_next_requests_then_the_standing_one(self):
        sink = await self.started(HttpSink())
        sink.behave("status", code=400)
        sink.behave("status", code=503, times=2)
        client = self.http()
        codes = [(await self.post(client, sink.url, body(MSG_A))).code for _ in range(4)]
        self.assertEqual(codes, [503, 503, 400, 400])
        sink.behave("ok")
        self.assertEqual((await self.post(client, sink.url, body(MSG_A))).code, 204)

    def test_behave_rejects_nonsense(self):
        sink = HttpSink()
        for mode, kwargs in [("teapot", {}), ("status", {}), ("slow", {}),
                             ("ok", {"code": 200}), ("hang", {"delay": 1}),
                             ("status", {"code": 999}), ("ok", {"times": 0})]:
            with self.assertRaises(ValueError):
                sink.behave(mode, **kwargs)

    async def test_close_drops_the_connection(self):
        sink = await self.started(HttpSink())
        sink.behave("close")
        with self.assertRaises(ResponseNeverReceived):
            await self.post(self.http(), sink.url, body(MSG_A))
        [request] = sink.requests
        self.assertEqual((request.mode, request.status, request.frames), ("close", None, [MSG_A]))
        self.assertEqual(sink.messages(), [])

    async def test_hang_never_answers(self):
        sink = await self.started(HttpSink())
        sink.behave("hang")
        with self.assertRaises(ResponseNeverReceived) as raised:
            await self.post(self.http(), sink.url, body(MSG_A), timeout=0.5)
        self.assertTrue(raised.exception.reasons[0].check(defer.CancelledError))
        self.assertEqual([(r.mode, r.status) for r in sink.requests], [("hang", None)])

    async def test_stop_aborts_a_hung_request(self):
        sink = HttpSink()
        await sink.start()
        sink.behave("hang")
        pending = defer.ensureDeferred(self.post(self.http(), sink.url, body(MSG_A)))
        await sink.wait_for_attempts(1)
        self.assertEqual(sink.open_connections, 1)
        await sink.stop()
        self.assertEqual(sink.open_connections, 0)
        with self.assertRaises(ResponseNeverReceived):
            await pending

    async def test_slow_answers_after_the_delay(self):
        sink = await self.started(HttpSink())
        sink.behave("slow", delay=0.3)
        began = reactor.seconds()
        response = await self.post(self.http(), sink.url, body(MSG_A))
        self.assertEqual(response.code, 204)
        self.assertGreaterEqual(reactor.seconds() - began, 0.3)
        self.assertEqual(sink.messages(), [MSG_A])

    async def test_slow_answer_to_a_client_that_left_is_not_accepted(self):
        sink = await self.started(HttpSink())
        sink.behave("slow", delay=2)
        with self.assertRaises(ResponseNeverReceived) as raised:
            await self.post(self.http(), sink.url, body(MSG_A), timeout=0.2)
        self.assertTrue(raised.exception.reasons[0].check(defer.CancelledError))
        self.assertEqual([(r.mode, r.status) for r in sink.requests], [("slow", None)])
        self.assertEqual(sink.messages(), [])

    async def test_retried_frame_counts_once(self):
        sink = await self.started(HttpSink())
        client = self.http()
        sink.behave("status", code=503, times=1)
        await self.post(client, sink.url, body(MSG_A, MSG_B), frame_id="f1")
        await self.post(client, sink.url, body(MSG_A, MSG_B), frame_id="f1")
        # The answer was lost, so the drain sends it again: still once.
        await self.post(client, sink.url, body(MSG_A, MSG_B), frame_id="f1")
        await self.post(client, sink.url, body(MSG_C), frame_id="f2")
        self.assertEqual(sink.messages(), [MSG_A, MSG_B, MSG_C])
        self.assertEqual(sink.accepted_frame_ids, [b"f1", b"f2"])
        self.assertEqual(sink.attempts, 4)

    async def test_wait_for_fires_on_arrival_and_times_out(self):
        sink = await self.started(HttpSink())
        waiting = sink.wait_for(3)
        self.assertNoResult(waiting)
        client = self.http()
        await self.post(client, sink.url, body(MSG_A, MSG_B), frame_id="f1")
        self.assertNoResult(waiting)
        await self.post(client, sink.url, body(MSG_C), frame_id="f2")
        self.assertEqual(self.successResultOf(waiting), 3)
        self.assertEqual(await sink.wait_for(2), 3)
        with self.assertRaises(TimeoutError) as raised:
            await sink.wait_for(4, timeout=0.1)
        self.assertIn("3 messages accepted from 2 requests", str(raised.exception))

    async def test_wait_for_fails_when_a_malformed_body_is_accepted(self):
        sink = await self.started(HttpSink())
        waiting = sink.wait_for(1)
        await self.post(self.http(), sink.url, b"not logplex-1")
        self.failureResultOf(waiting, AssertionError)
        self.assertEqual(len(sink.framing_errors), 1)

    async def test_tls_trusted(self):
        sink = await self.started(HttpSink(tls=self.ca.issue(["localhost"])))
        self.assertTrue(sink.url.startswith("https://localhost:"))
        response = await self.post(self.http(self.ca), sink.url, body(MSG_A), frame_id="f1")
        self.assertEqual(response.code, 204)
        # The certificate names 127.0.0.1 too.
        ip_url = sink.url.replace("localhost", "127.0.0.1")
        response = await self.post(self.http(self.ca), ip_url, body(MSG_B), frame_id="f2")
        self.assertEqual(response.code, 204)
        self.assertEqual(sink.messages(), [MSG_A, MSG_B])

    async def assertTlsRefused(self, issued, client_ca, error):
        sink = await self.started(HttpSink(tls=issued))
        with self.assertRaises(RequestTransmissionFailed) as raised:
            await self.post(self.http(client_ca), sink.url, body(MSG_A))
        [reason] = raised.exception.reasons
        self.assertTrue(reason.check(error), reason)
        self.assertEqual(sink.attempts, 0)

    async def test_tls_unrelated_ca_refused(self):
        stranger = TestCA(self.directory(), name="unrelated CA")
        await self.assertTlsRefused(self.ca.issue(["localhost"]), stranger, SSL.Error)

    async def test_tls_expired_refused(self):
        await self.assertTlsRefused(self.ca.issue(["localhost"], expired=True), self.ca,
                                    SSL.Error)

    async def test_tls_wrong_host_refused(self):
        await self.assertTlsRefused(self.ca.issue([WRONG_HOSTNAME], ips=[]), self.ca,
                                    VerificationError)


class _Sender(Protocol):
    def __init__(self) -> None:
        self.lost = defer.Deferred()

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class SyslogSinkTests(SinkTestCase):
    async def connect(self, sink: SyslogSink, tls_ca: TestCA | None = None) -> _Sender:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", sink.port)
        if tls_ca is not None:
            endpoint = wrapClientTLS(client_creator(tls_ca, "localhost"), endpoint)
        sender = await connectProtocol(endpoint, _Sender())

        def close():
            if not sender.lost.called:
                sender.transport.abortConnection()
            return sender.lost
        self.addCleanup(close)
        return sender

    async def send_split(self, sink: SyslogSink, sender: _Sender) -> None:
        stream = frame(MSG_A) + frame(MSG_B) + b"<13>1 a line\n" + frame(MSG_C)
        # Cut inside MSG_B's count, so the sink must hold a partial frame.
        cut = len(frame(MSG_A)) + 1
        sender.transport.write(stream[:cut])
        await sink.wait_for(1)
        sender.transport.write(stream[cut:cut + 10])
        sender.transport.write(stream[cut + 10:])
        await sink.wait_for(4)
        self.assertEqual(sink.frames, [MSG_A, MSG_B, b"<13>1 a line", MSG_C])

    async def test_plain_frames_split_across_writes(self):
        sink = await self.started(SyslogSink())
        self.assertTrue(sink.url.startswith("syslog://127.0.0.1:"))
        await self.send_split(sink, await self.connect(sink))
        self.assertEqual(sink.connections, 1)

    async def test_tls_frames_split_across_writes(self):
        sink = await self.started(SyslogSink(tls=self.ca.issue(["localhost"])))
        self.assertTrue(sink.url.startswith("syslog+tls://localhost:"))
        await self.send_split(sink, await self.connect(sink, tls_ca=self.ca))

    async def test_close_all_then_reconnect(self):
        sink = await self.started(SyslogSink())
        first = await self.connect(sink)
        first.transport.write(frame(MSG_A))
        await sink.wait_for(1)
        await sink.close_all()
        await first.lost
        self.assertEqual(sink.open_connections, 0)
        second = await self.connect(sink)
        second.transport.write(frame(MSG_B))
        await sink.wait_for(2)
        self.assertEqual(sink.connections, 2)
        self.assertEqual(sink.frames_by_connection, [[MSG_A], [MSG_B]])

    async def test_wait_for_times_out(self):
        sink = await self.started(SyslogSink())
        with self.assertRaises(TimeoutError) as raised:
            await sink.wait_for(1, timeout=0.1)
        self.assertIn("0 frames over 0 connections", str(raised.exception))


class _Collect(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)


class EndpointDescriptionTests(SinkTestCase):
    async def test_ssl_endpoint_serves_the_issued_certificate(self):
        issued = self.ca.issue(["localhost"])
        factory = Factory.forProtocol(_Collect)
        factory.received = []
        port = await serverFromString(reactor, endpoint_description(issued, 0)).listen(factory)
        self.addCleanup(port.stopListening)
        sink_port = port.getHost().port
        self.assertEqual(port.getHost().host, "127.0.0.1")
        endpoint = wrapClientTLS(client_creator(self.ca, "localhost"),
                                 TCP4ClientEndpoint(reactor, "127.0.0.1", sink_port))
        sender = await connectProtocol(endpoint, _Sender())
        sender.transport.write(b"hello")
        sender.transport.loseConnection()
        await sender.lost
        self.assertEqual(b"".join(factory.received), b"hello")

    async def test_paths_with_colons_are_quoted(self):
        directory = os.path.join(self.directory(), "a:b\\c")
        issued = TestCA(directory).issue(["localhost"])
        description = endpoint_description(issued, 0)
        self.assertIn("a\\:b\\\\c", description)
        # Listening reads the key and certificates back from those paths.
        port = await serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
        await port.stopListening()

    def test_files_and_validity(self):
        issued = self.ca.issue(["localhost", "logs.test"], ips=["127.0.0.1", "::1"])
        with open(issued.chain_path, "rb") as f:
            self.assertEqual(f.read(), issued.pem_cert + self.ca.pem_cert)
        with open(self.ca.ca_path, "rb") as f:
            self.assertEqual(f.read(), self.ca.pem_cert)
        self.assertEqual(os.stat(issued.key_path).st_mode & 0o077, 0)
        with self.assertRaises(ValueError):
            TestCA(self.ca.directory)
