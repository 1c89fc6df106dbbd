"""The router: token to channel, cooking, fan-out, accounting."""

import pytest

from logplex.metrics import Metrics
from logplex.model import NO_REDIS, NO_TAIL, Channel, Drain, Token
from logplex.config.cache import ConfigCache
from logplex.router import MALFORMED, UNKNOWN_TOKEN, DropReport, IngressDenied, Router


class Sink:
    def __init__(self, tails=()):
        self.appended = []
        self.published = []
        self.tailed_ids = set(tails)

    def extend(self, by_channel):
        for channel_id, messages in by_channel.items():
            self.appended.append((channel_id, list(messages)))

    def tailed(self, channel_ids):
        return [c for c in channel_ids if c in self.tailed_ids]

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


class Lines:
    """DropReport's writer and clock, in memory."""

    def __init__(self):
        self.now = 1000.0
        self.told = []

    def clock(self):
        return self.now

    def emit(self, reason, detail, count):
        self.told.append((reason, detail, count))


def test_dropped_lines_are_told_at_once_then_once_a_minute_with_the_count():
    lines = Lines()
    drops = DropReport(lines.clock, lines.emit)
    drops.add("unknown token", "t.abcdef… (38 bytes)", 1)
    drops.add("unknown token", "t.abcdef… (38 bytes)", 5)
    drops.add("unknown token", "t.123456… (38 bytes)", 2)
    assert lines.told == [("unknown token", "t.abcdef… (38 bytes)", 1), ("unknown token", "t.123456… (38 bytes)", 2)]
    lines.now += 30
    drops.flush()  # not a minute yet: nothing more
    assert len(lines.told) == 2
    drops.add("unknown token", "t.abcdef… (38 bytes)", 4)
    lines.now += 30
    drops.flush()
    assert lines.told[2:] == [("unknown token", "t.abcdef… (38 bytes)", 9)]
    lines.now += 60
    drops.flush()  # quiet for a minute: forgotten, so the next one is told at once
    assert drops.kinds == {}
    drops.add("unknown token", "t.abcdef… (38 bytes)", 1)
    assert lines.told[-1] == ("unknown token", "t.abcdef… (38 bytes)", 1)


def test_drop_kinds_are_bounded_in_number():
    lines = Lines()
    drops = DropReport(lines.clock, lines.emit, max_kinds=3)
    for i in range(100):
        drops.add("unknown token", f"t.{i:06d}", 1)
    assert len(drops.kinds) == 4  # three told apart, the rest counted together
    assert lines.told[-1] == ("unknown token", "(and others)", 1)


def test_the_router_reports_unknown_tokens_redacted_and_malformed_lines_by_reason():
    lines = Lines()
    drops = DropReport(lines.clock, lines.emit)
    sink = Sink()
    router = Router(make_cache(), sink, sink, Metrics(), drops=drops)
    secret = "t.0f1e2d3c-aaaa-4bbb-8ccc-123456789abc"
    router.route([msg(secret, "typo"), msg(secret, "typo again"), b"garbage", msg("t.one", "fine")])
    assert (UNKNOWN_TOKEN, "t.0f1e2d… (38 bytes)", 2) in lines.told
    assert (MALFORMED, "", 1) in lines.told
    assert all(secret not in detail for _, detail, _ in lines.told)
    assert sink.appended == [("app1", [msg("web", "fine")])]


def test_a_sender_waits_for_both_a_congested_backlog_writer_and_a_full_drain():
    from twisted.internet.defer import Deferred

    backlog_wait, drain_wait, asked = Deferred(), Deferred(), []

    def backlog_hold(channels):
        asked.append(("backlog", sorted(channels)))
        return backlog_wait

    def drain_hold(channels):
        asked.append(("drains", sorted(channels)))
        return drain_wait

    router = Router(make_cache(), Sink(), Sink(), Metrics(), hold=drain_hold, backlog_hold=backlog_hold)
    held = router.route_held([msg("t.one", "a"), msg("t.two", "b")])
    assert asked == [("backlog", ["app1", "app2"]), ("drains", ["app1", "app2"])]
    backlog_wait.callback(None)
    assert not held.called
    drain_wait.callback(None)
    assert held.called
    # With ingress to Redis switched off, the backlog writer holds nobody.
    router.deny_redis = True
    assert router.route_held([msg("t.two", "c")]) is drain_wait


def test_the_router_follows_flags_set_and_cleared_on_a_channel_by_a_refresh():
    cache, backlog = make_cache(), Sink()
    router = Router(cache, backlog, Sink(), Metrics())
    token = [Token("t.two", "app2", "worker")]
    cache.replace_channel("app2", Channel("app2", frozenset({NO_REDIS})), token, [])
    router.route([msg("t.two", "a")])
    assert backlog.appended == []
    cache.replace_channel("app2", Channel("app2"), token, [])
    router.route([msg("t.two", "b")])
    assert backlog.appended == [("app2", [msg("worker", "b")])]


class CatchUp:
    """A config catch-up the test completes, bringing in what it was given."""

    def __init__(self, cache):
        from twisted.internet.task import Clock

        self.cache, self.clock, self.waits = cache, Clock(), []

    def __call__(self):
        from twisted.internet.defer import Deferred

        self.waits.append(Deferred())
        return self.waits[-1]

    def finish(self, *tokens):
        """The catch-up ends; the feed brought these tokens of app2 with it."""
        if tokens:
            self.cache.replace_channel("app2", Channel("app2"), [Token(t, "app2", "worker") for t in tokens], [])
        self.waits.pop(0).callback(None)


def test_a_line_whose_token_was_made_a_moment_ago_elsewhere_waits_for_the_config_and_is_routed():
    from logplex.router import TokenMisses

    cache, backlog, metrics = make_cache(), Sink(), Metrics()
    catch_up = CatchUp(cache)
    router = Router(cache, backlog, Sink(), metrics, misses=TokenMisses(catch_up, catch_up.clock.seconds))
    held = router.route_held([msg("t.one", "a"), msg("t.new", "b"), msg("t.new", "c")])
    # The known token's line goes at once; the other two wait, and their sender with them.
    assert backlog.appended == [("app1", [msg("web", "a")])]
    assert metrics.get("logplex_messages_unknown_token_total") == 0 and not held.called
    catch_up.finish("t.new")
    assert held.called
    assert backlog.appended[1:] == [("app2", [msg("worker", "b"), msg("worker", "c")])]
    assert metrics.get("logplex_messages_routed_total") == 3
    assert metrics.get("logplex_messages_routed_late_total") == 2
    assert metrics.get("logplex_messages_received_total") == 3
    assert metrics.get("logplex_messages_unknown_token_total") == 0


def test_a_token_still_unknown_after_a_catch_up_is_dropped_and_then_dropped_at_once_for_a_while():
    from logplex.router import TokenMisses

    cache, backlog, metrics = make_cache(), Sink(), Metrics()
    catch_up = CatchUp(cache)
    misses = TokenMisses(catch_up, catch_up.clock.seconds, remember=10.0)
    router = Router(cache, backlog, Sink(), metrics, misses=misses)
    held = router.route_held([msg("t.typo", "a")])
    catch_up.finish()
    assert held.called and backlog.appended == []
    assert metrics.get("logplex_messages_unknown_token_total") == 1
    # Known to be unknown: no second wait, the sender is not held.
    assert router.route_held([msg("t.typo", "b")]) is None
    assert metrics.get("logplex_messages_unknown_token_total") == 2 and len(catch_up.waits) == 0
    # RFC 3164 lines whose tag is no token never wait.
    assert router.route_held([b"<13>Nov 24 10:00:01 myhost cron: no token"]) is None
    # Some time on, the token is looked for again (it may have been made since).
    catch_up.clock.advance(10.0)
    held = router.route_held([msg("t.typo", "c")])
    assert not held.called
    catch_up.finish("t.typo")
    assert backlog.appended == [("app2", [msg("worker", "c")])]


def test_remembered_unknown_tokens_are_bounded():
    from logplex.router import TokenMisses

    clock = CatchUp(None).clock
    misses = TokenMisses(lambda: None, clock.seconds, remember=10.0, most=4)
    for i in range(4):
        misses.unknown(b"t.%d" % i)
    misses.unknown(b"t.4")
    assert [misses.recently_unknown(b"t.%d" % i) for i in range(5)] == [False, False, True, True, True]
    clock.advance(10.0)
    for i in range(4):
        misses.unknown(b"t.x%d" % i)  # the expired ones go first
    assert [misses.recently_unknown(b"t.x%d" % i) for i in range(4)] == [True] * 4


def test_a_token_is_looked_for_again_once_the_config_caught_up_and_remembered_if_still_unknown():
    from logplex.router import TokenMisses

    cache = make_cache()
    catch_up = CatchUp(cache)
    misses = TokenMisses(catch_up, catch_up.clock.seconds)
    find = lambda token: cache.routes.get(token)  # noqa: E731
    made, typo = misses.again(b"t.new", find), misses.again(b"t.typo", find)
    assert not made.called and not typo.called
    catch_up.finish("t.new")
    catch_up.finish()
    assert made.result is not None and made.result == cache.routes[b"t.new"]
    assert typo.result is None
    assert misses.recently_unknown(b"t.typo") and not misses.recently_unknown(b"t.new")
