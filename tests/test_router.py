"""The router: token to channel, cooking, fan-out, accounting."""

import pytest

from logplex.metrics import Metrics
from logplex.model import NO_REDIS, NO_TAIL, Channel, Drain, Token
from logplex.redis.config import ConfigCache
from logplex.router import IngressDenied, Router


class Sink:
    def __init__(self, tails=()):
        self.appended = []
        self.published = []
        self.tailed = set(tails)

    def append(self, channel_id, messages):
        self.appended.append((channel_id, list(messages)))

    def has_tails(self, channel_id):
        return channel_id in self.tailed

    def publish(self, channel_id, messages):
        self.published.append((channel_id, list(messages)))


def make_cache(flags=None):
    cache = ConfigCache()
    cache.replace_all(
        [Channel("app1", frozenset(flags or ())), Channel("app2")],
        [Token("t.one", "app1", "web"), Token("t.two", "app2", "worker")],
        [Drain(1, "app1", "d.x", "https://example.com/logs")],
        [],
    )
    return cache


def msg(token, text, procid="web.1"):
    return f"<13>1 2026-11-24T10:00:00+00:00 host {token} {procid} - - {text}".encode()


def test_batch_is_grouped_per_channel_cooked_and_ordered():
    backlog, tails, drained = Sink(), Sink(tails={"app1"}), []
    router = Router(make_cache(), backlog, tails, Metrics(), lambda c, m: drained.append((c, m)))
    accepted = router.route([msg("t.one", "a"), msg("t.two", "b"), msg("t.one", "c")])
    assert accepted == 3
    assert backlog.appended == [
        ("app1", [msg("web", "a"), msg("web", "c")]),
        ("app2", [msg("worker", "b")]),
    ]
    assert tails.published == [("app1", [msg("web", "a"), msg("web", "c")])]
    assert drained == [("app1", [msg("web", "a"), msg("web", "c")])]


def test_unknown_and_malformed_are_counted_and_the_rest_routed():
    metrics = Metrics()
    backlog = Sink()
    router = Router(make_cache(), backlog, Sink(), metrics)
    accepted = router.route([msg("t.nope", "x"), b"not syslog", msg("t.two", "ok")])
    assert accepted == 1
    assert backlog.appended == [("app2", [msg("worker", "ok")])]
    assert metrics.get("logplex_messages_unknown_token_total") == 1
    assert metrics.get("logplex_messages_malformed_total") == 1
    assert metrics.get("logplex_messages_received_total") == 3
    assert metrics.get("logplex_messages_routed_total") == 1


def test_a_header_with_a_control_character_is_malformed_on_every_route():
    metrics = Metrics()
    backlog, tails, drained = Sink(), Sink(tails={"app1"}), []
    router = Router(make_cache(), backlog, tails, metrics, lambda c, m: drained.append((c, m)))
    forged = [
        msg("t.one", "x", procid="web.1\n2026-11-24T10:00:00+00:00 heroku[router]: at=info"),
        msg("t.one", "x").replace(b"host", b"ho\x00st"),
        b"<13>Nov 24 10:00:01 host t.one[\x1b[2J]: an RFC 3164 line",
    ]
    # Whether APP-NAME picks the channel or the sender's credential does (POST /logs).
    assert router.route(forged + [msg("t.one", "kept\nin MSG")]) == 1
    assert router.route(forged, route=("app1", b"web")) == 0
    assert metrics.get("logplex_messages_malformed_total") == 2 * len(forged)
    assert backlog.appended == tails.published == drained == [("app1", [msg("web", "kept\nin MSG")])]


def test_a_fixed_route_overrides_app_name():
    backlog = Sink()
    router = Router(make_cache(), backlog, Sink(), Metrics())
    router.route([msg("anything", "x")], route=("app2", b"shuttle"))
    assert backlog.appended == [("app2", [msg("shuttle", "x")])]


def test_channel_flags_and_node_switches():
    backlog, tails = Sink(), Sink(tails={"app1"})
    router = Router(make_cache({NO_REDIS, NO_TAIL}), backlog, tails, Metrics())
    router.route([msg("t.one", "x")])
    assert backlog.appended == [] and tails.published == []
    router.deny_ingress = True
    with pytest.raises(IngressDenied):
        router.route([msg("t.two", "x")])
    assert backlog.appended == []


def test_the_token_never_leaves_the_router():
    backlog = Sink()
    router = Router(make_cache(), backlog, Sink(), Metrics())
    router.route([msg("t.one", "t.one is in the text")])
    (_, [out]), = backlog.appended
    assert out.split(b" ")[3] == b"web"


def test_rfc3164_lines_are_routed_when_their_tag_is_a_token():
    backlog, metrics = Sink(), Metrics()
    router = Router(make_cache(), backlog, Sink(), metrics, clock=lambda: 1795600000.0)
    router.route([b"<13>Nov 24 10:00:01 myhost t.one[7]: old style", b"<13>Nov 24 10:00:01 myhost cron: no token"])
    assert backlog.appended == [("app1", [b"<13>1 2026-11-24T10:00:01+00:00 myhost web 7 - - old style"])]
    assert metrics.get("logplex_messages_unknown_token_total") == 0
    assert metrics.get("logplex_messages_malformed_total") == 1
