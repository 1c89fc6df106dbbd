"""Hostile HTTP drain endpoints against a real node: what an endpoint answers never harms the node or another tenant.

The endpoint (HostileEndpoint) is a raw HTTP/1.1 server in the test's
reactor, so that it can answer what no well-behaved server library would:
a gzip bomb, a body without end, a body trickled a byte at a time, a
redirect to somewhere else, cookies. As in test_drains.py these are trial
test cases run by pytest; whatever blocks runs in a thread.

Memory is read from the node's /proc status: VmHWM (peak RSS) is reset
before an attack (writing 5 to /proc/PID/clear_refs), so its value after
the attack is the peak the attack caused.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable

import attrs
import pytest
from twisted.internet import reactor, task
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.harness.certs import Issued, TestCA, server_context
from tests.harness.client import Node
from tests.harness.procs import RedisServer
from tests.harness.client import Sender, stop_node
from tests.harness.trial import NodeCase, http_frame, start_node, texts
from tests.harness.sinks import HttpSink

NODE_NAME = "hostile-drains"
TIMEOUT = 1.0
ARGS = ["--allow-private-drains", "--drain-backoff-max", "1", "--http-drain-timeout", str(TIMEOUT)]
# What the bomb inflates to, and the endless body's declared length.
BOMB_BYTES = 1024 * 1024 * 1024
HUGE_BYTES = 400 * 1024 * 1024
# How much a node's peak RSS may grow while it reads one hostile answer.
RSS_GROWTH_LIMIT = 40 * 1024 * 1024
CHUNK = 64 * 1024
# A header section without end: 1000-byte header lines.
HEADER_LINES = (b"X-Junk: " + b"a" * 990 + b"\r\n") * (CHUNK * 4 // 1000 + 1)


def gzip_bomb(size: int) -> bytes:
    """A gzip member of `size` zero bytes (about size / 1000 bytes long)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(CHUNK * 16)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


# -- the hostile endpoint --------------------------------------------------------------------
@attrs.define(eq=False)
class Seen:
    """One request as the endpoint read it, and how its answer went."""

    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes
    mode: str
    written: int = 0  # bytes of answer body written
    closed_by_client: bool = False

    @property
    def frame_id(self) -> bytes | None:
        return self.headers.get(b"logplex-frame-id")

    @property
    def frames(self) -> list[bytes]:
        # An application/logplex-1 body: "LEN FRAME" repeated.
        out, pos = [], 0
        while pos < len(self.body):
            space = self.body.index(b" ", pos)
            length = int(self.body[pos:space])
            out.append(self.body[space + 1:space + 1 + length])
            pos = space + 1 + length
        return out


class _Connection(Protocol):
    def __init__(self, endpoint: HostileEndpoint) -> None:
        self.endpoint = endpoint
        self.buffer = b""
        self.current: Seen | None = None
        self.left = 0  # answer bytes still to write (huge, trickle)
        self.trickle: task.LoopingCall | None = None

    def connectionMade(self) -> None:
        self.endpoint.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.answer(Seen(method, path, headers, rest[:length], self.endpoint.next_mode()))

    def answer(self, seen: Seen) -> None:
        self.current = seen
        self.endpoint.seen.append(seen)
        mode, write = seen.mode, self.transport.write
        if mode == "ok":
            write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif mode == "cookie":
            write(b"HTTP/1.1 204 No Content\r\nSet-Cookie: tenant=" + self.endpoint.name.encode()
                  + b"-" + str(len(self.endpoint.seen)).encode() + b"; Path=/\r\n\r\n")
        elif mode == "redirect":
            write(b"HTTP/1.1 303 See Other\r\nLocation: " + self.endpoint.location.encode()
                  + b"\r\nContent-Length: 0\r\n\r\n")
        elif mode == "bomb":
            bomb = self.endpoint.bomb()
            write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(bomb))
            write(bomb)
            seen.written = len(bomb)
        elif mode == "huge":
            write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % HUGE_BYTES)
            self.left = HUGE_BYTES
            # A pull producer: written as fast as the client reads, no faster.
            self.transport.registerProducer(self, False)
        elif mode == "headers":
            write(b"HTTP/1.1 200 OK\r\n")
            self.left = HUGE_BYTES
            self.transport.registerProducer(self, False)
        elif mode == "trickle":
            write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n")
            self.trickle = task.LoopingCall(self.drip)
            self.trickle.start(0.1)
        else:
            raise AssertionError(f"unknown mode {mode!r}")

    def drip(self) -> None:
        self.transport.write(b".")
        self.current.written += 1

    # IPullProducer, for "huge"
    def resumeProducing(self) -> None:
        n = min(CHUNK * 4, self.left)
        self.left -= n
        self.current.written += n
        if self.current.mode == "headers":
            self.transport.write(HEADER_LINES[:n])
        else:
            self.transport.write(bytes(n))
        if not self.left:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.left = 0

    def connectionLost(self, reason: Failure) -> None:
        self.endpoint.connections.discard(self)
        if self.trickle is not None and self.trickle.running:
            self.trickle.stop()
        if self.current is not None:
            self.current.closed_by_client = True
        self.endpoint.closed += 1


class HostileEndpoint:
    """An HTTP/1.1 endpoint on 127.0.0.1 that answers each drain POST in the mode it is told.

    Modes: "ok" (204), "cookie" (204 with a Set-Cookie naming this endpoint),
    "redirect" (303 to `location`), "bomb" (200, a gzip body inflating to
    BOMB_BYTES), "huge" (200, HUGE_BYTES of body as fast as it is read),
    "trickle" (200, then a byte every 100 ms, never done), "headers" (a
    status line, then header lines as fast as they are read, never done).
    """

    def __init__(self, name: str, mode: str = "ok", location: str = "", tls: Issued | None = None) -> None:
        self.name = name
        self.tls = tls
        self.standing = mode
        self.queued: collections.deque[str] = collections.deque()
        self.location = location
        self.seen: list[Seen] = []
        self.connections: set[_Connection] = set()
        self.closed = 0
        self.port: IListeningPort | None = None
        self._bomb: bytes | None = None

    def bomb(self) -> bytes:
        if self._bomb is None:
            self._bomb = gzip_bomb(BOMB_BYTES)
        return self._bomb

    def behave(self, mode: str, times: int | None = None) -> None:
        if times is None:
            self.standing = mode
            self.queued.clear()
        else:
            self.queued.extend([mode] * times)

    def next_mode(self) -> str:
        return self.queued.popleft() if self.queued else self.standing

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port.getHost().port}/logs"
        return f"http://127.0.0.1:{self.port.getHost().port}/logs"

    def delivered(self) -> list[bytes]:
        """Messages of the requests this endpoint accepted (not redirected), a retried frame id once."""
        ids, out = set(), []
        for seen in self.seen:
            if seen.mode != "redirect" and seen.frame_id not in ids:
                ids.add(seen.frame_id)
                out += seen.frames
        return out

    async def start(self) -> HostileEndpoint:
        factory = Factory.forProtocol(lambda: _Connection(self))
        if self.tls is None:
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        else:
            endpoint = SSL4ServerEndpoint(reactor, 0, server_context(self.tls), interface="127.0.0.1")
        self.port = await endpoint.listen(factory)
        return self

    async def stop(self) -> None:
        for connection in list(self.connections):
            connection.transport.abortConnection()
        if self.port is not None:
            await self.port.stopListening()


# -- node memory -----------------------------------------------------------------------------
def rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


# -- the module's world ----------------------------------------------------------------------
class World:
    """A redis-server, two CAs in one --drain-ca-file bundle, and a node that trusts it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.redis = RedisServer(os.path.join(root, "redis"))
        self.first_ca = TestCA(os.path.join(root, "ca"), name="first CA")
        self.second_ca = TestCA(os.path.join(root, "ca"), name="second CA")
        self.bundle = os.path.join(root, "ca", "bundle.pem")
        with open(self.bundle, "wb") as f:
            f.write(self.first_ca.pem_cert + self.second_ca.pem_cert)
        self.node: Node | None = None

    def dir(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)


@pytest.fixture(scope="module")
def hostile_world():
    root = tempfile.mkdtemp(prefix="logplex-hostile-")
    world = World(root)
    world.redis.start()
    try:
        world.node = start_node(world.dir("node"), world.redis.url, NODE_NAME, *ARGS,
                                "--drain-ca-file", world.bundle)
        yield world
    finally:
        try:
            if world.node is not None:
                try:
                    stop_node(world.node)
                finally:
                    world.node.proc.kill()
        finally:
            world.redis.stop()
            shutil.rmtree(root, ignore_errors=True)


class HostileDrainTests(NodeCase):
    channel_prefix = "hostile"
    timeout = 60

    @pytest.fixture(autouse=True)
    def _world(self, hostile_world):
        self.world = hostile_world
        self.node = hostile_world.node

    async def endpoint(self, name: str, mode: str = "ok", location: str = "",
                       tls: Issued | None = None) -> HostileEndpoint:
        endpoint = await HostileEndpoint(name, mode, location, tls).start()
        self.addCleanup(endpoint.stop)
        return endpoint

    async def drain_to(self, url: str) -> tuple[str, int, Sender]:
        """A new channel with a drain to url, and a sender of its token: (channel id, drain id, sender)."""
        channel_id, token = await self.channel()
        answer = await self.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url})
        self.assertEqual(answer.status, 201, answer)
        drain_id = answer.json()["id"]
        await self.until(lambda: self.api("GET", f"/v3/channels/{channel_id}/drains/{drain_id}"),
                         lambda a: a.status == 200 and a.json().get("state") is not None, 5,
                         "the node runs the new drain")
        sender = await self.blocking(Sender, self.node.syslog_port, token)
        self.addCleanup(sender.close)
        return channel_id, drain_id, sender

    async def seen(self, endpoint: HostileEndpoint, done: Callable[[list[Seen]], bool], what: str,
                   timeout: float = 10) -> list[Seen]:
        async def look():
            return list(endpoint.seen)
        return await self.until(look, done, timeout, what)

    async def attack(self, mode: str, tls: Issued | None = None) -> tuple[HostileEndpoint, dict, int, int]:
        """Five lines to a drain whose endpoint answers in `mode`.

        Returns the endpoint, the drain's state once the batch is delivered,
        and the node's RSS before and its peak RSS during the attack.
        """
        endpoint = await self.endpoint(mode, mode, tls=tls)
        channel_id, drain_id, sender = await self.drain_to(endpoint.url)
        endpoint.bomb()  # made before the attack: it is the test's memory, not the node's
        pid = self.node.proc.pid
        before, _ = rss(pid)
        reset_peak(pid)
        await self.blocking(sender.send, texts(mode, 5))
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 5,
                                      f"the batch answered by {mode} is delivered", timeout=30)
        _, peak = rss(pid)
        print(f"\n{mode}{' over TLS' if tls else ''}: node RSS {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB during "
              f"(+{(peak - before) / 2**20:.0f} MB); endpoint wrote {endpoint.seen[0].written:,} bytes")

        async def closed() -> int:
            return endpoint.closed

        # The node is done with that answer: the endpoint sees its connection end.
        await self.until(closed, lambda n: n >= 1, 10, f"the node closes the connection of the {mode} answer")
        return endpoint, state, before, peak

    # -- 1. answers are read up to a few KiB, never decoded ------------------------------------
    async def test_a_gzip_bomb_is_neither_inflated_nor_kept(self):
        endpoint, state, before, peak = await self.attack("bomb")
        self.assertLess(peak - before, RSS_GROWTH_LIMIT,
                        f"the node's RSS grew from {before:,} to {peak:,} bytes on a gzip bomb")
        [request] = endpoint.seen
        self.assertIn(request.headers.get(b"accept-encoding", b"identity"), (b"identity",))
        self.assertEqual(endpoint.delivered(), [http_frame(t) for t in texts("bomb", 5)])
        self.assertEqual(state["retried"], 0)

    async def test_an_endless_body_is_cut_off(self):
        endpoint, state, before, peak = await self.attack("huge")
        self.assertLess(peak - before, RSS_GROWTH_LIMIT,
                        f"the node's RSS grew from {before:,} to {peak:,} bytes on a {HUGE_BYTES:,} byte answer")
        [request] = endpoint.seen
        self.assertTrue(request.closed_by_client)
        # What the kernel's socket buffers hold, not what the body declared.
        self.assertLess(request.written, HUGE_BYTES // 10)

    async def test_an_endless_body_over_tls_is_cut_off(self):
        endpoint, state, before, peak = await self.attack("huge", tls=self.world.first_ca.issue(["localhost"]))
        self.assertLess(peak - before, RSS_GROWTH_LIMIT)
        [request] = endpoint.seen
        self.assertTrue(request.closed_by_client)
        self.assertLess(request.written, HUGE_BYTES // 10)

    async def test_an_endless_header_section_is_cut_off(self):
        endpoint = await self.endpoint("headers")
        endpoint.behave("headers", times=1)
        channel_id, drain_id, sender = await self.drain_to(endpoint.url)
        pid = self.node.proc.pid
        before, _ = rss(pid)
        reset_peak(pid)
        await self.blocking(sender.send, texts("headers", 5))
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 5,
                                      "the batch is delivered on a retry", timeout=30)
        _, peak = rss(pid)
        first = endpoint.seen[0]
        print(f"\nheaders: node RSS {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB during "
              f"(+{(peak - before) / 2**20:.0f} MB); endpoint wrote {first.written:,} bytes")
        self.assertLess(peak - before, RSS_GROWTH_LIMIT)
        self.assertTrue(first.closed_by_client)
        self.assertLess(first.written, 16 * 2**20)
        self.assertGreaterEqual(state["retried"], 1)
        self.assertIn("header", state["last_error"])

    # -- 2. the timeout covers the whole exchange ----------------------------------------------
    async def test_a_trickled_body_times_out_and_the_batch_is_retried(self):
        endpoint = await self.endpoint("trickle")
        endpoint.behave("trickle", times=1)
        channel_id, drain_id, sender = await self.drain_to(endpoint.url)
        lines = texts("trickle", 5)
        await self.blocking(sender.send, lines)
        seen = await self.seen(endpoint, lambda s: len(s) >= 2, "a retry after the trickled answer")
        trickled, retry = seen[:2]
        self.assertEqual(retry.frame_id, trickled.frame_id)
        self.assertTrue(trickled.closed_by_client)
        # A byte every 100 ms for the whole --http-drain-timeout, not more.
        self.assertLess(trickled.written, 4 * TIMEOUT / 0.1)
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 5,
                                      "the retried batch is delivered")
        self.assertGreaterEqual(state["retried"], 1)
        self.assertIn(f"within {TIMEOUT:g} s", state["last_error"])
        self.assertEqual(endpoint.delivered()[-5:], [http_frame(t) for t in lines])

    # -- 3. redirects are not followed ---------------------------------------------------------
    async def test_a_redirect_is_a_failed_delivery_and_is_not_followed(self):
        elsewhere = await self.endpoint("elsewhere")
        endpoint = await self.endpoint("redirect", location=elsewhere.url.replace("/logs", "/steal"))
        endpoint.behave("redirect", times=2)
        channel_id, drain_id, sender = await self.drain_to(endpoint.url)
        lines = texts("redirect", 5)
        await self.blocking(sender.send, lines)
        state = await self.wait_state(channel_id, drain_id, lambda s: s["delivered"] == 5,
                                      "the batch is delivered once the redirects stop")
        self.assertEqual(elsewhere.seen, [], "the node followed the redirect")
        self.assertEqual([s.mode for s in endpoint.seen], ["redirect", "redirect", "ok"])
        self.assertEqual(len({s.frame_id for s in endpoint.seen}), 1)
        self.assertEqual(endpoint.delivered(), [http_frame(t) for t in lines])
        self.assertEqual(state["retried"], 2)
        self.assertIn("303", state["last_error"])
        self.assertIn("redirect", state["last_error"])

    # -- 4. no cookies -------------------------------------------------------------------------
    async def test_no_cookie_goes_from_one_tenants_receiver_to_another(self):
        setter = await self.endpoint("tenant-b", "cookie")
        victim = await self.endpoint("tenant-a")
        b_channel, b_drain, b_sender = await self.drain_to(setter.url)
        a_channel, a_drain, a_sender = await self.drain_to(victim.url)
        for group in range(3):
            await self.blocking(b_sender.send, texts(f"b{group}", 2))
            await self.wait_state(b_channel, b_drain, lambda s, n=2 * (group + 1): s["delivered"] == n,
                                  "tenant B's batch is delivered")
        await self.blocking(a_sender.send, texts("a", 2))
        await self.wait_state(a_channel, a_drain, lambda s: s["delivered"] == 2,
                              "tenant A's batch is delivered")
        cookies = [(s.mode, s.headers.get(b"cookie")) for s in setter.seen + victim.seen]
        self.assertEqual([c for c in cookies if c[1] is not None], [],
                         "a drain request carried a cookie")

    # -- 5. every CA of --drain-ca-file --------------------------------------------------------
    async def test_every_ca_in_the_ca_file_is_trusted(self):
        for ca in (self.world.first_ca, self.world.second_ca):
            sink = await self.started(HttpSink(tls=ca.issue(["localhost"])))
            channel_id, drain_id, sender = await self.drain_to(sink.url)
            await self.blocking(sender.send, texts("tls", 3))
            await self.until(lambda: self.state(channel_id, drain_id), lambda s: s["delivered"] == 3, 10,
                             f"a drain to an endpoint signed by the {ca.name} delivers")
            self.assertEqual(sink.messages(), [http_frame(t) for t in texts("tls", 3)])


# -- 6. addresses that are not globally routable ------------------------------------------------
NOT_GLOBAL = [
    "http://100.100.100.200/latest/meta-data",  # shared address space (RFC 6598): cloud metadata
    "https://100.64.0.1/",
    "http://[2002:7f00:1::]/",                  # 6to4 of 127.0.0.1
    "syslog://[2002:a00:1::1]:514",             # 6to4 of 10.0.0.1
    "http://[fec0::1]/",                        # site-local
    "http://[64:ff9b::7f00:1]/",                # NAT64 of 127.0.0.1
    "http://[64:ff9b::a9fe:a9fe]/",             # NAT64 of 169.254.169.254
    "http://[::ffff:100.100.100.200]/",         # IPv4-mapped
    "http://[::7f00:1]/",                       # IPv4-compatible 127.0.0.1
    "http://[2001::1]/",                        # Teredo
    "http://198.18.0.1/",                       # benchmarking
    "http://192.0.0.170/",
    "http://240.0.0.1/",
    "http://224.0.0.1/",                        # multicast
]


@pytest.mark.parametrize("url", NOT_GLOBAL)
def test_drains_to_addresses_that_are_not_global_are_refused(public_node, url):
    channel_id, _ = public_node.channel("app")
    answer = public_node.api("POST", f"/v3/channels/{channel_id}/drains", {"url": url})
    assert answer.status == 422, answer
    assert "--allow-private-drains" in answer.json()["error"], answer
