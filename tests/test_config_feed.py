"""The feed: loading the whole config a slice of records per reactor turn, swapped in at once, and
refreshes that land during a load kept (on a Clock, over a Redis of dictionaries)."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.model import Channel, Credential, Drain, Token
from logplex.config import feed as config_feed
from logplex.config.feed import ConfigFeed
from logplex.redis.address import RedisAddress
from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT, NodeSettings

KEYS = RedisKeys("lp", 0)


class PagedRedis:
    """The commands a load and a refresh send, over dictionaries; every answer fires at once.

    The page script pages each hash in key order, `count` records a page, and
    like HSCAN returns every record present from the first page to the last one
    (Redis's own order differs, which a load does not rely on).
    """

    def __init__(self) -> None:
        self.strings: dict[bytes, bytes] = {KEYS.cluster_id: b"c", KEYS.epoch: b"1", KEYS.version: b"1"}
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.sets: dict[bytes, set[bytes]] = {}
        self.pages: list[bytes] = []  # the hash of every page served, in order
        self.finished: list[bytes] = []  # the hash of every last page served, in order

    def h(self, key: bytes) -> dict[bytes, bytes]:
        return self.hashes.setdefault(key, {})

    def put_channel(self, channel: Channel, tokens: list[Token] = (), drains: list[Drain] = ()) -> None:
        """As the store's scripts write a channel, its tokens and drains."""
        cid = channel.id.encode()
        self.h(KEYS.channels)[cid] = channel.to_json().encode()
        for t in tokens:
            self.h(KEYS.tokens)[t.id.encode()] = t.to_json().encode()
            self.sets.setdefault(KEYS.channel_tokens(channel.id), set()).add(t.id.encode())
        for d in drains:
            self.h(KEYS.drains)[b"%d" % d.id] = d.to_json().encode()
            self.sets.setdefault(KEYS.channel_drains(channel.id), set()).add(b"%d" % d.id)
        self.bump()

    def delete_channel(self, channel_id: str) -> None:
        self.h(KEYS.channels).pop(channel_id.encode(), None)
        for t in self.sets.pop(KEYS.channel_tokens(channel_id), set()):
            self.h(KEYS.tokens).pop(t, None)
        for d in self.sets.pop(KEYS.channel_drains(channel_id), set()):
            self.h(KEYS.drains).pop(d, None)
        self.bump()

    def bump(self) -> None:
        self.strings[KEYS.version] = b"%d" % (int(self.strings[KEYS.version]) + 1)

    # commands
    def get(self, key):
        return defer.succeed(self.strings.get(key))

    def set(self, key, value, **kw):
        self.strings.setdefault(key, value if isinstance(value, bytes) else str(value).encode())
        return defer.succeed(True)

    def mget(self, keys):
        return defer.succeed([self.strings.get(k) for k in keys])

    def hgetall(self, key):
        return defer.succeed(dict(self.hashes.get(key, {})))

    def hget(self, key, field):
        field = field if isinstance(field, bytes) else field.encode()
        return defer.succeed(self.hashes.get(key, {}).get(field))

    def hmget(self, key, fields):
        h = self.hashes.get(key, {})
        return defer.succeed([h.get(f if isinstance(f, bytes) else f.encode()) for f in fields])

    def smembers(self, key):
        return defer.succeed(set(self.sets.get(key, set())))

    def eval(self, script, keys, args):
        assert script == config_feed._PAGE
        key, cursor, count = keys[0], args[0], int(args[1])
        self.pages.append(key)
        # The cursor is the last field served (after a "1", so that it is never "0").
        after = cursor[1:] if cursor != b"0" else None
        items = sorted((f, v) for f, v in self.hashes.get(key, {}).items() if after is None or f > after)
        page = b"[" + b",".join(json.dumps(f.decode()).encode() + b"," + v for f, v in items[:count]) + b"]"
        following = b"1" + items[count - 1][0] if len(items) > count else b"0"
        if following == b"0":
            self.finished.append(key)
        return defer.succeed([following, page])


def app(n: int, incarnation: str = "i", drain: bool = False) -> tuple[Channel, list[Token], list[Drain]]:
    """Channel app-N with one token, and a drain if asked."""
    channel = Channel(f"app-{n:05d}", incarnation=incarnation)
    drains = [Drain(n, channel.id, f"d.{n}", f"https://logs.example.com/{n}")] if drain else []
    return channel, [Token(f"t.{n:05d}", channel.id, "web")], drains


def filled(n: int) -> PagedRedis:
    redis = PagedRedis()
    for i in range(n):
        redis.put_channel(*app(i, drain=i % 10 == 0))
    redis.h(KEYS.creds)[b"admin"] = Credential("admin", "hash", frozenset({"full_api"})).to_json().encode()
    return redis


def feed_on(redis: PagedRedis, clock: Clock, **kw) -> ConfigFeed:
    kw = {"page_size": 100, "slice_size": 25, "turn_budget": 0.0, "timeout": REDIS_TIMEOUT,
          "reconcile_interval": NodeSettings().reconcile_interval, **kw}
    return ConfigFeed(redis, RedisAddress(host="paged"), clock, keys=KEYS, **kw)


def turns_until(clock: Clock, d: defer.Deferred, each=lambda: None, most: int = 100_000) -> int:
    """Run reactor turns until d fires; each() is called after every turn. Returns how many turns."""
    n = 0
    while not d.called:
        assert n < most, "the load never finished"
        clock.advance(0.001)
        n += 1
        each()
    return n


def view(cache) -> tuple:
    """What the router and the API read of a cache."""
    return (dict(cache.channels), dict(cache.routes), dict(cache.channel_drains), dict(cache.creds))


def test_a_load_of_many_records_spans_turns_and_the_router_sees_none_or_all_of_it():
    clock, redis = Clock(), filled(2000)
    feed = feed_on(redis, clock)
    empty = view(feed.cache)
    seen = []
    turns = turns_until(clock, feed.load(), lambda: seen.append(view(feed.cache)))
    full = view(feed.cache)
    assert len(full[0]) == 2000 and len(full[1]) == 2000 and len(full[2]) == 200
    # 2000 channels + 2000 tokens + 200 drains, 25 records a slice, one slice a turn.
    assert turns >= 4200 // 25
    assert all(v in (empty, full) for v in seen), "the router saw half a config"


def test_a_reload_that_changes_much_swaps_the_new_config_in_at_once():
    clock, redis = Clock(), filled(2000)
    feed = feed_on(redis, clock)
    turns_until(clock, feed.load())
    before = view(feed.cache)
    # Every channel made again (new incarnations, new tokens): more than a reload applies in place.
    redis.hashes.clear()
    for i in range(2000):
        channel, tokens, drains = app(i, incarnation="again", drain=i % 10 == 0)
        redis.put_channel(channel, [Token(f"t.again.{i}", channel.id, "web")], drains)
    seen = []
    turns = turns_until(clock, feed.load(), lambda: seen.append(view(feed.cache)))
    after = view(feed.cache)
    assert after != before and turns > 100
    assert all(v in (before, after) for v in seen), "the router saw half a config"
    assert feed.cache.routes[b"t.again.7"] == ("app-00007", b"web") and b"t.00007" not in feed.cache.routes


def test_a_reload_of_an_unchanged_config_keeps_every_record_and_tells_no_one():
    clock, redis = Clock(), filled(500)
    feed = feed_on(redis, clock)
    told = []
    feed.drain_listeners.append(told.append)
    feed.identity_listeners.append(lambda channel_id, now: told.append(("ended", channel_id)))
    turns_until(clock, feed.load())
    assert len(told) == 50  # the first load tells of every channel with drains
    records = {cid: feed.cache.channels[cid] for cid in ("app-00001", "app-00400")}
    routes = feed.cache.routes
    del told[:]
    turns_until(clock, feed.load())
    assert told == []
    assert feed.cache.routes is routes  # changed in place, and nothing needed changing
    assert all(feed.cache.channels[cid] is record for cid, record in records.items())


def test_a_reload_applies_a_few_changes_and_tells_the_listeners_of_them():
    clock, redis = Clock(), filled(500)
    feed = feed_on(redis, clock)
    turns_until(clock, feed.load())
    told, ended = [], []
    feed.drain_listeners.append(told.append)
    feed.identity_listeners.append(lambda channel_id, now: ended.append((channel_id, now)))
    redis.delete_channel("app-00010")  # had a drain
    replaced, tokens, _ = app(20, incarnation="new")
    redis.delete_channel("app-00020")
    redis.put_channel(replaced, tokens)
    redis.put_channel(*app(7, drain=True))  # a drain added
    turns_until(clock, feed.load())
    assert "app-00010" not in feed.cache.channels and b"t.00010" not in feed.cache.routes
    assert 10 not in feed.cache.drains
    assert feed.cache.channels["app-00020"].incarnation == "new"
    assert feed.cache.channel_drains["app-00007"] == {7: app(7, drain=True)[2][0]}
    assert sorted(told) == ["app-00007", "app-00010", "app-00020"]
    assert sorted(ended) == [("app-00010", None), ("app-00020", replaced)]


@pytest.mark.parametrize("others", [0, 3000], ids=["few changes", "many changes"])
def test_a_refresh_that_lands_during_a_load_is_not_undone_by_the_older_pages(others):
    clock, redis = Clock(), filled(1000)
    feed = feed_on(redis, clock)
    turns_until(clock, feed.load())
    for i in range(1000, 1000 + others // 2):  # enough new channels to take the copy-and-swap path
        redis.put_channel(*app(i))
    late, late_tokens, late_drains = app(99_999, drain=True)
    grant = Credential("late-reader", "hash", frozenset({"read_channel"}))
    flagged = Channel("app-00005", frozenset({"no_tail"}), "i")
    state, start = {"done": False}, len(redis.finished)

    def write_once_the_channel_pages_are_read():
        # A write the feed announces after the load read the channels and tokens it concerns.
        if state["done"] or not {KEYS.channels, KEYS.tokens} <= set(redis.finished[start:]):
            return
        state["done"] = True
        redis.put_channel(late, late_tokens, late_drains)
        redis.put_channel(flagged)
        redis.delete_channel("app-00003")
        redis.h(KEYS.creds)[b"late-reader"] = grant.to_json().encode()
        for channel_id in (late.id, flagged.id, "app-00003"):
            feed.refresh_channel(channel_id)
        feed.refresh_credential("late-reader")
        assert late.id in feed.cache.channels  # in force at once, before the load ends

    turns_until(clock, feed.load(), write_once_the_channel_pages_are_read)
    assert state["done"]
    assert feed.cache.channels[late.id] == late and feed.cache.routes[b"t.99999"] == (late.id, b"web")
    assert feed.cache.channel_drains[late.id] == {99_999: late_drains[0]}
    assert feed.cache.channels["app-00005"].flags == {"no_tail"}
    assert "app-00003" not in feed.cache.channels and b"t.00003" not in feed.cache.routes
    assert feed.cache.creds["late-reader"] == grant
    assert len(feed.cache.channels) == 1000 + others // 2, sorted({f"app-{i:05d}" for i in range(1000 + others // 2)} - {"app-00003"} - set(feed.cache.channels))


def test_callers_share_the_load_in_flight():
    clock, redis = Clock(), filled(300)
    feed = feed_on(redis, clock)
    first = feed.load()
    clock.advance(0.001)
    second = feed.load()
    turns_until(clock, first)
    assert second.called and len(feed.cache.channels) == 300
    assert redis.pages.count(KEYS.channels) == 3  # one read: 300 channels, 100 a page


def test_a_reseed_while_the_pages_are_read_makes_the_load_read_them_again():
    clock, redis = Clock(), filled(300)
    feed = feed_on(redis, clock)
    turns_until(clock, feed.load())
    state, start = {"done": False}, len(redis.finished)

    def reseed_once():
        if not state["done"] and KEYS.tokens in redis.finished[start:]:
            state["done"] = True
            # Another node re-seeded: a new epoch, and (here) one channel more.
            redis.put_channel(*app(500))
            redis.strings[KEYS.epoch] = b"2"

    redis.delete_channel("app-00001")
    d = feed.load()
    turns_until(clock, d, reseed_once)
    assert state["done"] and d.called
    assert "app-00500" in feed.cache.channels and "app-00001" not in feed.cache.channels
    assert feed.held.epoch == 2


def test_a_record_without_its_fields_fails_the_load_with_a_sentence_and_keeps_the_cache():
    clock, redis = Clock(), filled(10)
    feed = feed_on(redis, clock)
    turns_until(clock, feed.load())
    held = view(feed.cache)
    redis.h(KEYS.tokens)[b"t.broken"] = b'{"name": "web"}'
    d = feed.load()
    turns_until(clock, d)
    assert "tokens hash holds a record this node cannot read" in d.result.value.message
    d.addErrback(lambda f: None)
    assert view(feed.cache) == held
