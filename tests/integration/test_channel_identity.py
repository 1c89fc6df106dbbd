"""A channel's identity against real nodes: what was made for a channel ends with it.

After DELETE of a channel and a new channel of the same name, nothing that
was made for the old one (a live session tail, a session URL, the tail
page's event stream, a read_channel grant, the backlog) reads the new one.
Two nodes share one config Redis: a tail read on the node that did not
delete the channel is ended through the change feed.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid

import pytest

from logplex import secrets
from tests.harness.cluster import redis as redis_command
from tests.harness.cluster import send_lines, wait_until, warm
from tests.harness.client import basic, decode_logplex1, http_request, start_node, stop_node, unique

# A new line must reach a tail within this, and an end be told within this.
WITHIN = 3.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory, redis):
    """Nodes a and b on one config Redis (the session's)."""
    nodes = []
    try:
        for _ in range(2):
            nodes.append(start_node(tmp_path_factory, redis))
        yield nodes
    finally:
        for node in nodes:
            stop_node(node)


class Reader:
    """A GET left open (a session tail, an event stream), read in a thread until the node ends it."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.received = b""
        self.ended = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self.response.read1(65536)
                if not data:
                    # The node finished the response (the chunked body's last chunk).
                    self.ended.set()
                    return
                with self._lock:
                    self.received += data
        except Exception:  # closed by close()
            return

    def text(self) -> str:
        with self._lock:
            return self.received.decode("utf-8", "replace")

    def texts(self, procid: str) -> list[str]:
        """The MSG of every text-tail line from senders with this PROCID."""
        marker = f"[{procid}]: "
        return [line.split(marker, 1)[1] for line in self.text().splitlines() if marker in line]

    def close(self) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.conn.close()
        self._thread.join(5)


def session_path(url: str) -> str:
    return "/sessions/" + url.rsplit("/sessions/", 1)[1]


def recreate(node, channel_id: str) -> str:
    """DELETE the channel, then make one of the same name: the new owner's `app` token."""
    deleted = node.api("DELETE", f"/v3/channels/{channel_id}")
    assert deleted.status == 204, deleted
    made = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
    assert made.status == 201, made
    return made.json()["tokens"]["app"]


def backlog_texts(node, channel_id: str) -> list[str]:
    answer = node.api("GET", f"/v3/channels/{channel_id}/logs?num=1500")
    assert answer.status == 200, answer
    return [m.rstrip(b"\n").split(b" ", 6)[6].decode() for m in decode_logplex1(answer.body)]


def routed(node, channel_id: str, token: str, text: str) -> None:
    """Send one line to the channel and wait until its backlog has it: it was routed and fanned out."""
    send_lines(node, [(token, "new", text)])
    seen = wait_until(lambda: backlog_texts(node, channel_id), lambda t: text in t, WITHIN,
                      f"{text!r} in the backlog of {channel_id}")
    assert text in seen


def events(stream: str) -> list[tuple[str, dict]]:
    """(event, data) of every Server-Sent Event; plain `data:` lines are "message"."""
    out = []
    for block in stream.split("\n\n"):
        kind, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: "):])
        if data is not None:
            out.append((kind, data))
    return out


def wait_ended(reader: Reader, what: str) -> None:
    assert reader.ended.wait(WITHIN), f"{what} still open {WITHIN} s after the channel was deleted; " \
                                      f"it received {reader.text()!r}"


# -- live tails ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["same node", "other node"])
def test_a_live_tail_of_a_deleted_channel_ends_and_never_reads_its_successor(pair, where):
    a, b = pair
    reader_node = a if where == "same node" else b
    channel_id, tokens = a.channel("app")
    tail = Reader(reader_node.api_port, session_path(a.session(channel_id, tail=True, num=0)))
    try:
        assert tail.status == 200
        # The tail hears what a ingests (on b: once a has learnt of b's interest).
        warm(tail, a, tokens["app"])
        new_token = recreate(a, channel_id)
        routed(a, channel_id, new_token, "the new owner's secret")
        # The new owner's line was routed: it must not be on the old tail, which has ended.
        assert "the new owner's secret" not in tail.text()
        wait_ended(tail, "the tail")
        assert tail.text().splitlines()[-1].endswith(
            f"Logplex: Channel {channel_id} was deleted: this tail has ended.")
    finally:
        tail.close()
    assert wait_until(lambda: reader_node.metric("logplex_active_tails"), lambda n: n == 0, WITHIN,
                      "no tail left") == 0


# -- session URLs ---------------------------------------------------------------------------------------
def test_a_session_made_for_a_deleted_channel_never_reads_its_successor(pair):
    a, b = pair
    channel_id, tokens = a.channel("app")
    routed(a, channel_id, tokens["app"], "the old owner's line")
    paths = [session_path(a.session(channel_id, tail=tail)) for tail in (False, True)]
    assert a.api("DELETE", f"/v3/channels/{channel_id}").status == 204
    for path in paths:
        for node in (a, b):
            gone = wait_until(lambda: http_request(node.api_port, "GET", path), lambda r: r.status == 404,
                              WITHIN, "the session of a deleted channel")
            assert gone.json()["error"] == f"Channel {channel_id} no longer exists.", gone
    made = a.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
    assert made.status == 201, made
    routed(a, channel_id, made.json()["tokens"]["app"], "the new owner's secret")
    for path in paths:
        for node in (a, b):
            answer = wait_until(lambda: http_request(node.api_port, "GET", path), lambda r: r.status != 404,
                                WITHIN, "the session after the new channel")
            assert answer.status == 410, answer
            assert b"secret" not in answer.body
            assert answer.json()["error"] == (
                f"This session was made for an earlier channel named {channel_id}, which was deleted; "
                f"make a new session.")
    # A session made now reads the new channel.
    assert a.backlog(channel_id)[-1].endswith("the new owner's secret")


# -- read_channel grants and the tail page's stream ----------------------------------------------------------
def test_a_read_channel_grant_ends_with_its_channel_and_never_reads_a_new_one_of_the_same_name(pair):
    a, b = pair
    channel_id, tokens = a.channel("app")
    made = a.api("POST", "/v3/credentials", {"perms": ["read_channel"], "channels": [channel_id]})
    assert made.status == 201, made
    reader = {"Authorization": basic(made.json()["id"], made.json()["secret"])}
    stream_path = f"/v3/channels/{channel_id}/stream?num=0"
    streams = [Reader(node.api_port, stream_path, reader) for node in (a, b)]
    try:
        for stream in streams:
            assert stream.status == 200
            wait_until(lambda: events(stream.text()), lambda e: e and e[0][0] == "ready", WITHIN, "ready")
        new_token = recreate(a, channel_id)
        routed(a, channel_id, new_token, "the new owner's secret")
        for stream, name in zip(streams, "ab"):
            assert "the new owner's secret" not in stream.text(), name
            wait_ended(stream, f"the event stream on {name}")
            kind, data = events(stream.text())[-1]
            assert kind == "revoked", stream.text()
            assert data["msg"] == f"Channel {channel_id} was deleted: this stream has ended."
    finally:
        for stream in streams:
            stream.close()
    for node in (a, b):
        answer = wait_until(lambda: http_request(node.api_port, "GET", stream_path, headers=reader),
                            lambda r: r.status == 403, WITHIN, "the old grant refused (once b knows the new channel)")
        assert answer.status == 403, answer
        assert answer.json()["error"] == (
            f"This credential was granted an earlier channel named {channel_id}, which was deleted; "
            f"it cannot read the new one: ask for a new credential.")
        listed = http_request(node.api_port, "GET", "/tail/channels", headers=reader)
        assert listed.status == 200 and listed.json()["channels"] == [], listed
    # A grant made now reads the new channel.
    again = a.api("POST", "/v3/credentials", {"perms": ["read_channel"], "channels": [channel_id]})
    fresh = {"Authorization": basic(again.json()["id"], again.json()["secret"])}
    # (On b once the new credential has reached it through the feed.)
    answer = wait_until(lambda: http_request(b.api_port, "HEAD", stream_path, headers=fresh),
                        lambda r: r.status != 401, WITHIN, "the new grant known to b")
    assert answer.status == 200, answer


def test_a_grant_names_an_existing_channel(pair):
    a, _ = pair
    missing = unique("missing")
    answer = a.api("POST", "/v3/credentials", {"perms": ["read_channel"], "channels": [missing]})
    assert answer.status == 404, answer
    assert answer.json()["error"] == f"Channel {missing} does not exist: make it before granting it."


# -- backlogs ------------------------------------------------------------------------------------------------
def test_a_new_channel_of_the_same_name_starts_with_an_empty_backlog(pair):
    a, _ = pair
    channel_id, tokens = a.channel("app")
    routed(a, channel_id, tokens["app"], "the old owner's line")
    new_token = recreate(a, channel_id)
    routed(a, channel_id, new_token, "the first new line")
    assert backlog_texts(a, channel_id) == ["the first new line"]


def test_lines_routed_just_before_the_delete_do_not_land_in_the_new_backlog(pair):
    a, _ = pair
    channel_id, tokens = a.channel("app")
    # Sent and deleted at once: the lines are still in the node's backlog writer.
    send_lines(a, [(tokens["app"], "old", f"old {i}") for i in range(200)])
    new_token = recreate(a, channel_id)
    # The writer keeps order: lines queued before the new one are written before it.
    routed(a, channel_id, new_token, "the first new line")
    assert backlog_texts(a, channel_id) == ["the first new line"]


def test_a_new_channel_starts_empty_even_where_a_delete_left_backlog_lines(pair, redis):
    a, _ = pair
    channel_id = unique()
    # As if a DELETE found its shard down, or another node's write landed after it.
    redis_command(redis, "LPUSH", f"lp:log:{channel_id}", b"<13>1 2024-05-06T07:08:09+00:00 h app old - - left over")
    made = a.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
    assert made.status == 201, made
    assert backlog_texts(a, channel_id) == []


# -- records written before channels had an identity -------------------------------------------------------------
def test_records_from_before_channel_identity_keep_working_until_the_channel_is_deleted(pair, redis):
    a, b = pair
    channel_id, token = unique("legacy"), f"t.{uuid.uuid4()}"
    user, secret = f"legacy-{uuid.uuid4().hex[:8]}", "legacy-secret"
    session_id = str(uuid.uuid4())
    # As a node of the previous version wrote them: no incarnation anywhere.
    redis_command(redis, "HSET", "lp:channels", channel_id, json.dumps({"flags": []}))
    redis_command(redis, "HSET", "lp:tokens", token, json.dumps({"channel_id": channel_id, "name": "app"}))
    redis_command(redis, "SADD", f"lp:chtok:{channel_id}", token)
    redis_command(redis, "HSET", "lp:creds", user, json.dumps({
        "hash": secrets.hash_secret(secret), "perms": ["read_channel"], "note": "", "channels": [channel_id]}))
    redis_command(redis, "SET", f"lp:session:{session_id}", json.dumps({
        "channel_id": channel_id, "num": 10, "tail": False, "ps": None, "source": None}), "EX", 300)
    redis_command(redis, "PUBLISH", "lp:config", f"channel {channel_id}")
    redis_command(redis, "PUBLISH", "lp:config", f"cred {user}")
    reader = {"Authorization": basic(user, secret)}
    stream_path = f"/v3/channels/{channel_id}/stream?num=10"
    for node in (a, b):
        wait_until(lambda: node.api("GET", f"/v3/channels/{channel_id}").status, lambda s: s == 200, WITHIN,
                   "the legacy channel loaded")
    routed(a, channel_id, token, "a legacy line")
    for node in (a, b):
        # On b once a has flushed the line to the backlog.
        session = wait_until(lambda: http_request(node.api_port, "GET", f"/sessions/{session_id}"),
                             lambda r: r.body.endswith(b"a legacy line\n"), WITHIN, "the legacy session read")
        assert session.status == 200, session
        answer = wait_until(lambda: http_request(node.api_port, "HEAD", stream_path, headers=reader),
                            lambda r: r.status == 200, WITHIN, "the legacy grant accepted")
        assert answer.status == 200, answer
        listed = http_request(node.api_port, "GET", "/tail/channels", headers=reader)
        assert listed.json()["channels"] == [channel_id], listed
    new_token = recreate(a, channel_id)
    routed(a, channel_id, new_token, "the new owner's secret")
    for node in (a, b):
        session = wait_until(lambda: http_request(node.api_port, "GET", f"/sessions/{session_id}"),
                             lambda r: r.status == 410, WITHIN, "the legacy session refused")
        assert session.status == 410, session
        answer = wait_until(lambda: http_request(node.api_port, "HEAD", stream_path, headers=reader),
                            lambda r: r.status == 403, WITHIN, "the legacy grant refused")
        assert answer.status == 403, answer
