"""Tests for logplex.ingest.http: `POST /logs` as log-shuttle speaks it, driven in memory."""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

import logplex.ingest.http
from logplex import secrets
from logplex.http.auth import Authenticator
from logplex.framing import encode_logplex1
from logplex.ingest.http import FrameIdMemory, GzipBody, GzipError, LogInput
from logplex.metrics import Metrics
from logplex.model import ANY_CHANNEL, FULL_API, Credential
from logplex.config.cache import ConfigCache
from logplex.router import Router
from logplex.settings import ListenSettings
from logplex.http.site import LogplexSite
from tests.helpers import (
    HttpReply,
    LoadedStore,
    RecordingBacklog,
    RecordingTails,
    fill_cache,
    connect,
    make_site_reactor,
    parse_reply,
    raw_request,
)

WEB_TOKEN = "t.11111111-1111-4111-8111-111111111111"
OTHER_TOKEN = "t.33333333-3333-4333-8333-333333333333"
UNKNOWN_TOKEN = "t.99999999-9999-4999-8999-999999999999"
MAX_BODY = 4096
MAX_FRAME = 1024
SHUTTLE_SECRET = "shuttle-secret"
API_SECRET = "api-secret"


def message(appname: str, text: str) -> bytes:
    return b"<190>1 2026-11-24T22:47:49.539580+00:00 shuttle %s web.1 - - %s" % (
        appname.encode(), text.encode())


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def token_auth(token: str = WEB_TOKEN) -> bytes:
    return basic("token", token)


class Node:
    """A LogInput behind a LogplexSite, over a filled cache and in-memory sinks."""

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.cache = ConfigCache()
        fill_cache(self.cache, "app-1", {"app": WEB_TOKEN})
        fill_cache(self.cache, "app-2", {"other": OTHER_TOKEN})
        self.cache.set_credential("shuttle", Credential(
            "shuttle", secrets.hash_secret(SHUTTLE_SECRET, n=2**4), frozenset({ANY_CHANNEL})))
        self.cache.set_credential("api", Credential(
            "api", secrets.hash_secret(API_SECRET, n=2**4), frozenset({FULL_API})))
        self.store = LoadedStore(self.cache)
        self.backlog = RecordingBacklog()
        self.metrics = Metrics()
        self.router = Router(self.cache, self.backlog, RecordingTails(), self.metrics)
        self.checks = 0
        self.auth = Authenticator(self.cache, reactor=None, check=self.check)
        self.reactor = make_site_reactor()
        self.input = LogInput(self.store, self.router, self.auth, self.metrics,
                              ListenSettings(max_body=max_body, max_frame=MAX_FRAME), reactor=self.reactor)
        self.site = LogplexSite(self.input.resource(), max_body=max_body, reactor=self.reactor)

    def check(self, secret: str, stored: str) -> bool:
        self.checks += 1
        return secrets.check_secret(secret, stored)

    def post(self, body: bytes = b"", auth: bytes | None = None, content_type: bytes | None = b"application/logplex-1",
             chunks: list[bytes] | None = None, **extra: bytes) -> HttpReply:
        transport = self.send(body, auth, content_type, chunks, **extra)
        # A compressed body is inflated in slices, one per reactor turn.
        for _ in range(10_000):
            if answered(transport):
                break
            self.reactor.advance(0)
        reply = parse_reply(transport.value())
        assert reply.complete
        # Every answer, whatever it is, carries a Request-Id.
        assert reply.header(b"request-id")
        return reply

    def send(self, body: bytes = b"", auth: bytes | None = None,
             content_type: bytes | None = b"application/logplex-1", chunks: list[bytes] | None = None,
             **extra: bytes):
        """Send one POST /logs on a new connection; its transport, whatever the answer is so far."""
        headers = {}
        if auth is not None:
            headers[b"Authorization"] = auth
        if content_type is not None:
            headers[b"Content-Type"] = content_type
        for name, value in extra.items():
            headers[name.replace("_", "-").encode()] = value
        protocol, transport = connect(self.site)
        protocol.dataReceived(raw_request(b"POST", b"/logs", headers, body, chunks))
        return transport

    def error(self, reply: HttpReply) -> str:
        assert reply.header(b"content-type") == b"application/json"
        return reply.json()["error"]


def answered(transport) -> bool:
    return b"\r\n\r\n" in transport.value()


@pytest.fixture
def node() -> Node:
    return Node()


def test_token_sender_gets_204_and_messages_carry_the_token_name(node):
    body = encode_logplex1([message("whatever-the-app-says", "one"), message(OTHER_TOKEN, "two")])
    reply = node.post(body, token_auth(), Logplex_Msg_Count=b"2")
    assert reply.status == 204
    assert reply.body == b""
    # Authenticated with one token: all of it goes to that token's channel and name.
    assert node.backlog.calls == [("app-1", [message("app", "one"), message("app", "two")])]
    assert node.metrics.get("logplex_http_requests_total", status="204") == 1


def test_a_chunked_body_is_read_whole(node):
    body = encode_logplex1([message("x", f"line {i}") for i in range(5)])
    reply = node.post(chunks=[body[:7], body[7:100], body[100:]], auth=token_auth())
    assert reply.status == 204
    assert node.backlog.messages("app-1") == [message("app", f"line {i}") for i in range(5)]


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress], ids=["gzip", "zlib"])
def test_a_compressed_body_is_decompressed(node, compress):
    body = compress(encode_logplex1([message("x", "zipped")]))
    reply = node.post(body, token_auth(), Content_Encoding=b"gzip")
    assert reply.status == 204
    assert node.backlog.messages("app-1") == [message("app", "zipped")]


def test_an_unknown_content_encoding_is_415(node):
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth(), Content_Encoding=b"br")
    assert reply.status == 415
    assert node.backlog.calls == []


def test_bearer_token(node):
    reply = node.post(encode_logplex1([message("x", "a")]), b"Bearer " + OTHER_TOKEN.encode())
    assert reply.status == 204
    assert node.backlog.calls == [("app-2", [message("other", "a")])]


def test_any_channel_credential_routes_each_message_by_its_app_name(node):
    body = encode_logplex1([message(WEB_TOKEN, "a"), message(OTHER_TOKEN, "b"),
                            message(UNKNOWN_TOKEN, "c"), message(WEB_TOKEN, "d")])
    reply = node.post(body, basic("shuttle", SHUTTLE_SECRET))
    assert reply.status == 204
    assert sorted(node.backlog.calls) == [
        ("app-1", [message("app", "a"), message("app", "d")]),
        ("app-2", [message("other", "b")]),
    ]
    assert node.metrics.get("logplex_messages_unknown_token_total") == 1


def test_a_credential_without_any_channel_is_403(node):
    reply = node.post(encode_logplex1([message(WEB_TOKEN, "a")]), basic("api", API_SECRET))
    assert reply.status == 403
    assert node.error(reply)
    assert node.backlog.calls == []


@pytest.mark.parametrize("auth", [
    token_auth(UNKNOWN_TOKEN),                # unknown token
    b"Bearer " + UNKNOWN_TOKEN.encode(),      # unknown bearer token
    basic("shuttle", "wrong"),                # wrong secret
    basic("nobody", SHUTTLE_SECRET),          # unknown credential
    None,                                     # no Authorization at all
    b"Basic !!!not-base64!!!",                # unreadable Basic
    b"Digest username=token",                 # another scheme
], ids=["unknown-token", "unknown-bearer", "wrong-secret", "unknown-user", "none", "bad-basic", "digest"])
def test_missing_or_bad_auth_is_401_with_a_basic_challenge(node, auth):
    reply = node.post(encode_logplex1([message(WEB_TOKEN, "a")]), auth)
    assert reply.status == 401
    assert reply.header(b"www-authenticate") == b"Basic realm=Logplex"
    assert node.error(reply)
    assert node.backlog.calls == []


def test_a_token_made_elsewhere_a_moment_ago_is_looked_up_again_once_the_config_caught_up(node):
    from twisted.internet.defer import succeed

    from logplex.router import TokenMisses

    def catch_up():  # what the feed brings: the token made through another worker
        caught.append(1)
        fill_cache(node.cache, "app-3", {"new": UNKNOWN_TOKEN})
        return succeed(None)

    caught = []
    node.router.misses = TokenMisses(catch_up, node.reactor.seconds)
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth(UNKNOWN_TOKEN))
    assert reply.status == 204 and caught == [1]
    assert node.backlog.calls == [("app-3", [message("new", "a")])]
    # A token still unknown after the catch-up is 401, and for a while without another catch-up.
    typo = UNKNOWN_TOKEN.replace("9", "8")
    assert node.post(encode_logplex1([message("x", "b")]), token_auth(typo)).status == 401
    assert node.post(encode_logplex1([message("x", "c")]), token_auth(typo)).status == 401
    assert caught == [1, 1]


@pytest.mark.parametrize("content_type", [None, b"text/plain", b"application/json", b"application/logplex-2"])
def test_a_wrong_content_type_is_415(node, content_type):
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth(), content_type=content_type)
    assert reply.status == 415
    assert "application/logplex-1" in node.error(reply)
    assert node.backlog.calls == []


@pytest.mark.parametrize("content_type", [
    b"application/x-logplex-1", b"Application/Logplex-1", b"application/logplex-1; charset=utf-8"])
def test_content_type_variants_are_accepted(node, content_type):
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth(), content_type=content_type)
    assert reply.status == 204
    assert node.backlog.messages("app-1") == [message("app", "a")]


@pytest.mark.parametrize("body", [
    b"hello world",                                   # not octet-counted
    b"20 short",                                      # truncated frame
    encode_logplex1([message("x", "a")]) + b"12",     # truncated inside a count
    b"12ab <190>1 x",                                 # count not a number
    b"%d " % (MAX_FRAME + 1) + b"x" * (MAX_FRAME + 1),  # frame over max_frame
], ids=["lines", "truncated", "truncated-count", "bad-count", "too-long"])
def test_a_malformed_body_is_400_with_a_sentence_and_nothing_is_routed(node, body):
    reply = node.post(body, token_auth())
    assert reply.status == 400
    error = node.error(reply)
    assert error.startswith("Malformed logplex-1 body: ")
    assert node.backlog.calls == []


@pytest.mark.parametrize("count", [b"1", b"3", b"two"])
def test_a_message_count_mismatch_is_400_and_nothing_is_routed(node, count):
    body = encode_logplex1([message("x", "a"), message("x", "b")])
    reply = node.post(body, token_auth(), Logplex_Msg_Count=count)
    assert reply.status == 400
    assert node.error(reply) == "Message count mismatch"
    assert node.backlog.calls == []


def test_a_body_over_max_body_is_413():
    node = Node(max_body=256)
    body = encode_logplex1([message("x", f"line {i}") for i in range(10)])
    assert len(body) > 256
    reply = node.post(body, token_auth())
    assert reply.status == 413
    assert node.error(reply)
    chunked = node.post(chunks=[body[:200], body[200:]], auth=token_auth())
    assert chunked.status == 413
    assert node.backlog.calls == []


def test_a_gzip_bomb_is_413():
    node = Node(max_body=256)
    bomb = gzip.compress(b"9" * 100_000)
    assert len(bomb) < 256
    reply = node.post(bomb, token_auth(), Content_Encoding=b"gzip")
    assert reply.status == 413
    assert node.backlog.calls == []


@pytest.mark.parametrize("body", [
    b"this is not gzip",
    gzip.compress(encode_logplex1([message("x", "a")]))[:-12],  # truncated
], ids=["garbage", "truncated"])
def test_a_corrupt_gzip_body_is_400(node, body):
    reply = node.post(body, token_auth(), Content_Encoding=b"gzip")
    assert reply.status == 400
    assert node.error(reply)
    assert node.backlog.calls == []


def test_a_multi_member_gzip_body_is_not_silently_cut(node):
    first = gzip.compress(encode_logplex1([message("x", "first")]))
    second = gzip.compress(encode_logplex1([message("x", "second")]))
    reply = node.post(first + second, token_auth(), Content_Encoding=b"gzip")
    # Either all of it is delivered, or the sender is told the body was refused.
    delivered = node.backlog.messages("app-1") == [message("app", "first"), message("app", "second")]
    assert delivered or (reply.status == 400 and node.backlog.calls == [])


def test_a_node_that_has_not_loaded_its_config_is_503(node):
    node.store.loaded = False
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth())
    assert reply.status == 503
    assert "SYSTEM BOOTING" in node.error(reply)
    assert node.backlog.calls == []


def test_denied_ingress_is_503(node):
    node.router.deny_ingress = True
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth())
    assert reply.status == 503
    assert node.error(reply)
    assert node.backlog.calls == []


def test_a_retransmitted_frame_id_is_routed_once(node):
    body = encode_logplex1([message("x", "once")])
    first = node.post(body, token_auth(), Logplex_Frame_Id=b"frame-1")
    again = node.post(body, token_auth(), Logplex_Frame_Id=b"frame-1")
    other = node.post(body, token_auth(), Logplex_Frame_Id=b"frame-2")
    assert (first.status, again.status, other.status) == (204, 204, 204)
    assert node.backlog.messages("app-1") == [message("app", "once")] * 2


def test_a_refused_frame_is_accepted_when_retried(node):
    body = encode_logplex1([message("x", "a")])
    refused = node.post(body, token_auth(), Logplex_Frame_Id=b"frame-1", Logplex_Msg_Count=b"9")
    retried = node.post(body, token_auth(), Logplex_Frame_Id=b"frame-1")
    assert (refused.status, retried.status) == (400, 204)
    assert node.backlog.messages("app-1") == [message("app", "a")]


def test_the_same_frame_id_from_another_sender_is_not_a_retransmission(node):
    node.post(encode_logplex1([message("x", "a")]), token_auth(WEB_TOKEN), Logplex_Frame_Id=b"1")
    node.post(encode_logplex1([message("x", "b")]), token_auth(OTHER_TOKEN), Logplex_Frame_Id=b"1")
    assert node.backlog.messages("app-2") == [message("other", "b")]


def test_sender_losses_are_counted(node):
    reply = node.post(encode_logplex1([message("x", "a")]), token_auth(),
                      Logplex_Drop_Count=b"5", Logplex_Lost_Count=b"2")
    assert reply.status == 204
    assert node.metrics.get("logplex_sender_losses_total", kind="dropped") == 5
    assert node.metrics.get("logplex_sender_losses_total", kind="lost") == 2


def test_a_retransmission_does_not_count_its_losses_twice(node):
    body = encode_logplex1([message("x", "a")])
    for _ in range(2):
        node.post(body, token_auth(), Logplex_Frame_Id=b"frame-1", Logplex_Drop_Count=b"5")
    assert node.metrics.get("logplex_sender_losses_total", kind="dropped") == 5


def test_the_credential_check_is_paid_once(node):
    for _ in range(3):
        assert node.post(encode_logplex1([message(WEB_TOKEN, "a")]),
                         basic("shuttle", SHUTTLE_SECRET)).status == 204
    assert node.checks == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.one_of(
        st.binary(max_size=600),
        st.lists(st.binary(max_size=80), max_size=6).map(encode_logplex1),
        st.lists(st.binary(max_size=80), max_size=6).map(lambda ms: gzip.compress(encode_logplex1(ms))),
    ),
    gzipped=st.booleans(),
    # Header values twisted.web itself accepts (it answers control bytes with a bare 400).
    count=st.one_of(st.none(), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=4)),
)
def test_arbitrary_bodies_never_get_a_500(body, gzipped, count):
    node = Node(max_body=512)
    extra = {}
    if gzipped:
        extra["Content_Encoding"] = b"gzip"
    if count is not None:
        extra["Logplex_Msg_Count"] = count.encode()
    reply = node.post(body, token_auth(), **extra)
    assert reply.status in (204, 400, 413)
    if reply.status != 204:
        assert node.error(reply)


# --- compressed bodies: linear, bounded, sliced ---------------------------------------------

def inflate(body: bytes, limit: int = 1 << 20, **options) -> tuple[bytes, GzipBody]:
    inflating = GzipBody(body, limit, **options)
    for _ in range(1_000_000):
        if inflating.step():
            return inflating.result(), inflating
    raise AssertionError("GzipBody never finished")


@settings(max_examples=200, deadline=None)
@given(
    members=st.lists(st.tuples(st.binary(max_size=3000), st.sampled_from(["gzip", "zlib"]),
                               st.integers(0, 70)), min_size=1, max_size=6),
    slice_in=st.integers(1, 4096),
    slice_out=st.integers(1, 4096),
)
def test_every_member_is_inflated_whatever_the_slices(members, slice_in, slice_out):
    body = b"".join((gzip.compress(data) if kind == "gzip" else zlib.compress(data)) + b"\0" * padding
                    for data, kind, padding in members)
    out, inflating = inflate(body, slice_in=slice_in, slice_out=slice_out)
    assert out == b"".join(data for data, _, _ in members)
    assert inflating.members == len(members)


def test_an_empty_body_inflates_to_nothing():
    assert inflate(b"")[0] == b""


class CountingZlib:
    """zlib, counting the input bytes handed to inflaters: the copying a body costs."""

    error = zlib.error

    def __init__(self) -> None:
        self.fed = 0

    def decompressobj(self, **kw):
        inner = zlib.decompressobj(**kw)
        counter = self

        class Counted:
            def decompress(self, data, max_length=0):
                counter.fed += len(data)
                return inner.decompress(data, max_length)

            def __getattr__(self, name):
                return getattr(inner, name)

        return Counted()


@pytest.mark.parametrize("members", [1_000, 20_000])
def test_inflating_many_tiny_members_costs_linear_work(monkeypatch, members):
    """The old loop handed each member the whole rest of the body: 10 MB of empty members took 61 s."""
    counting = CountingZlib()
    monkeypatch.setattr(logplex.ingest.http, "zlib", counting)
    body = gzip.compress(b"") * members
    inflate(body, max_members=members)
    assert counting.fed <= 2 * len(body) + 1024 * members


def test_each_step_is_bounded_in_input_and_output():
    bomb = gzip.compress(b"\0" * (8 << 20))
    inflating = GzipBody(bomb, 1 << 20, slice_in=4096, slice_out=64 * 1024)
    sizes = []
    with pytest.raises(GzipError) as refused:
        while not inflating.step():
            sizes.append(inflating.size)
    assert refused.value.reason == "gzip_too_large"
    assert max(b - a for a, b in zip([0, *sizes], sizes)) <= 64 * 1024
    # It stopped as soon as it passed the limit, not after inflating the bomb.
    assert inflating.size <= (1 << 20) + 64 * 1024


def test_more_members_than_the_limit_are_refused():
    with pytest.raises(GzipError) as refused:
        inflate(gzip.compress(b"x") * 11, max_members=10)
    assert refused.value.reason == "gzip_members"
    assert "more than 10 gzip members" in refused.value.message
    assert inflate(gzip.compress(b"x") * 10, max_members=10)[0] == b"x" * 10


@pytest.mark.parametrize("body", [b"\0" * 100, gzip.compress(b"abc") + b"junk"], ids=["zeros", "trailing junk"])
def test_what_is_not_gzip_is_malformed(body):
    with pytest.raises(GzipError) as refused:
        inflate(body)
    assert refused.value.reason == "gzip_malformed"


def test_too_many_gzip_members_are_a_counted_400():
    node = Node(max_body=1 << 20)
    body = gzip.compress(encode_logplex1([message("x", "a")])) + gzip.compress(b"") * 1000
    reply = node.post(body, token_auth(), Content_Encoding=b"gzip")
    assert reply.status == 400
    assert "more than 1000 gzip members" in node.error(reply)
    assert node.metrics.get("logplex_http_refused_total", reason="gzip_members") == 1
    assert node.backlog.calls == []


def test_a_gzip_bomb_is_a_counted_413():
    node = Node(max_body=256)
    reply = node.post(gzip.compress(b"9" * 100_000), token_auth(), Content_Encoding=b"gzip")
    assert reply.status == 413
    assert node.metrics.get("logplex_http_refused_total", reason="gzip_too_large") == 1


def big_gzip_body(count: int) -> bytes:
    return gzip.compress(encode_logplex1([message("x", f"line {i:06d} " + "y" * 50) for i in range(count)]))


class ReactorTurns:
    """Stands in for the reactor's turns the inflating cooperator waits for:
    a Clock's advance(0) would run every turn at once."""

    def __init__(self, node: Node) -> None:
        self.pending: list = []
        # One slice a turn, whatever this machine's speed.
        node.input.cooperator = task.Cooperator(terminationPredicateFactory=lambda: lambda: True,
                                                scheduler=self.pending.append)

    def turn(self) -> None:
        self.pending.pop(0)()


def test_a_compressed_body_is_inflated_in_slices_while_others_are_served():
    node = Node(max_body=4 << 20)
    turns = ReactorTurns(node)
    hostile = node.send(big_gzip_body(30_000), token_auth(), Content_Encoding=b"gzip")
    turns.turn()
    assert not answered(hostile)
    # Another sender, meanwhile, is answered at once.
    other = node.send(encode_logplex1([message("x", "other")]), token_auth(OTHER_TOKEN))
    assert parse_reply(other.value()).status == 204
    count = 1
    while not answered(hostile):
        turns.turn()
        count += 1
    assert count > 5
    assert parse_reply(hostile.value()).status == 204
    assert len(node.backlog.messages("app-1")) == 30_000


def test_a_sender_that_leaves_while_its_body_is_inflated_gets_nothing_routed():
    node = Node(max_body=4 << 20)
    turns = ReactorTurns(node)
    protocol, transport = connect(node.site)
    protocol.dataReceived(raw_request(b"POST", b"/logs", {
        b"Authorization": token_auth(), b"Content-Type": b"application/logplex-1",
        b"Content-Encoding": b"gzip"}, big_gzip_body(30_000)))
    turns.turn()
    protocol.connectionLost(Failure(ConnectionDone()))
    while turns.pending:
        turns.turn()
    assert node.backlog.calls == []
    assert node.metrics.get("logplex_http_requests_total", status="499") == 1


# --- frame ids: bounded in bytes ------------------------------------------------------------

def test_a_frame_id_over_256_bytes_is_a_counted_400(node):
    body = encode_logplex1([message("x", "a")])
    reply = node.post(body, token_auth(), Logplex_Frame_Id=b"f" * 257)
    assert reply.status == 400
    assert node.error(reply) == ("The Logplex-Frame-Id header is 257 bytes long; send an id of at most "
                                 "256 bytes (log-shuttle sends 32 hex digits).")
    assert node.metrics.get("logplex_http_refused_total", reason="frame_id_too_long") == 1
    assert node.backlog.calls == []
    assert node.post(body, token_auth(), Logplex_Frame_Id=b"f" * 256).status == 204


def test_frame_id_memory_holds_at_most_its_count_in_a_fixed_size_each():
    memory = FrameIdMemory(size=20_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30_000):
            memory.remember(b"('app-%d', 'web') " % i + b"%0256d" % i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == 20_000
    assert held <= memory.max_bytes
    # The newest are kept, the oldest forgotten.
    assert memory.seen(b"('app-29999', 'web') " + b"%0256d" % 29_999)
    assert not memory.seen(b"('app-0', 'web') " + b"%0256d" % 0)


def test_frame_ids_are_forgotten_after_their_ttl():
    clock = task.Clock()
    memory = FrameIdMemory(ttl=600, clock=clock.seconds)
    memory.remember(b"a")
    clock.advance(599)
    assert memory.seen(b"a")
    clock.advance(2)
    assert not memory.seen(b"a")
    assert len(memory) == 0


def healthcheck(node: Node) -> HttpReply:
    protocol, transport = connect(node.site)
    protocol.dataReceived(raw_request(b"GET", b"/healthcheck", {}, b"", None))
    return parse_reply(transport.value())


def test_healthcheck_is_ok_only_while_the_node_takes_logs(node):
    reply = healthcheck(node)
    assert (reply.status, reply.body) == (200, b"OK")
    node.router.deny_ingress = True  # the admin shell's switch: a balancer should go elsewhere
    reply = healthcheck(node)
    assert (reply.status, reply.body) == (503, b"INGRESS OFF")
    node.router.deny_ingress = False
    node.store.loaded = False
    reply = healthcheck(node)
    assert (reply.status, reply.body) == (503, b"SYSTEM BOOTING")
