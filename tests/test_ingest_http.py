"""Tests for logplex.ingest.http: `POST /logs` as log-shuttle speaks it, driven in memory."""

from __future__ import annotations

import base64
import gzip
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logplex import secrets
from logplex.auth import Authenticator
from logplex.framing import encode_logplex1
from logplex.ingest.http import LogInput
from logplex.metrics import Metrics
from logplex.model import ANY_CHANNEL, FULL_API, Credential
from logplex.redis.config import ConfigCache
from logplex.router import Router
from logplex.web import LogplexSite
from tests.helpers import (
    HttpReply,
    LoadedStore,
    RecordingBacklog,
    RecordingTails,
    fill_cache,
    http_exchange,
    make_site_reactor,
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
        self.input = LogInput(self.store, self.router, self.auth, self.metrics,
                              max_body=max_body, max_frame=MAX_FRAME)
        self.site = LogplexSite(self.input.resource(), max_body=max_body, reactor=make_site_reactor())

    def check(self, secret: str, stored: str) -> bool:
        self.checks += 1
        return secrets.check_secret(secret, stored)

    def post(self, body: bytes = b"", auth: bytes | None = None, content_type: bytes | None = b"application/logplex-1",
             chunks: list[bytes] | None = None, **extra: bytes) -> HttpReply:
        headers = {}
        if auth is not None:
            headers[b"Authorization"] = auth
        if content_type is not None:
            headers[b"Content-Type"] = content_type
        for name, value in extra.items():
            headers[name.replace("_", "-").encode()] = value
        reply = http_exchange(self.site, raw_request(b"POST", b"/logs", headers, body, chunks))
        assert reply.complete
        # Every answer, whatever it is, carries a Request-Id.
        assert reply.header(b"request-id")
        return reply

    def error(self, reply: HttpReply) -> str:
        assert reply.header(b"content-type") == b"application/json"
        return reply.json()["error"]


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
