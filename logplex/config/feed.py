"""Keeping this node's ConfigCache fresh: a whole load at boot (judged first: a node never
adopts an empty, foreign or older config), refreshes of what the change feed announces,
and a periodic reconcile that catches any notification lost while the feed was down."""

from __future__ import annotations

import gc
import json
import time
import uuid
from typing import Callable, Iterator, Mapping, Sequence

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex.config.cache import (
    ConfigCache,
    Cooperation,
    Generation,
    Snapshot,
    SnapshotDiff,
    judge,
    refusal_sentence,
)
from logplex.errors import ConfigError, Unavailable
from logplex.model import Channel, Credential, Drain, Token
from logplex.redis.address import RedisAddress
from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua
from logplex.redis.subscription import Subscription

log = Logger()

_PAGE = lua("logplex.config", "page")

# A first load of at least this many channels and tokens freezes what it built (ConfigFeed._load).
_FREEZE_AT = 20_000
# A load that finds at most this many records changed applies them to the cache in one
# step (a few ms); more are applied to a copy, a slice at a time, and the copy swapped in.
_IN_PLACE = 2_000


class ConfigFeed:
    """Reads the config Redis into this node's cache and keeps it fresh; writes nothing.

    Other nodes' writes reach the cache through the feed within milliseconds,
    and a periodic reconcile catches any notification lost while the feed was
    down. What changed is told to the listeners (drains, tails, spools).
    ConfigStore (logplex.config.store) adds the writes on top.
    """

    def __init__(
        self,
        redis,
        address: RedisAddress,
        reactor,
        *,
        keys: RedisKeys,
        reconcile_interval: float,
        timeout: float,
        metrics=None,
        node: str | None = None,
        page_size: int = 1000,
        slice_size: int = 250,
        turn_budget: float = 0.01,
        feed_listeners: Mapping[bytes, Sequence[Callable[[bytes], None]]] | None = None,
        identity_listeners: Sequence[Callable[[str, Channel | None], None]] = (),
        recovered_listeners: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.metrics = metrics
        self.redis = redis
        self.address = address
        self.keys = keys
        self.reactor = reactor
        self.reconcile_interval = reconcile_interval
        self.timeout = timeout
        self.cache = ConfigCache()
        self.loaded = False
        self.loaded_at: float | None = None
        self.version = b""
        self.drain_listeners: list[Callable[[str], None]] = []
        # Told (channel id, the channel now or None) when a channel this node
        # knew is deleted or replaced by a new one of the same name: what was
        # made for the old one (tails, streams) ends.
        self.identity_listeners: list[Callable[[str, Channel | None], None]] = list(identity_listeners)
        # Other notifications on the feed (b"tail", b"shards"), by kind.
        self.feed_listeners: dict[bytes, list[Callable[[bytes], None]]] = {
            kind: list(listeners) for kind, listeners in (feed_listeners or {}).items()}
        self._subscription: Subscription | None = None
        self._reconcile: task.LoopingCall | None = None
        self._loading: defer.Deferred | None = None
        self._load_waiters: list[defer.Deferred] = []
        self._retry = None  # a reload after a failed one
        self._stopped = False
        # The generation of the config the cache holds (None before the first load),
        # read from the config Redis only (never counted from notifications).
        self.held: Generation | None = None
        # Why this node refuses what the config Redis holds (None: it does not).
        self.refused: str | None = None
        self.refusal: str = ""  # the sentence refused writes answer
        # Told when the node adopts the config again after refusing one (the
        # --auth credential is ensured again then).
        self.recovered_listeners: list[Callable[[], object]] = list(recovered_listeners)
        # Drains deleted through the API (newest last, bounded): only these lose their spools.
        self.tombstones: dict[int, None] = {}
        self.tombstone_listeners: list[Callable[[int], None]] = []
        self.node = node  # this node's name: its own heartbeat is not another node's
        self._refreshes: dict[str, list[int]] = {}
        # Refreshes the feed's notifications started and that have not finished (caught_up).
        self._refreshing: set[defer.Deferred] = set()
        self._collector_held = False
        # A load reads page_size records per round trip and works through them in
        # slices of slice_size records (a millisecond or two), turn_budget seconds of
        # slices per reactor turn.
        self.page_size = page_size
        self.slice_size = slice_size
        self.cooperation = Cooperation(reactor, budget=turn_budget)

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self._subscription = Subscription(
            self.address, self._on_feed, self._on_feed_connected, reactor=self.reactor
        )
        self._subscription.subscribe([self.keys.feed])
        self._subscription.start()
        self._reconcile = task.LoopingCall(self._reconcile_tick)
        self._reconcile.clock = self.reactor
        self._reconcile.start(self.reconcile_interval, now=False)

    def stop(self):
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._reconcile is not None and self._reconcile.running:
            self._reconcile.stop()
        if self._subscription is not None:
            return self._subscription.stop()
        return None

    def _call(self, d: defer.Deferred) -> defer.Deferred:
        """Bound a Redis call; a dead config Redis becomes Unavailable (HTTP 503)."""
        d.addTimeout(self.timeout, self.reactor)
        if self.metrics is not None:
            started = self.reactor.seconds()

            def timed(result):
                self.metrics.observe("logplex_redis_command_seconds", self.reactor.seconds() - started,
                                     redis="config", op="config")
                return result

            d.addCallback(timed)

        def unavailable(failure):
            failure.trap(Exception)
            if isinstance(failure.value, ConfigError):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                why = f"no answer within {self.timeout:g} s"
            else:
                why = failure.getErrorMessage() or failure.type.__name__
            raise Unavailable(f"The config Redis is not answering ({why}); try again shortly.")

        return d.addErrback(unavailable)

    # -- the cache ----------------------------------------------------------
    def _on_feed_connected(self) -> None:
        # Notifications may have been missed while the feed was down.
        self.load().addErrback(self._catch_up_later, "reload")

    def _catch_up_later(self, failure, what: str) -> None:
        """A reload or refresh failed (the command connection may still be
        reconnecting after an outage the feed already got over): reload the
        whole config in a second, and again until it works, rather than wait
        for the next reconcile."""
        log.warn("config_{what}_failed error={e!r}", what=what, e=failure.getErrorMessage())
        if self._stopped or self._retry is not None and self._retry.active():
            return
        self._retry = self.reactor.callLater(1.0, self._retry_load)

    def _retry_load(self) -> None:
        self._retry = None
        self.load().addErrback(self._catch_up_later, "reload")

    def _on_feed(self, channel: bytes, message: bytes) -> None:
        kind, _, ident = message.partition(b" ")
        if kind == b"drain-deleted":
            if ident.isdigit():
                self._tombstone(int(ident))
            return
        if kind in (b"channel", b"cred", b"reseeded") and (self.refused is not None or kind == b"reseeded"):
            # Nothing from a config this node refuses lands in its cache: it
            # judges the whole config again instead.
            self.load().addErrback(self._catch_up_later, "reload")
            return
        if kind == b"channel":
            d = self.refresh_channel(ident.decode())
        elif kind == b"cred":
            d = self.refresh_credential(ident.decode())
        else:
            for listener in self.feed_listeners.get(kind, ()):
                listener(message)
            return
        self._heard_write()
        self._refreshing.add(d)
        d.addBoth(self._refreshed, d)
        d.addErrback(self._catch_up_later, "refresh")

    def _refreshed(self, result, d: defer.Deferred):
        self._refreshing.discard(d)
        return result

    def caught_up(self) -> defer.Deferred:
        """Fires once every change announced on the feed before this call is in the cache:
        the feed has heard them (Subscription.caught_up), then the refreshes they started,
        and a load under way, are over. Never fails (a feed down or slow is as caught up
        as it can be)."""
        heard = self._subscription.caught_up(self.timeout) if self._subscription else defer.succeed(None)

        def applied(_):
            pending = list(self._refreshing) + ([self.load()] if self._loading is not None else [])
            return defer.DeferredList(pending, consumeErrors=True) if pending else None

        return heard.addCallback(applied)

    def _heard_write(self) -> None:
        """Every write bumps the version once and announces itself once: a node that heard
        every announcement holds the version Redis holds, and the reconcile reloads only
        when one was missed (not after every write, as it did)."""
        if self.version.isdigit() or not self.version:  # b"": nothing was ever written
            self.version = b"%d" % (int(self.version or b"0") + 1)

    def _reconcile_tick(self):
        d = defer.ensureDeferred(self._found())

        def compare(found):
            if self.refused is not None or judge(self.held, found) is not None:
                return self.load()  # judged again; refused (and re-seeded) or adopted
            version = b"%d" % found.version if found.version else b""
            if version != self.version:
                log.info("config_reconcile_reload reason='version moved without a notification'")
                return self.load()

        return d.addCallback(compare).addErrback(
            lambda f: log.warn("config_reconcile_failed error={e!r}", e=f.getErrorMessage())
        )

    def load(self) -> defer.Deferred:
        """Load the whole config (at boot, and after a feed reconnect).

        Callers share the one load in flight, so an older snapshot can never
        land on top of a newer one.
        """
        if self._loading is None:
            self._loading = defer.ensureDeferred(self._load())
            self._loading.addBoth(self._load_finished)
        waiter = defer.Deferred()
        self._load_waiters.append(waiter)
        return waiter

    def _load_finished(self, result) -> None:
        self._loading = None
        waiters, self._load_waiters = self._load_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _found(self) -> Generation:
        """The generation the config Redis holds now."""
        cluster_id, epoch, version = await self._call(
            self.redis.mget([self.keys.cluster_id, self.keys.epoch, self.keys.version]))
        return Generation(cluster_id, int(epoch or 0), int(version or 0))

    async def _others_alive(self) -> bool:
        """Whether another node's heartbeat (NodeRegistry's) is within its TTL."""
        entries = await self._call(self.redis.hgetall(self.keys.nodes))
        now = time.time()
        for name, raw in entries.items():
            try:
                doc = json.loads(raw)
                if name.decode() != self.node and now - doc["seen_at"] <= doc.get("ttl", 15.0):
                    return True
            except (ValueError, KeyError, TypeError):
                continue
        return False

    async def _load(self) -> None:
        if self.held is None and await self._call(self.redis.get(self.keys.cluster_id)) is None:
            if await self._call(self.redis.get(self.keys.version)) is None and await self._others_alive():
                # A config Redis that lost its data while the cluster runs: one of
                # the running nodes re-seeds it within seconds. A cluster id made
                # now would make their config foreign to it, and they would all
                # refuse it for good.
                raise Unavailable("The config Redis is empty while other nodes of the cluster are alive; "
                                  "waiting for one of them to re-seed it from its copy.")
            # The first node to find a config Redis without a cluster id (a new
            # cluster, or one older than cluster ids) gives it one.
            await self._call(self.redis.set(self.keys.cluster_id, uuid.uuid4().hex, only_if_not_exists=True))
        # The first load of a big config holds the garbage collector off while it builds,
        # then freezes what it built: otherwise each of the several full collections that
        # hundreds of thousands of new objects set off walks all of them (150 ms each at
        # 100,000 channels), then and at every full collection after. gc.freeze() keeps
        # what exists then (at boot: the config and the node's services) out of every
        # later collection; records are freed by their reference counts as ever. Later
        # loads keep what did not change (SnapshotDiff), so they leave the collector alone.
        self._collector_held = not self.loaded and gc.isenabled()
        if self._collector_held:
            gc.disable()
        try:
            await self._load_generation()
        finally:
            self._release_collector(freeze=False)

    def _release_collector(self, *, freeze: bool) -> None:
        if self._collector_held:
            self._collector_held = False
            if freeze and len(self.cache.tokens) + len(self.cache.channels) >= _FREEZE_AT:
                gc.freeze()
            gc.enable()

    async def _load_generation(self) -> None:
        """Judge what the config Redis holds; adopt it (read to the side, swapped in at once) or refuse it."""
        for attempt in range(3):
            found = await self._found()
            version = await self._call(self.redis.get(self.keys.version))
            reason = judge(self.held, found)
            if reason is not None:
                self._refuse(reason, found)
                await self._reseed()
                return
            # From here on, what changes in the cache (refreshes from the feed, this node's
            # writes) is remembered, and kept rather than the page read of it.
            diff = SnapshotDiff(self.cache, self.slice_size)
            self.cache.watch()
            try:
                await self._read_pages(diff)
                # A re-seed while the pages were read (by another node) may have mixed two
                # configs in them: read them again. Plain writes bump only the version, and
                # their notifications refresh what they touched, which is kept.
                after = await self._found()
            except BaseException:
                self.cache.forget()
                raise
            if (after.cluster_id, after.epoch) == (found.cluster_id, found.epoch):
                break
            self.cache.forget()
            log.info("config_load_restarted reason='the config Redis was re-seeded while this node read it' "
                     "found={found} now={now}", found=found.describe(), now=after.describe())
        else:
            raise Unavailable("The config Redis was re-seeded three times while this node read it; "
                              "it tries again within a second.")
        if len(diff) <= _IN_PLACE:
            # The usual reload: little changed. In place, in this one step.
            touched = set(self.cache.touched_channels or ())
            self.cache.patch(diff)
        else:
            # A first load, or much changed: a copy (sharing the records and per-channel
            # dicts: C-speed), brought in line a slice at a time, then swapped in at once.
            new = Snapshot()
            try:
                await self.cooperation.run(new.copy_from(self.cache))
                await self.cooperation.run(diff.apply(new))
            except BaseException:
                self.cache.forget()
                raise
            touched = set(self.cache.touched_channels or ())
            self.cache.swap(new)
        # Before the listeners are told: what they make (drain workers…) is not frozen.
        self._release_collector(freeze=True)
        self.version = version or b""
        self.held = found
        self.loaded = True
        self.loaded_at = self.reactor.seconds()
        if self.refused is not None:
            log.info("config_adopted_again generation={generation} after='config_refused reason={reason}'",
                     generation=found.describe(), reason=self.refused)
            self.refused = None
            for listener in self.recovered_listeners:
                try:
                    listener()
                except Exception:
                    log.failure("recovered_listener_failed")
        log.info(
            "config_loaded channels={channels} tokens={tokens} drains={drains} changed_records={changed}",
            channels=len(self.cache.channels), tokens=len(self.cache.tokens),
            drains=len(self.cache.drains), changed=len(diff),
        )
        await self.cooperation.run(self._tell_changes(diff, touched))

    async def _read_pages(self, diff: SnapshotDiff) -> None:
        """Every channel, token, drain and credential, a page per round trip, compared with the cache.

        The four hashes are read side by side, and each one's next page is asked for
        before this one is compared, so that Redis and the node work at once.
        """
        k = self.keys
        reads = [defer.ensureDeferred(self._read_hash(key, read))
                 for key, read in ((k.channels, diff.read_channels), (k.tokens, diff.read_tokens),
                                   (k.drains, diff.read_drains), (k.creds, diff.read_creds))]
        try:
            await defer.gatherResults(reads, consumeErrors=True)
        except defer.FirstError as e:
            raise e.subFailure.value from None
        await self.cooperation.run(diff.gone())

    async def _read_hash(self, key: bytes, read: Callable[[bytes], Iterator[None]]) -> None:
        pending: defer.Deferred | None = self._page(key, b"0")
        while pending is not None:
            cursor, page = await pending
            pending = None if cursor in (b"0", "0", 0) else self._page(key, cursor)
            try:
                await self.cooperation.run(read(page))
            except BaseException as e:
                if pending is not None:
                    pending.addErrback(lambda _: None)  # nobody waits for it any more
                if isinstance(e, (KeyError, TypeError, ValueError, AttributeError)):
                    raise ConfigError(
                        f"The config Redis's {key.decode(errors='replace')} hash holds a record this node "
                        f"cannot read (missing or wrong field: {e!r}); fix or delete that record, and the "
                        "node loads the config again within a second.") from e
                raise

    def _page(self, key: bytes, cursor: bytes) -> defer.Deferred:
        return self._call(self.redis.eval(_PAGE, [key], [cursor, b"%d" % self.page_size]))

    def _tell_changes(self, diff: SnapshotDiff, touched: set[str]) -> Iterator[None]:
        """After the change: tell of the channels whose drains changed, then of those that ended, one at a time.

        Listeners are told what the cache holds when they are told, as a refresh
        would. A channel a refresh changed during the load was told then.
        """
        for channel_id, before in diff.old_drains.items():
            if channel_id not in touched and before != self.cache.channel_drains.get(channel_id):
                self._drains_changed(channel_id)
                yield
        for channel_id, before in diff.old_channels.items():
            if channel_id not in touched and before is not None:
                self._identity_check(channel_id, before)
                yield

    def refresh_channel(self, channel_id: str) -> defer.Deferred:
        return defer.ensureDeferred(self._refresh_channel(channel_id))

    async def _refresh_channel(self, channel_id: str) -> None:
        # Refreshes of one channel overlap (a write's own, its notification's):
        # one started earlier and finishing later must not put older data back.
        # [last started, last applied, running], while any runs.
        tickets = self._refreshes.setdefault(channel_id, [0, 0, 0])
        tickets[0] += 1
        tickets[2] += 1
        ticket = tickets[0]
        try:
            await self._refresh_channel_once(channel_id, ticket, tickets)
        finally:
            tickets[2] -= 1
            if tickets[2] == 0 and self._refreshes.get(channel_id) is tickets:
                del self._refreshes[channel_id]

    async def _still_ours(self) -> bool:
        """Before a refresh takes something out of the cache: is the config Redis still the one it
        was read from? (Not one that lost its data meanwhile: that would look like deletions.)
        Asked only then, so that the refreshes that add or change cost no more than before."""
        found = await self._found()
        if judge(self.held, found) is not None:
            await self.load()
            return False
        if self.held is not None and found.rank > self.held.rank:
            self.held = found  # read from Redis: how far the config this node holds has got
        return True

    def _superseded(self, ticket: int, tickets: list[int]) -> bool:
        """Whether a refresh started after this one has already landed; else this one lands now."""
        if ticket < tickets[1]:
            return True
        tickets[1] = ticket
        return False

    async def _refresh_channel_once(self, channel_id: str, ticket: int, tickets: list[int]) -> None:
        if self.refused is not None:
            return
        raw = await self._call(self.redis.hget(self.keys.channels, channel_id))
        if raw is None:
            if channel_id in self.cache.channels and not await self._still_ours():
                return
            if self._superseded(ticket, tickets):
                return
            before = self.cache.channels.get(channel_id)
            changed = self.cache.replace_channel(channel_id, None, (), ())
        else:
            token_ids = sorted(await self._call(self.redis.smembers(self.keys.channel_tokens(channel_id))))
            drain_ids = sorted(await self._call(self.redis.smembers(self.keys.channel_drains(channel_id))))
            tokens = []
            if token_ids:
                docs = await self._call(self.redis.hmget(self.keys.tokens, token_ids))
                tokens = [Token.from_json(t.decode(), d) for t, d in zip(token_ids, docs) if d]
            drains = []
            if drain_ids:
                docs = await self._call(self.redis.hmget(self.keys.drains, drain_ids))
                drains = [Drain.from_json(int(i), d) for i, d in zip(drain_ids, docs) if d]
            removes = (set(self.cache.channel_tokens.get(channel_id, {})) - {t.id for t in tokens}
                       or set(self.cache.channel_drains.get(channel_id, {})) - {d.id for d in drains})
            if removes and not await self._still_ours():
                return
            if self.refused is not None or self._superseded(ticket, tickets):
                return
            # Read only now: what the cache held just before it changes.
            before = self.cache.channels.get(channel_id)
            changed = self.cache.replace_channel(
                channel_id, Channel.from_json(channel_id, raw), tokens, drains
            )
        self.loaded_at = self.reactor.seconds()
        if changed:
            self._drains_changed(channel_id)
        if before is not None:
            self._identity_check(channel_id, before)

    def refresh_credential(self, cred_id: str) -> defer.Deferred:
        d = self._call(self.redis.hget(self.keys.creds, cred_id))
        d.addCallback(
            lambda raw: None if self.refused is not None else self.cache.set_credential(
                cred_id, Credential.from_json(cred_id, raw) if raw else None
            )
        )
        return d

    # -- refusing a config, and re-seeding the config Redis -----------------------------
    def _refuse(self, reason: str, found: Generation) -> None:
        """Keep the cache as it is, refuse writes, and say why (once per reason)."""
        held = self.held or Generation(None)
        self.refusal = refusal_sentence(reason, held, found)
        if self.refused != reason:
            log.warn("config_refused reason={reason} held={held} found={found} cluster={cluster!r} "
                     "action=routing_from_cache", reason=reason, held=held.describe(),
                     found=found.describe(), cluster=(found.cluster_id or b"").decode())
        self.refused = reason
        # Judge again in a second: the winner's re-seed, or an operator's fix.
        if not self._stopped and (self._retry is None or not self._retry.active()):
            self._retry = self.reactor.callLater(1.0, self._retry_load)

    async def _reseed(self) -> None:
        """Write the cache back to a config Redis this node refuses. A feed only reads: the
        config stays refused until another node re-seeds it or an operator fixes it.
        ConfigStore, which writes, re-seeds it (logplex.config.store)."""

    # -- telling the listeners -------------------------------------------------------
    def _tombstone(self, drain_id: int) -> None:
        """A drain deleted through the API: its spools may go."""
        self.tombstones.pop(drain_id, None)
        self.tombstones[drain_id] = None
        while len(self.tombstones) > 10_000:
            self.tombstones.pop(next(iter(self.tombstones)))
        for listener in self.tombstone_listeners:
            try:
                listener(drain_id)
            except Exception:
                log.failure("tombstone_listener_failed drain={drain}", drain=drain_id)

    def _identity_check(self, channel_id: str, old: Channel) -> None:
        """Tell the identity listeners if the channel `old` is gone (deleted, or another of its name)."""
        now = self.cache.channels.get(channel_id)
        if now is not None and now.incarnation == old.incarnation:
            return
        log.info("channel_ended channel={channel} successor={successor}", channel=channel_id,
                 successor=now is not None)
        for listener in self.identity_listeners:
            try:
                listener(channel_id, now)
            except Exception:
                log.failure("identity_listener_failed channel={channel}", channel=channel_id)

    def _drains_changed(self, channel_id: str) -> None:
        for listener in self.drain_listeners:
            try:
                listener(channel_id)
            except Exception:
                log.failure("drain_listener_failed channel={channel}", channel=channel_id)
