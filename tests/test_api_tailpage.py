"""The tail page's routes and event stream, driven in memory (no sockets, no Redis)."""

from __future__ import annotations

import base64
import json

import attrs
import pytest

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from logplex import secrets
from logplex.api.app import ManagementApi
from logplex.api.tailpage import KEEPALIVE_SECONDS, RECHECK_SECONDS, TailPage
from logplex.health import BootWait
from logplex.http.auth import Authenticator
from logplex.metrics import Metrics
from logplex.model import ANY_CHANNEL, FULL_API, NO_TAIL, READ_CHANNEL, Channel, Credential
from logplex.config.cache import ConfigCache
from logplex.backlog.writer import within_bytes
from logplex.tails.session import TailRegistry
from logplex.http.site import LogplexSite
from tests.helpers import (
    changed_settings, connect, fill_cache, http_exchange, make_site_reactor, parse_reply, raw_request,
)

# Unknown credential ids pay the KDF against this, at the cost of these tests' own
# credentials (2**4), as a node pays it at the cost of its real ones.
CHEAP_DUMMY_HASH = secrets.hash_secret("no secret matches this", n=2**4)

APP_TOKEN = "t.11111111-1111-4111-8111-111111111111"
ROUTER_TOKEN = "t.22222222-2222-4222-8222-222222222222"
OTHER_TOKEN = "t.33333333-3333-4333-8333-333333333333"


def cooked(name: str, procid: str, text: str, pri: int = 190) -> bytes:
    """A message as the router keeps it: APP-NAME is the token's name."""
    return b"<%d>1 2026-11-24T10:00:00.250000+00:00 host %s %s - - %s" % (
        pri, name.encode(), procid.encode(), text.encode())


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class Store:
    """What the API reads of a ConfigStore: loaded, cache, channel()."""

    def __init__(self, cache: ConfigCache) -> None:
        self.cache = cache
        self.loaded = True

    def channel(self, channel_id: str):
        return self.cache.channels.get(channel_id)


class Backlogs:
    """recent() answers what `lines` holds, when the test says so (or at once)."""

    def __init__(self) -> None:
        self.lines: dict[str, list[bytes]] = {}
        self.waiting: list[tuple[defer.Deferred, str, int]] = []
        self.hold = False
        self.fail = False

    def recent(self, channel_id: str, num: int, max_bytes: int | None = None) -> defer.Deferred:
        if self.fail:
            return defer.fail(ConnectionError("shard down"))
        d = defer.Deferred()
        if self.hold:
            self.waiting.append((d, channel_id, num, max_bytes))
        else:
            d.callback(self._recent(channel_id, num, max_bytes))
        return d

    def _recent(self, channel_id: str, num: int, max_bytes: int | None) -> list[bytes]:
        lines = self.lines.get(channel_id, [])
        lines = lines[-num:] if num else []
        return within_bytes(lines, max_bytes) if max_bytes is not None else lines

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, channel_id, num, max_bytes in waiting:
            d.callback(self._recent(channel_id, num, max_bytes))


class Node:
    def __init__(self, tail_buffer: int = 1024, boot_hold: float = 0.0) -> None:
        self.cache = ConfigCache()
        fill_cache(self.cache, "web-app", {"app": APP_TOKEN, "router": ROUTER_TOKEN})
        fill_cache(self.cache, "secret-app", {"app": OTHER_TOKEN})
        fill_cache(self.cache, "quiet-app", {}, flags=frozenset({NO_TAIL}))
        fill_cache(self.cache, "team:web@eu", {})
        for cred_id, perms, channels in [
            ("admin", {FULL_API}, set()),
            ("reader", {READ_CHANNEL}, {"web-app", "gone-app"}),
            ("shuttle", {ANY_CHANNEL}, set()),
        ]:
            self.cache.set_credential(cred_id, Credential(
                cred_id, secrets.hash_secret(cred_id + "-secret", n=2**4), frozenset(perms),
                channels=frozenset(channels)))
        self.store = Store(self.cache)
        self.backlogs = Backlogs()
        self.metrics = Metrics()
        self.tails = TailRegistry(self.metrics)
        self.reactor = MemoryReactorClock()
        self.api = ManagementApi(
            self.store, self.backlogs, self.tails,
            Authenticator(self.cache, reactor=None, check=secrets.check_secret, dummy_hash=CHEAP_DUMMY_HASH),
            self.metrics, changed_settings(backlog={"history": 1500}, tails={"buffer": tail_buffer}),
            api_url=lambda: "http://logplex.test", reactor=self.reactor,
            boot=BootWait(self.reactor, boot_hold),
        )
        self.page = TailPage(self.api, clock=lambda: 1_800_000_000.0)
        self.site = LogplexSite(self.api.resource(extra_routes=self.page.routes()), reactor=make_site_reactor())

    def get(self, path: str, user: str | None = "admin", password: str | None = None):
        headers = {}
        if user is not None:
            headers[b"Authorization"] = basic(user, password or user + "-secret")
        return http_exchange(self.site, raw_request(b"GET", path.encode(), headers))

    def open_stream(self, path: str, user: str = "admin"):
        """(protocol, transport) of a stream request left open."""
        protocol, transport = connect(self.site)
        protocol.dataReceived(raw_request(b"GET", path.encode(), {b"Authorization": basic(user, user + "-secret")}))
        return protocol, transport


def events(transport) -> list[tuple[str, object]]:
    """The (event, data) pairs written so far; comments as ("comment", text)."""
    reply = parse_reply(transport.value())
    assert reply.status == 200, reply
    out = []
    for block in reply.body.decode().split("\n\n")[:-1]:
        kind, data = "message", None
        for line in block.split("\n"):
            if line.startswith(":"):
                kind, data = "comment", line[1:].strip()
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        out.append((kind, data))
    return out


def messages(transport) -> list[str]:
    return [d["msg"] for k, d in events(transport) if k == "message"]


# -- the page --------------------------------------------------------------------------------------
def test_the_page_and_its_files_are_served_with_a_strict_policy():
    node = Node()
    page = node.get("/tail", user=None)
    assert page.status == 200
    assert page.header(b"content-type") == b"text/html; charset=utf-8"
    assert b'src="/tail/static/tail.js"' in page.body and b'<label for="channel">' in page.body
    policy = page.header(b"content-security-policy")
    assert b"script-src 'self'" in policy and b"connect-src 'self'" in policy and b"form-action 'none'" in policy
    assert page.header(b"x-content-type-options") == b"nosniff"
    assert node.get("/tail/", user=None).status == 200
    js = node.get("/tail/static/tail.js", user=None)
    assert js.status == 200 and js.header(b"content-type") == b"text/javascript; charset=utf-8"
    assert b"getReader" in js.body
    assert node.get("/tail/static/tail.css", user=None).header(b"content-type") == b"text/css; charset=utf-8"
    for path in ("/tail/static/tail.html", "/tail/static/nothing.js", "/tail/static/..%2fservice.py",
                 "/tail/static/../../service.py"):
        assert node.get(path, user=None).status == 404, path


# -- who may read ----------------------------------------------------------------------------------
def test_without_or_with_wrong_credentials_the_stream_is_401_without_a_browser_challenge():
    node = Node()
    for answer in (node.get("/v3/channels/web-app/stream", user=None),
                   node.get("/v3/channels/web-app/stream", user="admin", password="wrong"),
                   node.get("/v3/channels/web-app/stream", user="nobody"),
                   node.get("/tail/channels", user=None)):
        assert answer.status == 401, answer
        assert answer.header(b"www-authenticate") is None
        assert "error" in answer.json()
    assert node.tails.count() == 0


def test_a_credential_reads_only_what_it_may():
    node = Node()
    assert node.get("/v3/channels/secret-app/stream", user="reader").status == 403
    # A channel the credential does not name is 403 whether or not it exists.
    assert node.get("/v3/channels/no-such-app/stream", user="reader").status == 403
    assert node.get("/v3/channels/web-app/stream", user="shuttle").status == 403
    assert node.get("/v3/channels/no-such-app/stream", user="admin").status == 404
    assert node.tails.count() == 0


def test_the_channel_list_is_what_the_credential_may_watch():
    node = Node()
    assert node.get("/tail/channels").json() == {
        "credential": "admin", "channels": ["quiet-app", "secret-app", "team:web@eu", "web-app"], "any": True, "more": False}
    # Named channels that exist; never the secret or a token.
    reader = node.get("/tail/channels", user="reader")
    assert reader.json() == {"credential": "reader", "channels": ["web-app"], "any": False, "more": False}
    assert reader.header(b"cache-control") == b"no-store"
    assert node.get("/tail/channels", user="shuttle").status == 403


def test_a_booting_node_answers_503():
    node = Node()
    node.store.loaded = False
    assert node.get("/v3/channels/web-app/stream").status == 503
    assert node.get("/tail/channels").status == 503


def test_a_node_still_putting_its_auth_credential_in_place_answers_503_not_401():
    # Config loaded, --auth credential not yet in place: a worker next to a ready one
    # would refuse the right login (the README's node command, two workers, met this).
    node = Node()
    node.api.booting = True
    assert node.get("/v3/channels/web-app/stream").status == 503
    assert node.get("/tail/channels").status == 503
    assert node.get("/v3/channels/web-app").status == 503
    node.api.booting = False
    assert node.get("/tail/channels").status == 200


def test_a_worker_answers_a_request_that_comes_while_it_boots_once_it_has_booted():
    # Under --workers the kernel hands a connection to any worker: a sibling may have
    # served this client a moment ago, and a 503 from this one would be a wrong answer.
    node = Node(boot_hold=5.0)
    node.api.booting = True
    asked = []
    for path in (b"/v3/channels/web-app/stream", b"/tail/channels"):
        protocol, transport = connect(node.site)
        protocol.dataReceived(raw_request(b"GET", path, {b"Authorization": basic("admin", "admin-secret")}))
        asked.append(transport)
    node.reactor.advance(4.9)
    assert [t.value() for t in asked] == [b"", b""]
    node.api.booting = False
    node.api.boot.changed()
    assert [parse_reply(t.value()).status for t in asked] == [200, 200]


def test_a_worker_whose_boot_does_not_end_within_the_hold_answers_503():
    node = Node(boot_hold=5.0)
    node.store.loaded = False
    protocol, transport = connect(node.site)
    protocol.dataReceived(raw_request(b"GET", b"/v3/channels/web-app", {b"Authorization": basic("admin", "admin-secret")}))
    node.reactor.advance(4.9)
    assert transport.value() == b""
    node.reactor.advance(0.1)
    answer = parse_reply(transport.value())
    assert answer.status == 503 and "SYSTEM BOOTING" in answer.json()["error"]


# -- the stream ------------------------------------------------------------------------------------
def test_backlog_then_live_lines_as_json_with_severity_and_no_token():
    node = Node()
    node.backlogs.lines["web-app"] = [cooked("app", "web.1", "old one", pri=11),
                                      cooked("router", "-", "old two")]
    node.backlogs.hold = True
    protocol, transport = node.open_stream("/v3/channels/web-app/stream?num=10", user="reader")
    # Registered before the backlog is read: a line arriving meanwhile is kept.
    assert node.tails.count() == 1
    node.tails.publish("web-app", [cooked("app", "web.2", "during the read")])
    node.backlogs.release()
    reply = parse_reply(transport.value())
    assert reply.header(b"content-type") == b"text/event-stream; charset=utf-8"
    assert reply.header(b"cache-control") == b"no-store"
    assert events(transport) == [
        ("message", {"ts": "2026-11-24T10:00:00.250000+00:00", "source": "app", "ps": "web.1",
                     "severity": 3, "msg": "old one"}),
        ("message", {"ts": "2026-11-24T10:00:00.250000+00:00", "source": "router", "ps": "",
                     "severity": 6, "msg": "old two"}),
        ("ready", {"backlog": 2, "live": True}),
        ("message", {"ts": "2026-11-24T10:00:00.250000+00:00", "source": "app", "ps": "web.2",
                     "severity": 6, "msg": "during the read"}),
    ]
    node.tails.publish("web-app", [cooked("app", "web.1", 'line\nwith "quotes" é', pri=12)])
    assert events(transport)[-1] == ("message", {
        "ts": "2026-11-24T10:00:00.250000+00:00", "source": "app", "ps": "web.1", "severity": 4,
        "msg": 'line\nwith "quotes" é'})
    node.tails.publish("secret-app", [cooked("app", "web.1", "another channel")])
    assert "another channel" not in messages(transport)
    assert APP_TOKEN.encode() not in transport.value() and b"reader-secret" not in transport.value()
    protocol.connectionLost(Failure(ConnectionDone()))
    assert node.tails.count() == 0


def test_ps_and_source_filter_backlog_and_live_lines():
    node = Node()
    node.backlogs.lines["web-app"] = [cooked("app", "web.1", "a"), cooked("app", "worker.1", "b"),
                                      cooked("router", "web.2", "c"), cooked("app", "webx.1", "d")]
    _, transport = node.open_stream("/v3/channels/web-app/stream?ps=web&source=app")
    node.tails.publish("web-app", [cooked("app", "web", "e"), cooked("router", "web.1", "f"),
                                   cooked("app", "worker.2", "g"), cooked("app", "web.3", "h")])
    assert messages(transport) == ["a", "e", "h"]
    _, transport = node.open_stream("/v3/channels/web-app/stream?num=1")
    assert messages(transport) == ["d"]
    _, transport = node.open_stream("/v3/channels/web-app/stream?num=0")
    assert events(transport) == [("ready", {"backlog": 0, "live": True})]
    assert node.get("/v3/channels/web-app/stream?num=lots").status == 422
    # An id with ":" and "@", as encodeURIComponent sends it.
    node.backlogs.lines["team:web@eu"] = [cooked("app", "web.1", "colon")]
    _, transport = node.open_stream("/v3/channels/team%3Aweb%40eu/stream")
    assert messages(transport) == ["colon"]


def test_a_slow_reader_is_paused_then_told_what_it_lost_with_an_l11_event():
    node = Node(tail_buffer=3)
    _, transport = node.open_stream("/v3/channels/web-app/stream")
    # The transport is full: the tail is paused through the request's producer.
    transport.producer.pauseProducing()
    node.tails.publish("web-app", [cooked("app", "web.1", str(i)) for i in range(10)])
    assert messages(transport) == []
    transport.producer.resumeProducing()
    kinds = events(transport)
    assert kinds[1] == ("l11", {
        "ts": "2027-01-15T08:00:00.000000+00:00", "source": "logplex", "ps": "1", "severity": 3,
        "msg": "Error L11 (Tail buffer overflow) -> This tail session dropped 7 messages since "
               "2027-01-15T08:00:00.000000+00:00.",
        "dropped": 7, "since": "2027-01-15T08:00:00.000000+00:00"})
    assert messages(transport) == ["7", "8", "9"]
    assert node.metrics.get("logplex_tail_dropped_total") == 7
    assert node.metrics.get("logplex_tail_l11_total") == 1
    node.tails.publish("web-app", [cooked("app", "web.1", "after")])
    assert messages(transport)[-1] == "after"


def test_a_quiet_stream_gets_a_keepalive_comment_and_a_closed_one_stops_it():
    node = Node()
    protocol, transport = node.open_stream("/v3/channels/web-app/stream")
    node.reactor.advance(KEEPALIVE_SECONDS)
    assert events(transport)[-1] == ("comment", "keepalive")
    transport.producer.pauseProducing()
    node.reactor.advance(KEEPALIVE_SECONDS)
    assert [k for k, _ in events(transport)].count("comment") == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert node.tails.count() == 0
    assert not node.reactor.getDelayedCalls()


@pytest.mark.parametrize("change", ["deleted", "channel withdrawn", "secret changed"])
def test_a_stream_ends_within_a_second_when_its_credential_is_revoked(change):
    node = Node()
    protocol, transport = node.open_stream("/v3/channels/web-app/stream", user="reader")
    node.reactor.advance(RECHECK_SECONDS)
    assert node.tails.count() == 1 and events(transport)[-1][0] == "ready"
    old = node.cache.creds["reader"]
    if change == "deleted":
        node.cache.set_credential("reader", None)
    elif change == "channel withdrawn":
        node.cache.set_credential("reader", attrs.evolve(old, channels=frozenset({"gone-app"})))
    else:
        node.cache.set_credential("reader", attrs.evolve(old, secret_hash=secrets.hash_secret("new", n=2**4)))
    node.reactor.advance(RECHECK_SECONDS)
    kind, data = events(transport)[-1]
    assert kind == "revoked" and "sign in again" in data["msg"]
    assert parse_reply(transport.value()).complete
    assert node.tails.count() == 0
    assert not node.reactor.getDelayedCalls()


def test_a_reader_gone_during_the_backlog_read_leaves_no_tail():
    node = Node()
    node.backlogs.hold = True
    protocol, transport = node.open_stream("/v3/channels/web-app/stream")
    assert node.tails.count() == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert node.tails.count() == 0
    node.backlogs.release()
    assert node.tails.count() == 0 and not node.reactor.getDelayedCalls()


def test_a_no_tail_channel_gives_its_backlog_and_says_why_it_ends():
    node = Node()
    node.backlogs.lines["quiet-app"] = [cooked("app", "web.1", "kept")]
    _, transport = node.open_stream("/v3/channels/quiet-app/stream")
    reply = parse_reply(transport.value())
    assert reply.complete
    assert events(transport) == [
        ("message", {"ts": "2026-11-24T10:00:00.250000+00:00", "source": "app", "ps": "web.1",
                     "severity": 6, "msg": "kept"}),
        ("ready", {"backlog": 1, "live": False}),
        ("notice", {"msg": "Tailing is switched off for this channel."}),
    ]
    assert node.tails.count() == 0


def test_switched_off_tails_and_a_silent_shard_are_503():
    node = Node()
    node.api.deny_tail_sessions = True
    assert node.get("/v3/channels/web-app/stream").status == 503
    node.api.deny_tail_sessions = False
    node.backlogs.fail = True
    answer = node.get("/v3/channels/web-app/stream")
    assert answer.status == 503 and "backlog" in answer.json()["error"]
    assert node.tails.count() == 0


# -- a channel's identity ------------------------------------------------------------------------------
def deleted(node: Node, channel_id: str) -> None:
    """What the config store does on every node when a channel is deleted: cache, then tails."""
    node.cache.replace_channel(channel_id, None, (), ())
    node.tails.end_channel(channel_id, None)


def test_a_stream_ends_at_once_with_a_revoked_event_when_its_channel_is_deleted():
    node = Node()
    protocol, transport = node.open_stream("/v3/channels/web-app/stream", user="reader")
    assert events(transport)[-1][0] == "ready"
    deleted(node, "web-app")
    assert events(transport)[-1] == ("revoked", {"msg": "Channel web-app was deleted: this stream has ended."})
    assert parse_reply(transport.value()).complete
    assert node.tails.count() == 0
    assert not node.reactor.getDelayedCalls()
    assert node.metrics.get("logplex_tails_ended_total") == 1


def test_a_stream_whose_channel_was_replaced_unannounced_ends_within_a_second():
    node = Node()
    protocol, transport = node.open_stream("/v3/channels/web-app/stream", user="admin")
    # The cache changed without the registry being told (the safety net).
    node.cache.channels["web-app"] = Channel.new("web-app")
    node.tails.publish("web-app", [cooked("app", "web.1", "new owner")], node.cache.channels["web-app"].incarnation)
    node.reactor.advance(RECHECK_SECONDS)
    assert events(transport)[-1] == ("revoked", {"msg": "Channel web-app was deleted: this stream has ended."})
    assert "new owner" not in messages(transport)
    assert parse_reply(transport.value()).complete and node.tails.count() == 0


def test_a_grant_of_an_earlier_channel_of_the_name_reads_nothing_of_the_new_one():
    node = Node()
    node.cache.replace_channel("web-app", Channel.new("web-app"), (), ())
    answer = node.get("/v3/channels/web-app/stream", user="reader")
    assert answer.status == 403
    assert answer.json()["error"] == (
        "This credential was granted an earlier channel named web-app, which was deleted; "
        "it cannot read the new one: ask for a new credential.")
    assert node.get("/tail/channels", user="reader").json()["channels"] == []
    # A credential allowed every channel reads the new one.
    assert node.get("/v3/channels/web-app/stream?num=0", user="admin").status == 200


def test_a_channel_deleted_during_the_backlog_read_is_answered_404_not_streamed():
    node = Node()
    node.backlogs.hold = True
    protocol, transport = node.open_stream("/v3/channels/web-app/stream", user="reader")
    deleted(node, "web-app")
    node.backlogs.release()
    reply = parse_reply(transport.value())
    assert reply.status == 404 and node.tails.count() == 0
    assert not node.reactor.getDelayedCalls()
