"""The config store against a real Redis: atomic writes, and caches that follow each other."""

import json
import tempfile

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from logplex.config.store import ConfigStore
from logplex.errors import ConfigError, Conflict, NotFound, Unavailable
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.settings import ApiSettings, NodeSettings
from tests.harness.procs import RedisServer


async def until(predicate, timeout=5.0):
    """Wait for a condition the change feed brings about, polling the reactor."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(reactor, 0.01, lambda: None)


class Stores(TestCase):
    """Two stores (nodes a and b) on one real Redis."""

    timeout = 30

    def setUp(self):
        self.redis_server = RedisServer(tempfile.mkdtemp(prefix="logplex-test-"))
        self.redis_server.start()
        self.addCleanup(self.redis_server.stop)
        self.address = parse_redis_url(self.redis_server.url)
        return defer.ensureDeferred(self._setup())

    async def _setup(self):
        self.a = await self.node(max_drains=2)
        self.b = await self.node(max_drains=2)

    async def node(self, max_drains: int = ApiSettings().max_drains,
                   session_expiry: int = ApiSettings().session_expiry, **kw):
        pool = connect(self.address, poolsize=2, reply_timeout=2)
        self.addCleanup(pool.disconnect)
        store = ConfigStore(pool, self.address, reactor,
                            ApiSettings(max_drains=max_drains, session_expiry=session_expiry), timeout=2,
                            reconcile_interval=NodeSettings().reconcile_interval, keys=RedisKeys("lp", 0), **kw)
        store.start()
        self.addCleanup(store.stop)
        await store.load()
        return store


class ConfigStoreTests(Stores):
    async def test_a_change_on_one_node_is_in_force_on_the_other(self):
        await self.a.put_channel("app", ["web", "worker"])
        await until(lambda: "app" in self.b.cache.channels and len(self.b.cache.routes) == 2)
        token = self.a.tokens_of("app")[0]
        assert self.b.cache.routes[token.id.encode()] == ("app", token.name.encode())
        drain = await self.a.add_drain("app", "https://logs.example.com/x")
        await until(lambda: drain.id in self.b.cache.drains)
        await self.a.delete_channel("app")
        await until(lambda: not self.b.cache.channels and not self.b.cache.routes and not self.b.cache.drains)

    async def test_put_channel_keeps_kept_tokens_and_replaces_the_rest(self):
        assert await self.a.put_channel("app", ["a", "b"]) is True
        before = {t.name: t.id for t in self.a.tokens_of("app")}
        assert await self.a.put_channel("app", ["b", "c"]) is False
        after = {t.name: t.id for t in self.a.tokens_of("app")}
        assert set(after) == {"b", "c"} and after["b"] == before["b"]
        assert before["a"].encode() not in self.a.cache.routes

    async def test_v2_ids_skip_names_taken_by_v3_channels(self):
        await self.a.put_channel("1", [])
        channel, tokens = await self.a.create_channel_v2(["app"])
        assert channel.id == "2"
        assert [t.name for t in tokens] == ["app"]

    async def test_drain_limits_duplicates_and_reservations(self):
        await self.a.put_channel("app", [])
        reserved = await self.a.add_drain("app", None)
        assert reserved.url is None and reserved.token.startswith("d.")
        await self.a.add_drain("app", "syslog://logs.example.com:514")
        with pytest.raises(ConfigError) as e:
            await self.a.add_drain("app", "https://other.example.com/")
        assert "maximum of 2 drains" in e.value.message
        with pytest.raises(Conflict):
            await self.a.set_drain_url("app", reserved.id, "syslog://logs.example.com:514")
        updated = await self.a.set_drain_url("app", reserved.id, "https://x.example.com/")
        assert updated.url == "https://x.example.com/" and updated.token == reserved.token
        await self.a.delete_drain("app", reserved.id)
        with pytest.raises(NotFound):
            await self.a.delete_drain("app", reserved.id)
        with pytest.raises(NotFound):
            await self.a.add_drain("nochannel", "https://x.example.com/")

    async def test_concurrent_drain_creation_cannot_pass_the_limit(self):
        await self.a.put_channel("app", [])
        results = await defer.DeferredList(
            [defer.ensureDeferred(store.add_drain("app", f"https://h{n}.example.com/"))
             for n, store in enumerate([self.a, self.b, self.a, self.b])],
            consumeErrors=True,
        )
        assert sum(ok for ok, _ in results) == 2
        await until(lambda: len(self.b.drains_of("app")) == 2)

    async def test_a_missed_notification_is_caught_by_the_reconcile(self):
        # A write that bypasses the feed (as if the notification was lost):
        # the version moved, so the next reconcile reloads.
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        await raw.hset(b"lp:channels", b"ghost", json.dumps({"flags": []}))
        await raw.incr(b"lp:version")
        assert "ghost" not in self.b.cache.channels
        await self.b._reconcile_tick()
        assert "ghost" in self.b.cache.channels

    async def test_a_node_that_heard_every_write_does_not_reload_at_the_reconcile(self):
        loads = []
        real_load = self.b.load
        self.b.load = lambda: loads.append(1) or real_load()
        await self.a.put_channel("heard", ["web"])
        await self.a.add_drain("heard", "https://logs.example.com/x")
        await until(lambda: len(self.b.drains_of("heard")) == 1)
        await self.b._reconcile_tick()
        assert loads == []  # logged "version moved without a notification" after every write before

    async def test_a_refresh_that_fails_is_retried_without_waiting_for_the_reconcile(self):
        # After a config Redis outage the feed may be back before the command
        # connection is: the refresh a notification asks for then fails.
        real_hget, failed = self.b.redis.hget, []

        def hget_failing_once(*args):
            if not failed:
                failed.append(args)
                return defer.fail(ConnectionError("not connected yet"))
            return real_hget(*args)

        self.b.redis.hget = hget_failing_once
        await self.a.put_channel("late", ["web"])
        await until(lambda: failed)
        assert "late" not in self.b.cache.channels
        # Within seconds: the reconcile would take up to 30.
        await until(lambda: "late" in self.b.cache.channels, timeout=3.0)

    async def test_credentials_are_stored_hashed_and_ensured(self):
        await self.a.ensure_credential("admin", "secret")
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        stored = await raw.hget(b"lp:creds", b"admin")
        assert b"secret" not in stored and b"scrypt$" in stored
        await until(lambda: "admin" in self.b.cache.creds)
        first_hash = self.a.cache.creds["admin"].secret_hash
        await self.a.ensure_credential("admin", "secret")
        assert self.a.cache.creds["admin"].secret_hash == first_hash  # unchanged
        await self.a.ensure_credential("admin", "rotated")
        assert self.a.cache.creds["admin"].secret_hash != first_hash

    async def test_workers_ensuring_one_credential_together_keep_one_hash(self):
        # Two workers started with the same --auth both read "no credential" before either
        # writes. Each used to store its own salted hash over the other's, so a login being
        # checked against the first hash was refused when the second arrived (CI's smoke
        # met a 401 so).
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        await defer.gatherResults([defer.ensureDeferred(store.ensure_credential("admin", "secret"))
                                   for store in (self.a, self.b)])
        stored = json.loads(await raw.hget(b"lp:creds", b"admin"))["hash"]
        assert self.a.cache.creds["admin"].secret_hash == stored
        assert self.b.cache.creds["admin"].secret_hash == stored

    async def test_sessions_expire(self):
        from logplex.model import SessionSpec

        store = await self.node(session_expiry=1)
        spec = SessionSpec(id="s1", channel_id="app", num=10, tail=True, ps="web", source=None)
        await store.create_session(spec)
        assert await store.session("s1") == spec
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        assert await raw.ttl(b"lp:session:s1") == 1

    async def test_a_dead_config_redis_makes_writes_unavailable_and_reads_go_on(self):
        await self.a.put_channel("app", ["web"])
        self.redis_server.kill()
        with pytest.raises(Unavailable):
            await self.a.put_channel("other", [])
        assert "app" in self.a.cache.channels and self.a.cache.routes


class ChannelIdentityTests(Stores):
    """A channel's incarnation: made once, kept by every change, new after a DELETE."""

    async def test_every_node_is_told_when_a_channel_it_knew_is_deleted_or_replaced(self):
        told = []
        self.b.identity_listeners.append(lambda channel_id, now: told.append((channel_id, now)))
        await self.a.put_channel("app", ["web"])
        await until(lambda: "app" in self.b.cache.channels)
        first = self.b.cache.channels["app"]
        assert first.incarnation and first == self.a.cache.channels["app"]
        # Changes of the same channel are no news.
        await self.a.put_channel("app", ["web", "worker"])
        await self.a.add_token("app", "late")
        await self.a.set_channel_flags("app", frozenset({"no_tail"}))
        await until(lambda: self.b.cache.channels["app"].flags == {"no_tail"})
        assert self.b.cache.channels["app"].incarnation == first.incarnation and told == []
        await self.a.delete_channel("app")
        await self.a.put_channel("app", ["web"])
        await until(lambda: self.b.cache.channels.get("app", first) != first)
        second = self.b.cache.channels["app"]
        assert second.incarnation not in ("", first.incarnation)
        # Seen as one change or as two (deleted, then made), never as nothing.
        assert told in ([("app", second)], [("app", None)])

    async def test_a_full_reload_tells_of_a_channel_replaced_while_the_feed_was_down(self):
        await self.a.put_channel("app", ["web"])
        await until(lambda: "app" in self.b.cache.channels)
        told = []
        self.b.identity_listeners.append(lambda channel_id, now: told.append((channel_id, now)))
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        await raw.hset(b"lp:channels", b"app", json.dumps({"flags": [], "incarnation": "replaced"}))
        await self.b.load()
        assert told == [("app", self.b.cache.channels["app"])]
        assert self.b.cache.channels["app"].incarnation == "replaced"

    async def test_flags_are_set_only_on_the_channel_they_were_read_from(self):
        await self.a.put_channel("app", ["web"])
        stale = self.a.cache.channels["app"]
        await self.b.refresh_channel("app")
        await self.b.delete_channel("app")
        await self.b.put_channel("app", ["web"])
        # a has not heard yet: its flags must not land on the new channel.
        self.a.cache.channels["app"] = stale
        with pytest.raises(NotFound):
            await self.a.set_channel_flags("app", frozenset({"no_tail"}))
        await self.a.refresh_channel("app")
        assert self.a.cache.channels["app"].flags == frozenset()

    async def test_a_channel_stored_without_an_incarnation_keeps_the_legacy_one_through_changes(self):
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        await raw.hset(b"lp:channels", b"old", json.dumps({"flags": []}))
        await self.a.refresh_channel("old")
        assert self.a.cache.channels["old"].incarnation == ""
        await self.a.put_channel("old", ["web"])
        await self.a.set_channel_flags("old", frozenset({"no_redis"}))
        assert json.loads(await raw.hget(b"lp:channels", b"old")) == {"flags": ["no_redis"]}
        await self.a.delete_channel("old")
        await self.a.put_channel("old", ["web"])
        assert self.a.cache.channels["old"].incarnation != ""


class GenerationTests(Stores):
    """A config Redis that comes back empty, older or foreign is never adopted; one store re-seeds it."""

    async def _setup(self):
        from logplex.metrics import Metrics

        self.metrics = {"a": Metrics(), "b": Metrics()}
        self.a = await self.node(max_drains=2, metrics=self.metrics["a"])
        self.b = await self.node(max_drains=2, metrics=self.metrics["b"])

    def raw(self):
        raw = connect(self.address, poolsize=1)
        self.addCleanup(raw.disconnect)
        return raw

    def reseeds(self):
        return sum(m.get("logplex_config_reseeds_total") for m in self.metrics.values())

    async def test_an_empty_config_redis_is_refused_and_reseeded_by_exactly_one_store(self):
        await self.a.put_channel("app", ["web"])
        drain = await self.a.add_drain("app", "https://logs.example.com/x")
        await self.a.ensure_credential("admin", "secret")
        await until(lambda: drain.id in self.b.cache.drains and "admin" in self.b.cache.creds)
        channel = self.a.cache.channels["app"]
        held = self.a.held
        assert held.cluster_id
        self.redis_server.restart()  # no persistence: it comes back empty, on the same port
        await until(lambda: self.reseeds() == 1, timeout=10)
        # Neither cache ever lost anything, and both adopt the re-seeded config.
        for store in (self.a, self.b):
            assert store.cache.channels["app"] == channel  # the same incarnation
            assert drain.id in store.cache.drains and "admin" in store.cache.creds
        await until(lambda: self.a.refused is None and self.b.refused is None and self.a.held == self.b.held)
        assert self.a.held.cluster_id == held.cluster_id and self.a.held.rank > held.rank
        raw = self.raw()
        assert await raw.hget(b"lp:creds", b"admin") == self.a.cache.creds["admin"].to_json().encode()
        # Writes work again, and a new drain never takes an id a spool may still hold.
        newer = await self.b.add_drain("app", "https://logs.example.com/y")
        assert newer.id > drain.id
        await until(lambda: newer.id in self.a.cache.drains)
        assert self.reseeds() == 1

    async def test_an_older_config_is_refused_with_a_sentence_then_reseeded(self):
        await self.a.put_channel("app", ["web"])
        await self.a.put_channel("gone", ["web"])
        await self.a.add_drain("gone", "https://logs.example.com/x")
        raw = self.raw()
        snapshot = {key: await raw.execute_command("DUMP", key) for key in await raw.keys(b"lp:*")}
        await self.a.delete_channel("gone")
        await self.a.put_channel("app", ["web", "worker"])
        await until(lambda: "gone" not in self.b.cache.channels and len(self.b.tokens_of("app")) == 2)
        # A restore of the snapshot taken before those writes.
        await raw.flushdb()
        for key, value in snapshot.items():
            await raw.execute_command("RESTORE", key, 0, value)
        await self.b.load()
        assert self.b.refused in ("older", None)  # None: it already re-seeded and adopted
        await until(lambda: self.reseeds() == 1 and self.b.refused is None and self.a.refused is None,
                    timeout=10)
        assert {t.name for t in self.b.tokens_of("app")} == {"web", "worker"}
        assert int(await raw.get(b"lp:epoch")) == 1
        # What was deleted since the snapshot stays deleted: the channel, its tokens and drain sets.
        assert await raw.hget(b"lp:channels", b"gone") is None
        assert not await raw.exists(b"lp:chdrain:gone") and not await raw.exists(b"lp:chtok:gone")
        assert len(await raw.hgetall(b"lp:tokens")) == 2

    async def test_writes_are_refused_while_the_config_is_foreign_and_nothing_is_overwritten(self):
        await self.a.put_channel("app", ["web"])
        raw = self.raw()
        ours = await raw.get(b"lp:cluster")
        await raw.set(b"lp:cluster", b"another")
        await self.a.load()
        assert self.a.refused == "foreign"
        with pytest.raises(Unavailable) as e:
            await self.a.put_channel("app", ["web", "more"])
        assert "another cluster's config" in e.value.message
        assert "app" in self.a.cache.channels  # still routing from its cache
        assert await raw.get(b"lp:cluster") == b"another" and self.reseeds() == 0
        await raw.set(b"lp:cluster", ours)
        await self.a.load()
        assert self.a.refused is None
        await self.a.put_channel("app", ["web", "more"])

    async def test_a_drain_deleted_through_the_api_leaves_a_tombstone_on_every_node(self):
        await self.a.put_channel("app", ["web"])
        one = await self.a.add_drain("app", "https://logs.example.com/1")
        two = await self.a.add_drain("app", "https://logs.example.com/2")
        await until(lambda: two.id in self.b.cache.drains)
        await self.a.delete_drain("app", one.id)
        assert one.id in self.a.tombstones
        await until(lambda: one.id in self.b.tombstones)
        await self.b.delete_channel("app")
        await until(lambda: two.id in self.a.tombstones and two.id in self.b.tombstones)

    async def test_a_node_starting_on_an_empty_config_redis_while_others_run_waits_for_their_reseed(self):
        import time as _time

        await self.a.put_channel("app", ["web"])
        raw = self.raw()
        await raw.flushdb()  # lost its data
        await raw.hset(b"lp:nodes", b"a", json.dumps({"seen_at": _time.time(), "ttl": 15.0}))
        pool = connect(self.address, poolsize=1, reply_timeout=2)
        self.addCleanup(pool.disconnect)
        newcomer = ConfigStore(pool, self.address, reactor, ApiSettings(), timeout=2,
                               reconcile_interval=NodeSettings().reconcile_interval, keys=RedisKeys("lp", 0), node="new")
        with pytest.raises(Unavailable) as e:
            await newcomer.load()
        assert "waiting for one of them to re-seed it" in e.value.message
        assert await raw.get(b"lp:cluster") is None  # it made none of its own
        await self.a.load()  # a notices: refuses, re-seeds
        await until(lambda: self.reseeds() == 1)
        await newcomer.load()
        assert newcomer.held.cluster_id == self.a.held.cluster_id and "app" in newcomer.cache.channels


class CatchUpTests(Stores):
    """A worker that has not heard of a token made through another one yet (its change feed lags)."""

    async def test_a_line_with_a_token_made_through_another_node_a_moment_ago_is_routed_not_dropped(self):
        from logplex.metrics import Metrics
        from logplex.router import Router, TokenMisses
        from tests.helpers import RecordingBacklog, RecordingTails

        backlog, metrics = RecordingBacklog(), Metrics()
        router = Router(self.b.cache, backlog, RecordingTails(), metrics,
                        misses=TokenMisses(self.b.caught_up, reactor.seconds))
        # b's feed is slow: what Redis publishes to it waits in its socket.
        feed = self.b._subscription._protocol.transport
        feed.pauseProducing()
        await self.a.put_channel("app", ["web"])
        token = self.a.tokens_of("app")[0].id
        assert token.encode() not in self.b.cache.routes
        line = b"<13>1 2026-12-03T10:00:00+00:00 host %s web.1 - - made a moment ago" % token.encode()
        held = router.route_held([line])
        await task.deferLater(reactor, 0.05, lambda: None)
        assert not held.called and backlog.calls == []
        feed.resumeProducing()
        await held
        assert backlog.calls == [("app", [line.replace(token.encode(), b"web")])]
        assert metrics.get("logplex_messages_unknown_token_total") == 0
        # A token nobody made is dropped once the feed has caught up, and counted.
        await router.route_held([line.replace(token.encode(), b"t.nobody")])
        assert metrics.get("logplex_messages_unknown_token_total") == 1

    async def test_caught_up_waits_for_the_refreshes_the_feed_brought(self):
        feed = self.b._subscription._protocol.transport
        feed.pauseProducing()
        await self.a.put_channel("app", ["web", "worker"])
        drain = await self.a.add_drain("app", "https://logs.example.com/x")
        first, second = self.b.caught_up(), self.b.caught_up()
        await task.deferLater(reactor, 0.05, lambda: None)
        assert not first.called and not second.called
        feed.resumeProducing()
        await first
        # Everything written before the call is in b's cache the moment it fires.
        assert len(self.b.cache.routes) == 2 and drain.id in self.b.cache.drains
        await second
