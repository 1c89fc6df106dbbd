"""End to end through a real node: syslog over TCP and POST /logs in, sessions and live tails out."""

from __future__ import annotations

import gzip
import http.client
import re
import socket
import time
import uuid

import pytest

from tests.harness.client import (
    ADMIN,
    TS,
    basic,
    closed_by_peer,
    http_request,
    logplex1,
    octet,
    send_syslog,
    syslog_message,
    unique,
    wait_for,
)

UNKNOWN_TOKEN = "t.00000000-0000-4000-8000-000000000000"
CHALLENGE = "Basic realm=Logplex"


def line(name: str, procid: str, text: str) -> str:
    """A tail line as a reader sees it."""
    return f"{TS} {name}[{procid}]: {text}"


def token_auth(token: str) -> str:
    return basic("token", token)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


class Tail:
    """A live session read as a client would: the chunked body, bit by bit."""

    def __init__(self, node, url: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=5)
        self.conn.request("GET", url.split(str(node.api_port), 1)[1])
        self.sock = self.conn.sock
        self._response: http.client.HTTPResponse | None = None
        self.received = b""

    def response(self, timeout: float = 2.0) -> http.client.HTTPResponse:
        if self._response is None:
            self.sock.settimeout(timeout)
            self._response = self.conn.getresponse()
        return self._response

    def lines(self) -> list[str]:
        return self.received.decode().splitlines()

    def read_until(self, count: int, timeout: float = 2.0) -> list[str]:
        """The lines read once there are count of them, or all that came within timeout."""
        deadline = time.monotonic() + timeout
        try:
            response = self.response(timeout)
            while len(self.lines()) < count or not self.received.endswith(b"\n"):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.sock.settimeout(remaining)
                data = response.read1(65536)
                if not data:
                    break
                self.received += data
        except TimeoutError:
            # The socket's file refuses reads after a timeout: this tail is done.
            pass
        return self.lines()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self.conn.close()


def open_tail(node, channel_id: str, **options) -> Tail:
    """A tail session, once the node has it registered (so no live line can miss it)."""
    before = node.metric("logplex_active_tails")
    tail = Tail(node, node.session(channel_id, tail=True, **options))
    wait_for(lambda: node.metric("logplex_active_tails"), lambda v: v > before)
    return tail


# -- syslog over TCP -------------------------------------------------------------------------------
def test_octet_counted_and_lf_framed_lines_on_one_connection(node):
    channel_id, tokens = node.channel("app", "router")
    app, router = tokens["app"], tokens["router"]
    data = (
        octet(syslog_message(app, "web.1", "one"))
        + syslog_message(app, "web.2", "two") + b"\n"
        + octet(syslog_message(router, "router", "three at=info") + b"\n")
        + syslog_message(app, "worker.1", "four") + b"\r\n"
        + octet(syslog_message(app, "web.1", "five", sd='[origin ip="10.0.0.1"]'))
        + syslog_message(app, "web.1", "six \u00fcber") + b"\n"
    )
    send_syslog(node.syslog_port, data)
    expected = [
        line("app", "web.1", "one"),
        line("app", "web.2", "two"),
        line("router", "router", "three at=info"),
        line("app", "worker.1", "four"),
        line("app", "web.1", "five"),
        line("app", "web.1", "six \u00fcber"),
    ]
    assert node.wait_backlog(channel_id, 6) == expected
    body = node.session_body(channel_id)
    assert app.encode() not in body and router.encode() not in body


def test_frames_split_across_writes_are_joined(node):
    channel_id, tokens = node.channel("app")
    data = octet(syslog_message(tokens["app"], "web.1", "split counted")) + \
        syslog_message(tokens["app"], "web.1", "split line") + b"\n"
    with connect(node.syslog_port) as s:
        # Small unbuffered writes, so the node reads the frames in pieces.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 7):
            s.sendall(data[i:i + 7])
        assert node.wait_backlog(channel_id, 2) == [
            line("app", "web.1", "split counted"), line("app", "web.1", "split line"),
        ]


def test_several_connections_keep_each_senders_order(node):
    channel_id, tokens = node.channel("app")
    socks = [connect(node.syslog_port) for _ in range(3)]
    try:
        for i in range(5):
            for n, s in enumerate(socks, 1):
                s.sendall(octet(syslog_message(tokens["app"], f"web.{n}", f"msg {i}")))
        lines = node.wait_backlog(channel_id, 15)
    finally:
        for s in socks:
            s.close()
    assert sorted(lines) == sorted(line("app", f"web.{n}", f"msg {i}") for n in (1, 2, 3) for i in range(5))
    for n in (1, 2, 3):
        assert [l for l in lines if f"[web.{n}]" in l] == [line("app", f"web.{n}", f"msg {i}") for i in range(5)]


def test_unknown_tokens_and_malformed_lines_are_dropped_and_counted(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    unknown_before = node.metric("logplex_messages_unknown_token_total")
    malformed_before = node.metric("logplex_messages_malformed_total")
    with connect(node.syslog_port) as s:
        s.sendall(
            octet(syslog_message(app, "web.1", "first"))
            + octet(syslog_message(UNKNOWN_TOKEN, "web.1", "nobody's"))
            + b"this is not syslog at all\n"
            + octet(b"<134>1 2024-05-06T07:08:09Z host")
            + octet(b"<999>1 " + syslog_message(app, "web.1", "bad pri")[7:])
            + syslog_message(app, "web.1", "second") + b"\n"
        )
        assert node.wait_backlog(channel_id, 2) == [line("app", "web.1", "first"), line("app", "web.1", "second")]
        assert node.metric("logplex_messages_unknown_token_total") - unknown_before == 1
        assert node.metric("logplex_messages_malformed_total") - malformed_before == 3
        # The connection is still open and still routed.
        s.sendall(octet(syslog_message(app, "web.1", "third")))
        assert node.wait_backlog(channel_id, 3)[-1] == line("app", "web.1", "third")


def test_unknown_tokens_are_in_the_nodes_log_once_a_minute_with_a_count_never_whole(node):
    typo = f"t.{uuid.uuid4()}"
    before = node.metric("logplex_messages_unknown_token_total")
    with connect(node.syslog_port) as s:
        # One line first, read on its own, then the rest: the kernel may hand all 50 to one read.
        s.sendall(octet(syslog_message(typo, "web.1", "lost 0")))
        assert wait_for(lambda: node.metric("logplex_messages_unknown_token_total") - before, lambda n: n == 1) == 1
        for i in range(1, 50):
            s.sendall(octet(syslog_message(typo, "web.1", f"lost {i}")))
    assert wait_for(lambda: node.metric("logplex_messages_unknown_token_total") - before, lambda n: n == 50) == 50
    told = [entry for entry in node.proc.log_text().splitlines() if f"token='{typo[:8]}" in entry]
    # The first read's lines at once; the rest wait for the minute's line, not 49 more lines.
    assert len(told) == 1, told
    assert "messages_dropped reason='unknown token' " in told[0]
    assert 1 <= int(re.search(r" count=(\d+) ", told[0])[1]) < 50, told[0]
    assert typo not in node.proc.log_text()


def test_a_deleted_channels_token_is_unknown(node):
    channel_id, tokens = node.channel("app")
    assert node.api("DELETE", f"/v3/channels/{channel_id}").status == 204
    before = node.metric("logplex_messages_unknown_token_total")
    send_syslog(node.syslog_port, octet(syslog_message(tokens["app"], "web.1", "too late")))
    assert wait_for(lambda: node.metric("logplex_messages_unknown_token_total") - before) == 1


def test_a_non_numeric_octet_count_closes_only_that_connection(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    errors_before = node.metric("logplex_framing_errors_total")
    with connect(node.syslog_port) as good, connect(node.syslog_port) as bad:
        good.sendall(octet(syslog_message(app, "web.1", "before")))
        assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "before")]
        bad.sendall(b"12x " + syslog_message(app, "web.2", "garbled"))
        assert closed_by_peer(bad) == "eof"
        good.sendall(octet(syslog_message(app, "web.1", "after")))
        assert node.wait_backlog(channel_id, 2) == [line("app", "web.1", "before"), line("app", "web.1", "after")]
    assert node.metric("logplex_framing_errors_total") - errors_before == 1


def test_frames_before_a_broken_one_in_the_same_read_are_delivered(node):
    channel_id, tokens = node.channel("app")
    with connect(node.syslog_port) as s:
        s.sendall(octet(syslog_message(tokens["app"], "web.1", "complete")) + b"12x <134>1 broken")
        assert closed_by_peer(s) == "eof"
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "complete")]


def test_a_frame_over_64_kib_closes_the_connection(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    with connect(node.syslog_port) as s:
        s.sendall(b"65537 " + syslog_message(app, "web.1", "x" * 100))
        assert closed_by_peer(s) == "eof"
    with connect(node.syslog_port) as s:
        s.sendall(syslog_message(app, "web.1", "y" * 70000))
        # The node may close with some of the line unread, which TCP reports as a reset.
        assert closed_by_peer(s) in ("eof", "reset")
    assert node.backlog(channel_id) == []


def test_a_frame_of_exactly_64_kib_is_accepted(node):
    channel_id, tokens = node.channel("app")
    head = syslog_message(tokens["app"], "web.1", "")
    message = head + b"z" * (65536 - len(head))
    assert len(message) == 65536
    with connect(node.syslog_port) as s:
        s.sendall(octet(message) + octet(syslog_message(tokens["app"], "web.1", "next")))
        lines = node.wait_backlog(channel_id, 2)
        assert lines == [line("app", "web.1", "z" * (65536 - len(head))), line("app", "web.1", "next")]
        assert closed_by_peer(s, timeout=0.1) == ""


def test_every_syslog_listener_accepts(node):
    assert len(node.syslog_ports) == 2
    channel_id, tokens = node.channel("app")
    for n, port in enumerate(node.syslog_ports, 1):
        send_syslog(port, octet(syslog_message(tokens["app"], "web.1", f"via listener {n}")))
        assert node.wait_backlog(channel_id, n)[-1] == line("app", "web.1", f"via listener {n}")


# -- POST /logs ---------------------------------------------------------------------------------------
def test_post_logs_with_a_token(node):
    channel_id, tokens = node.channel("app")
    other_channel, other = node.channel("app")
    body = logplex1([
        syslog_message(tokens["app"], "web.1", "hello"),
        syslog_message("anything", "web.2", "named by the credential"),
        # A token sender writes to its own channel only, whatever APP-NAME says.
        syslog_message(other["app"], "web.3", "not to the other channel"),
    ])
    answer = node.post_logs(body, auth=token_auth(tokens["app"]))
    assert answer.status == 204 and answer.body == b"", answer
    assert node.wait_backlog(channel_id, 3) == [
        line("app", "web.1", "hello"),
        line("app", "web.2", "named by the credential"),
        line("app", "web.3", "not to the other channel"),
    ]
    assert node.backlog(other_channel) == []


def test_post_logs_with_a_trailing_slash_is_the_same_as_without(node):
    # logplex's own suite posts to /logs/.
    channel_id, tokens = node.channel("app")
    body = logplex1([syslog_message(tokens["app"], "web.1", "slash")])
    answer = http_request(node.logs_port, "POST", "/logs/", body,
                          {"Authorization": token_auth(tokens["app"]), "Content-Type": "application/logplex-1"})
    assert answer.status == 204, answer
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "slash")]
    refused = http_request(node.logs_port, "POST", "/logs/", body, {"Content-Type": "application/logplex-1"})
    assert refused.status == 401, refused


def test_the_log_input_answers_healthcheck_for_its_load_balancer(node):
    answer = http_request(node.logs_port, "GET", "/healthcheck")
    assert (answer.status, answer.body) == (200, b"OK"), answer
    assert answer.headers.get("content-type") == "text/plain", answer
    assert http_request(node.logs_port, "POST", "/healthcheck", b"").status == 405


def test_post_logs_chunked_without_content_length(node):
    channel_id, tokens = node.channel("app")
    body = logplex1([syslog_message(tokens["app"], "web.1", f"chunk {i}") for i in range(4)])
    pieces = [body[i:i + 50] for i in range(0, len(body), 50)]
    answer = node.post_logs(iter(pieces), auth=token_auth(tokens["app"]), chunked=True)
    assert answer.status == 204, answer
    assert node.wait_backlog(channel_id, 4) == [line("app", "web.1", f"chunk {i}") for i in range(4)]


def test_post_logs_gzip(node):
    channel_id, tokens = node.channel("app")
    body = gzip.compress(logplex1([syslog_message(tokens["app"], "web.1", "zipped")]))
    answer = node.post_logs(body, auth=token_auth(tokens["app"]), headers={"Content-Encoding": "gzip"})
    assert answer.status == 204, answer
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "zipped")]


def test_post_logs_with_bearer_token_and_x_logplex_1(node):
    channel_id, tokens = node.channel("app")
    body = logplex1([syslog_message(tokens["app"], "web.1", "bearer")])
    answer = node.post_logs(body, auth=f"Bearer {tokens['app']}", content_type="application/x-logplex-1")
    assert answer.status == 204, answer
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "bearer")]


def test_post_logs_with_an_any_channel_credential_routes_by_app_name(node):
    first, first_tokens = node.channel("app", "router")
    second, second_tokens = node.channel("heroku")
    body = logplex1([
        syslog_message(first_tokens["app"], "web.1", "to first"),
        syslog_message(second_tokens["heroku"], "api", "to second"),
        syslog_message(UNKNOWN_TOKEN, "web.1", "to nobody"),
        syslog_message(first_tokens["router"], "router", "to first again"),
    ])
    answer = node.post_logs(body, auth=basic(*ADMIN), headers={"Logplex-Msg-Count": "4"})
    assert answer.status == 204, answer
    assert node.wait_backlog(first, 2) == [line("app", "web.1", "to first"), line("router", "router", "to first again")]
    assert node.wait_backlog(second, 1) == [line("heroku", "api", "to second")]


def test_post_logs_message_count_mismatch_is_400_and_delivers_nothing(node):
    channel_id, tokens = node.channel("app")
    auth = token_auth(tokens["app"])
    body = logplex1([syslog_message(tokens["app"], "web.1", "counted wrong")] * 2)
    answer = node.post_logs(body, auth=auth, headers={"Logplex-Msg-Count": "3"})
    assert answer.status == 400, answer
    assert answer.json() == {"error": "Message count mismatch"}
    marker = logplex1([syslog_message(tokens["app"], "web.1", "marker")])
    assert node.post_logs(marker, auth=auth, headers={"Logplex-Msg-Count": "1"}).status == 204
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "marker")]


def test_post_logs_needs_valid_auth(node, limited_credentials):
    channel_id, tokens = node.channel("app")
    body = logplex1([syslog_message(tokens["app"], "web.1", "refused")])
    for auth in (None, token_auth(UNKNOWN_TOKEN), f"Bearer {UNKNOWN_TOKEN}", basic("admin", "wrong"),
                 basic("nobody", "x"), "Basic %%%"):
        answer = node.post_logs(body, auth=auth)
        assert answer.status == 401, (auth, answer)
        assert answer.header("WWW-Authenticate") == CHALLENGE, (auth, answer.headers)

    api_only = limited_credentials["api_only"]
    answer = wait_for(lambda: node.post_logs(body, auth=basic(*api_only)), lambda a: a.status != 401)
    assert answer.status == 403, answer

    poster = limited_credentials["poster"]
    answer = wait_for(lambda: node.post_logs(body, auth=basic(*poster)), lambda a: a.status != 401)
    assert answer.status == 204, answer
    assert node.wait_backlog(channel_id, 1) == [line("app", "web.1", "refused")]


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_post_logs_wrong_content_type_is_415(node, content_type):
    channel_id, tokens = node.channel("app")
    body = logplex1([syslog_message(tokens["app"], "web.1", "typed wrong")])
    answer = node.post_logs(body, auth=token_auth(tokens["app"]), content_type=content_type)
    assert answer.status == 415, answer
    assert node.backlog(channel_id) == []


@pytest.mark.parametrize("body,headers", [
    (b"hello", {}),
    (b"100 <134>1 2024-05-06T07:08:09Z host app web.1 - - truncated", {}),
    (b"<134>1 2024-05-06T07:08:09Z host app web.1 - - a line, not a frame\n", {}),
    (b"12x <134>1 2024-05-06T07:08:09Z host app web.1 - - bad count", {}),
    (b"not gzip at all", {"Content-Encoding": "gzip"}),
])
def test_post_logs_malformed_body_is_400(node, body, headers):
    channel_id, tokens = node.channel("app")
    answer = node.post_logs(body, auth=token_auth(tokens["app"]), headers=headers)
    assert answer.status == 400, answer
    assert "error" in answer.json()
    assert node.backlog(channel_id) == []


def test_post_logs_body_over_max_body_is_413(small_body_node):
    n = small_body_node
    channel_id, tokens = n.channel("app")
    auth = token_auth(tokens["app"])
    big = logplex1([syslog_message(tokens["app"], "web.1", "b" * 1000)] * 5)
    assert len(big) > 4096
    assert n.post_logs(big, auth=auth).status == 413
    assert n.post_logs(iter([big[:3000], big[3000:]]), auth=auth, chunked=True).status == 413
    assert n.post_logs(gzip.compress(big), auth=auth, headers={"Content-Encoding": "gzip"}).status == 413
    small = logplex1([syslog_message(tokens["app"], "web.1", "fits")])
    assert n.post_logs(small, auth=auth).status == 204
    assert n.wait_backlog(channel_id, 1) == [line("app", "web.1", "fits")]


def test_post_logs_retransmitted_frame_id_is_delivered_once(node):
    channel_id, tokens = node.channel("app")
    auth = token_auth(tokens["app"])
    frame_id = unique("frame")
    body = logplex1([syslog_message(tokens["app"], "web.1", "once"), syslog_message(tokens["app"], "web.1", "only")])
    for _ in range(2):
        answer = node.post_logs(body, auth=auth, headers={"Logplex-Frame-Id": frame_id})
        assert answer.status == 204, answer
    marker = logplex1([syslog_message(tokens["app"], "web.1", "marker")])
    assert node.post_logs(marker, auth=auth, headers={"Logplex-Frame-Id": unique("frame")}).status == 204
    assert node.wait_backlog(channel_id, 3) == [
        line("app", "web.1", "once"), line("app", "web.1", "only"), line("app", "web.1", "marker"),
    ]


def test_logs_listener_answers_only_post_logs(node):
    assert http_request(node.logs_port, "GET", "/logs").status == 405
    assert http_request(node.logs_port, "POST", "/elsewhere", b"").status == 404


# -- sessions and tails ---------------------------------------------------------------------------------
def test_session_num_gives_the_last_lines_oldest_first(node):
    channel_id, tokens = node.channel("app")
    send_syslog(node.syslog_port, b"".join(
        octet(syslog_message(tokens["app"], "web.1", f"n{i}")) for i in range(10)))
    assert node.wait_backlog(channel_id, 10) == [line("app", "web.1", f"n{i}") for i in range(10)]
    assert node.backlog(channel_id, num=3) == [line("app", "web.1", f"n{i}") for i in (7, 8, 9)]
    assert node.backlog(channel_id, num="4") == [line("app", "web.1", f"n{i}") for i in (6, 7, 8, 9)]


def test_session_filters(node):
    channel_id, tokens = node.channel("app", "router")
    app, router = tokens["app"], tokens["router"]
    send_syslog(node.syslog_port, b"".join(octet(m) for m in [
        syslog_message(app, "web.1", "w1"),
        syslog_message(app, "worker.1", "k1"),
        syslog_message(app, "web.2", "w2"),
        syslog_message(app, "webby.1", "not web"),
        syslog_message(app, "web", "bare web"),
        syslog_message(router, "web.1", "router for web"),
    ]))
    assert len(node.wait_backlog(channel_id, 6)) == 6
    assert node.backlog(channel_id, ps="web") == [
        line("app", "web.1", "w1"), line("app", "web.2", "w2"), line("app", "web", "bare web"),
        line("router", "web.1", "router for web"),
    ]
    assert node.backlog(channel_id, ps="web.1") == [line("app", "web.1", "w1"), line("router", "web.1", "router for web")]
    assert node.backlog(channel_id, source="app") == [
        line("app", "web.1", "w1"), line("app", "worker.1", "k1"), line("app", "web.2", "w2"),
        line("app", "webby.1", "not web"), line("app", "web", "bare web"),
    ]
    assert node.backlog(channel_id, source="router", ps="web") == [line("router", "web.1", "router for web")]


def test_tail_streams_backlog_then_live_lines(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    send_syslog(node.syslog_port, octet(syslog_message(app, "web.1", "old 1")) + octet(syslog_message(app, "web.1", "old 2")))
    node.wait_backlog(channel_id, 2)
    tails_before = node.metric("logplex_active_tails")

    tail = open_tail(node, channel_id)
    try:
        assert tail.response().status == 200
        assert tail.response().headers.get("Transfer-Encoding") == "chunked"
        assert tail.read_until(2) == [line("app", "web.1", "old 1"), line("app", "web.1", "old 2")]
        with connect(node.syslog_port) as s:
            s.sendall(octet(syslog_message(app, "web.2", "live 1")))
            assert tail.read_until(3)[2:] == [line("app", "web.2", "live 1")]
            s.sendall(syslog_message(app, "web.3", "live 2") + b"\n")
            assert tail.read_until(4)[2:] == [line("app", "web.2", "live 1"), line("app", "web.3", "live 2")]
        answer = node.post_logs(logplex1([syslog_message(app, "web.4", "live over http")]), auth=token_auth(app))
        assert answer.status == 204
        assert tail.read_until(5)[4:] == [line("app", "web.4", "live over http")]
        assert app.encode() not in tail.received
    finally:
        tail.close()

    # The node forgets the tail and carries on.
    assert wait_for(lambda: node.metric("logplex_active_tails"), lambda v: v == tails_before) == tails_before
    assert http_request(node.api_port, "GET", "/healthcheck").status == 200
    send_syslog(node.syslog_port, octet(syslog_message(app, "web.1", "after the tail")))
    assert node.wait_backlog(channel_id, 5)[-1] == line("app", "web.1", "after the tail")


def test_tail_with_ps_filter(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    tail = open_tail(node, channel_id, ps="web")
    try:
        with connect(node.syslog_port) as s:
            # Order is kept per connection: had worker.1 passed the filter it
            # would arrive before web.2.
            s.sendall(octet(syslog_message(app, "worker.1", "filtered out")))
            s.sendall(octet(syslog_message(app, "webby.1", "filtered out too")))
            s.sendall(octet(syslog_message(app, "web.1", "first web")))
            s.sendall(octet(syslog_message(app, "worker.1", "filtered out")))
            s.sendall(octet(syslog_message(app, "web.2", "second web")))
            assert tail.read_until(2) == [line("app", "web.1", "first web"), line("app", "web.2", "second web")]
    finally:
        tail.close()


def test_tail_with_source_filter(node):
    channel_id, tokens = node.channel("app", "router")
    tail = open_tail(node, channel_id, source="app")
    try:
        with connect(node.syslog_port) as s:
            s.sendall(octet(syslog_message(tokens["router"], "router", "from router")))
            s.sendall(octet(syslog_message(tokens["app"], "web.1", "from app")))
            assert tail.read_until(1) == [line("app", "web.1", "from app")]
    finally:
        tail.close()


def test_tail_client_hanging_up_mid_stream_leaves_the_node_working(node):
    channel_id, tokens = node.channel("app")
    app = tokens["app"]
    tails_before = node.metric("logplex_active_tails")
    tails = [open_tail(node, channel_id) for _ in range(3)]
    send_syslog(node.syslog_port, octet(syslog_message(app, "web.1", "to three tails")))
    for tail in tails:
        assert tail.read_until(1) == [line("app", "web.1", "to three tails")]
    for tail in tails:
        tail.close()
    # Lines sent after the hang-up go nowhere and harm nothing.
    send_syslog(node.syslog_port, b"".join(octet(syslog_message(app, "web.1", f"later {i}")) for i in range(50)))
    assert wait_for(lambda: node.metric("logplex_active_tails"), lambda v: v == tails_before) == tails_before
    assert http_request(node.api_port, "GET", "/healthcheck").json()["status"] == "normal"
    assert len(node.wait_backlog(channel_id, 51)) == 51
    tail = open_tail(node, channel_id, num=1)
    try:
        assert tail.read_until(1) == [line("app", "web.1", "later 49")]
    finally:
        tail.close()


def test_tail_of_a_quiet_channel_answers_at_once(node):
    channel_id, _ = node.channel("app")
    tail = open_tail(node, channel_id)
    try:
        response = tail.response(timeout=2.0)
        assert response.status == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
    finally:
        tail.close()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, redis):
    """A node of two worker processes sharing its listeners."""
    from tests.harness.client import start_node, stop_node

    n = start_node(tmp_path_factory, redis, "--workers", "2")
    wait_for(lambda: n.proc.log_text().count("node_ready"), lambda ready: ready == 2, timeout=30)
    yield n
    stop_node(n)


def test_a_line_sent_the_moment_its_channel_is_made_is_kept_whichever_worker_reads_it(two_workers):
    # A channel made through one worker reaches the other through the change feed, a moment
    # later; a line that reaches the other first used to be dropped there as an unknown token.
    node = two_workers
    sent = []
    for _ in range(25):
        channel_id, tokens = node.channel("app")
        token = tokens["app"]
        for n in range(2):  # two connections: the listener's workers take turns accepting
            send_syslog(node.syslog_port, octet(syslog_message(token, "web.1", f"syslog {n}")))
        answer = node.post_logs(logplex1([syslog_message(token, "web.1", "posted")]), auth=token_auth(token))
        assert answer.status == 204, answer
        sent.append(channel_id)
    for channel_id in sent:
        got = node.wait_backlog(channel_id, 3)
        assert sorted(got) == sorted([line("app", "web.1", "syslog 0"), line("app", "web.1", "syslog 1"),
                                      line("app", "web.1", "posted")]), channel_id
