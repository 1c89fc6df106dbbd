"""The config Redis: atomic writes of channels, tokens, drains, credentials and sessions,
and every node's in-memory copy of them, kept fresh by a change feed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Callable, Iterable

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex import secrets
from logplex.model import (
    ANY_CHANNEL,
    FULL_API,
    Channel,
    Credential,
    Drain,
    SessionSpec,
    Token,
    new_drain_token,
    new_token_id,
)
from logplex.redis.bus import Subscription
from logplex.redis.connection import RedisAddress
from logplex.redis.keys import RedisKeys

log = Logger()

class ConfigError(Exception):
    """A request the config cannot satisfy; status is the HTTP answer it maps to."""

    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ConfigError):
    status = 404


class Conflict(ConfigError):
    status = 409


class Unavailable(ConfigError):
    status = 503


# Every script names what it touches through these locals, which ConfigStore._eval
# gives as KEYS in this order: the key schema (logplex.redis.keys) spells them.
# `feed` is a pub/sub channel, not a key; it travels with the keys so that no
# name is spelled inside a script. chtok and chdrain are the channel's sets
# (nil for a credential script).
_NAMES = """
local version, feed, channels, tokens, drains, creds, chtok, chdrain = unpack(KEYS)
"""

# A drain deleted through the API is announced as such ("drain-deleted ID", before
# its channel's announcement, so a node knows it when it refreshes the channel):
# only then does a node delete the drain's spool. A drain that merely vanishes
# from the config (a config Redis that lost its data) keeps its spool.
#
# Every script ends by bumping the version and announcing the channel on the
# feed, inside the same atomic step as the write, so a node either sees the
# notification or sees a new version at its next reconcile.
_ANNOUNCE = """
redis.call('INCR', version)
redis.call('PUBLISH', feed, 'channel ' .. ARGV[1])
"""

# ARGV: channel, drain id, drain json, url ('' = reserve), max drains
_ADD_DRAIN = _NAMES + """
if redis.call('HEXISTS', channels, ARGV[1]) == 0 then return 'nochannel' end
if redis.call('SCARD', chdrain) >= tonumber(ARGV[5]) then return 'max' end
if ARGV[4] ~= '' then
  for _, id in ipairs(redis.call('SMEMBERS', chdrain)) do
    local doc = redis.call('HGET', drains, id)
    if doc and cjson.decode(doc)['url'] == ARGV[4] then return 'dup' end
  end
end
redis.call('HSET', drains, ARGV[2], ARGV[3])
redis.call('SADD', chdrain, ARGV[2])
""" + _ANNOUNCE + "return 'ok'"

# ARGV: channel, drain id, url
_SET_DRAIN_URL = _NAMES + """
local doc = redis.call('HGET', drains, ARGV[2])
if not doc then return 'nodrain' end
local drain = cjson.decode(doc)
if drain['channel_id'] ~= ARGV[1] then return 'nodrain' end
for _, id in ipairs(redis.call('SMEMBERS', chdrain)) do
  if id ~= ARGV[2] then
    local other = redis.call('HGET', drains, id)
    if other and cjson.decode(other)['url'] == ARGV[3] then return 'dup' end
  end
end
drain['url'] = ARGV[3]
redis.call('HSET', drains, ARGV[2], cjson.encode(drain))
""" + _ANNOUNCE + "return 'ok'"

# ARGV: channel, drain id
_DELETE_DRAIN = _NAMES + """
if redis.call('SREM', chdrain, ARGV[2]) == 0 then return 'nodrain' end
redis.call('HDEL', drains, ARGV[2])
redis.call('PUBLISH', feed, 'drain-deleted ' .. ARGV[2])
""" + _ANNOUNCE + "return 'ok'"

# ARGV: channel, channel json, create only (1/0), then pairs of (token id, token json)
# to add, then '--', then token ids to remove.
_PUT_CHANNEL = _NAMES + """
local exists = redis.call('HEXISTS', channels, ARGV[1]) == 1
if exists and ARGV[3] == '1' then return 'exists' end
if not exists then redis.call('HSET', channels, ARGV[1], ARGV[2]) end
local i = 4
while ARGV[i] ~= '--' do
  redis.call('HSET', tokens, ARGV[i], ARGV[i + 1])
  redis.call('SADD', chtok, ARGV[i])
  i = i + 2
end
for j = i + 1, #ARGV do
  redis.call('HDEL', tokens, ARGV[j])
  redis.call('SREM', chtok, ARGV[j])
end
""" + _ANNOUNCE + "if exists then return 'updated' end return 'created'"

# ARGV: channel
_DELETE_CHANNEL = _NAMES + """
if redis.call('HDEL', channels, ARGV[1]) == 0 then return 'nochannel' end
local toks = redis.call('SMEMBERS', chtok)
if #toks > 0 then redis.call('HDEL', tokens, unpack(toks)) end
local ids = redis.call('SMEMBERS', chdrain)
if #ids > 0 then redis.call('HDEL', drains, unpack(ids)) end
for _, id in ipairs(ids) do redis.call('PUBLISH', feed, 'drain-deleted ' .. id) end
redis.call('DEL', chtok, chdrain)
""" + _ANNOUNCE + "return 'ok'"

# ARGV: channel, channel json, its incarnation. Only that incarnation is
# changed: a channel deleted and made again meanwhile is another channel.
_SET_CHANNEL = _NAMES + """
local doc = redis.call('HGET', channels, ARGV[1])
if not doc then return 'nochannel' end
if (cjson.decode(doc)['incarnation'] or '') ~= ARGV[3] then return 'nochannel' end
redis.call('HSET', channels, ARGV[1], ARGV[2])
""" + _ANNOUNCE + "return 'ok'"

# ARGV: credential id, json ('' = delete)
_PUT_CRED = _NAMES + """
if ARGV[2] == '' then
  if redis.call('HDEL', creds, ARGV[1]) == 0 then return 'nocred' end
else
  redis.call('HSET', creds, ARGV[1], ARGV[2])
end
redis.call('INCR', version)
redis.call('PUBLISH', feed, 'cred ' .. ARGV[1])
return 'ok'
"""


# KEYS: cluster id, epoch, version, feed, channels, tokens, drains, creds, channel seq,
# drain seq, then (chtok, chdrain) of each channel in the document's order, then the sets
# of the channels the Redis holds and the node does not (deleted since, when it is older).
# ARGV: the cluster id, epoch and version the node holds, the document, and '1' to
# replace what the Redis holds (an older config: what was deleted since stays deleted)
# or '0' to add to it (an empty one: a write that landed before anyone noticed stays).
# Runs only while the Redis has no cluster id or the node's, and an older
# generation than the node's: a second node, or a stale one, changes nothing.
_RESEED = """
local cluster, epochk, version, feed, channels, tokens, drains, creds, chseq, drseq = unpack(KEYS, 1, 10)
local cur = redis.call('GET', cluster)
if cur and cur ~= ARGV[1] then return 'foreign' end
local epoch_now = tonumber(redis.call('GET', epochk) or '0')
local ver_now = tonumber(redis.call('GET', version) or '0')
local epoch_held, ver_held = tonumber(ARGV[2]), tonumber(ARGV[3])
if cur and (epoch_now > epoch_held or (epoch_now == epoch_held and ver_now >= ver_held)) then
  return 'current'
end
local doc = cjson.decode(ARGV[4])
if ARGV[5] == '1' then
  redis.call('DEL', channels, tokens, drains, creds)
  for i = 11 + 2 * #doc['channels'], #KEYS do redis.call('DEL', KEYS[i]) end
end
local max_channel = tonumber(redis.call('GET', chseq) or '0')
for i, ch in ipairs(doc['channels']) do
  local id, json = ch[1], ch[2]
  redis.call('HSET', channels, id, json)
  if string.match(id, '^%d+$') and tonumber(id) > max_channel then max_channel = tonumber(id) end
  for _, t in ipairs(ch[3]) do
    redis.call('HSET', tokens, t[1], t[2])
    redis.call('SADD', KEYS[9 + 2 * i], t[1])
  end
  for _, d in ipairs(ch[4]) do
    redis.call('HSET', drains, d[1], d[2])
    redis.call('SADD', KEYS[10 + 2 * i], d[1])
  end
end
for _, c in ipairs(doc['creds']) do redis.call('HSET', creds, c[1], c[2]) end
redis.call('SET', chseq, string.format('%d', max_channel))
local max_drain = tonumber(redis.call('GET', drseq) or '0')
if doc['max_drain'] > max_drain then max_drain = doc['max_drain'] end
redis.call('SET', drseq, string.format('%d', max_drain))
redis.call('SET', cluster, ARGV[1])
redis.call('SET', epochk, string.format('%d', math.max(epoch_now, epoch_held) + 1))
redis.call('SET', version, string.format('%d', math.max(ver_now, ver_held) + 1))
redis.call('PUBLISH', feed, 'reseeded')
return 'ok'
"""

# KEYS: the re-seed lock; ARGV: this node's lock value. Frees the lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 'ok'
"""

# Why a node refuses what the config Redis holds, as config_refused logs it.
EMPTY = "empty"
FOREIGN = "foreign"
OLDER = "older"


@attrs.frozen
class Generation:
    """What identifies a config: its cluster's id, and how far it got (re-seeds, then writes)."""

    cluster_id: bytes | None
    epoch: int = 0
    version: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        return (self.epoch, self.version)

    def describe(self) -> str:
        return f"{self.epoch}.{self.version}"


def judge(held: Generation | None, found: Generation) -> str | None:
    """None when a node holding `held` may adopt the config `found`; otherwise why not.

    A node that holds nothing yet adopts anything (the first node seeds the
    cluster id before it reads). A node that holds a config never adopts one
    without a cluster id (a config Redis that lost its data), another
    cluster's, or an older one (a restore of an old snapshot): it would
    forget every channel, token, drain and credential at once.
    """
    if held is None or held.cluster_id is None:
        return None
    if found.cluster_id is None:
        return EMPTY
    if found.cluster_id != held.cluster_id:
        return FOREIGN
    if found.rank < held.rank:
        return OLDER
    return None


def refusal_sentence(reason: str, held: Generation, found: Generation) -> str:
    """What a refused write answers: what the config Redis holds and what happens next."""
    what = {
        EMPTY: "has lost the cluster's config (it holds no cluster id: restarted without its data?)",
        FOREIGN: f"holds another cluster's config (cluster id {(found.cluster_id or b'').decode()!r}, "
                 f"this node's is {(held.cluster_id or b'').decode()!r})",
        OLDER: f"holds an older config (generation {found.describe()}, this node holds {held.describe()})",
    }[reason]
    then = ("; a node re-seeds it from its copy within seconds, then writes work again"
            if reason != FOREIGN else
            "; check --config-redis and --namespace, or move the other cluster's keys away")
    return (f"The config Redis {what}. This node keeps routing with the config it holds and "
            f"refuses changes until then{then}.")


class ConfigCache:
    """The in-memory copy of the config the hot path reads; no I/O here."""

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        # Keyed by the token as bytes: the router looks tokens up straight
        # from APP-NAME without decoding.
        self.tokens: dict[bytes, Token] = {}
        # token -> (channel id, token name as bytes): what routing needs, ready-made.
        self.routes: dict[bytes, tuple[str, bytes]] = {}
        self.drains: dict[int, Drain] = {}
        self.creds: dict[str, Credential] = {}
        self.channel_tokens: dict[str, dict[str, Token]] = {}
        self.channel_drains: dict[str, dict[int, Drain]] = {}
        # The channels with flags (no_redis, no_tail …): few, and the router
        # looks only these up instead of every channel of every read.
        self.flagged: set[str] = set()

    def replace_all(self, channels, tokens, drains, creds) -> set[str]:
        """Load a whole snapshot; returns the channels whose drains changed."""
        before = {ch: dict(ds) for ch, ds in self.channel_drains.items()}
        self.channels = {c.id: c for c in channels}
        self.flagged = {c.id for c in self.channels.values() if c.flags}
        self.tokens = {}
        self.routes = {}
        self.channel_tokens = {}
        for t in tokens:
            if t.channel_id in self.channels:
                self.tokens[t.id.encode()] = t
                self.routes[t.id.encode()] = (t.channel_id, t.name.encode())
                self.channel_tokens.setdefault(t.channel_id, {})[t.id] = t
        self.drains = {}
        self.channel_drains = {}
        for d in drains:
            if d.channel_id in self.channels:
                self.drains[d.id] = d
                self.channel_drains.setdefault(d.channel_id, {})[d.id] = d
        self.creds = {c.id: c for c in creds}
        return {
            ch
            for ch in set(before) | set(self.channel_drains)
            if before.get(ch) != self.channel_drains.get(ch)
        }

    def replace_channel(
        self, channel_id: str, channel: Channel | None, tokens: Iterable[Token],
        drains: Iterable[Drain],
    ) -> bool:
        """Replace one channel with its tokens and drains; True when its drains changed."""
        for t in self.channel_tokens.pop(channel_id, {}).values():
            self.tokens.pop(t.id.encode(), None)
            self.routes.pop(t.id.encode(), None)
        old_drains = self.channel_drains.pop(channel_id, {})
        for d in old_drains.values():
            self.drains.pop(d.id, None)
        if channel is None:
            self.channels.pop(channel_id, None)
            self.flagged.discard(channel_id)
            return bool(old_drains)
        self.channels[channel_id] = channel
        if channel.flags:
            self.flagged.add(channel_id)
        else:
            self.flagged.discard(channel_id)
        toks = {t.id: t for t in tokens}
        if toks:
            self.channel_tokens[channel_id] = toks
            for t in toks.values():
                self.tokens[t.id.encode()] = t
                self.routes[t.id.encode()] = (channel_id, t.name.encode())
        new_drains = {d.id: d for d in drains}
        if new_drains:
            self.channel_drains[channel_id] = new_drains
            self.drains.update(new_drains)
        return new_drains != old_drains

    def set_credential(self, cred_id: str, cred: Credential | None) -> None:
        if cred is None:
            self.creds.pop(cred_id, None)
        else:
            self.creds[cred_id] = cred


class ConfigStore:
    """Writes go to the config Redis; reads come from the cache, which the feed keeps fresh.

    Every write also refreshes this node's cache before it returns, so an API
    caller reads what it just wrote on the same node; other nodes follow
    through the feed within milliseconds, and a periodic reconcile catches any
    notification lost while the feed was down.
    """

    def __init__(
        self,
        redis,
        address: RedisAddress,
        reactor,
        *,
        keys: RedisKeys,
        max_drains: int = 6,
        session_expiry: int = 360,
        reconcile_interval: float = 30.0,
        timeout: float = 5.0,
        metrics=None,
        node: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.redis = redis
        self.address = address
        self.keys = keys
        self.reactor = reactor
        self.max_drains = max_drains
        self.session_expiry = session_expiry
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
        self.identity_listeners: list[Callable[[str, Channel | None], None]] = []
        # Other notifications on the feed (b"tail", b"shards"), by kind.
        self.feed_listeners: dict[bytes, list[Callable[[bytes], None]]] = {}
        self._feed: Subscription | None = None
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
        self.recovered_listeners: list[Callable[[], object]] = []
        # Drains deleted through the API (newest last, bounded): only these lose their spools.
        self.tombstones: dict[int, None] = {}
        self.tombstone_listeners: list[Callable[[int], None]] = []
        self.reseed_lock_seconds = 10
        self.node = node  # this node's name: its own heartbeat is not another node's
        self._lock_value = uuid.uuid4().hex
        self._refreshes: dict[str, list[int]] = {}

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self._feed = Subscription(
            self.address, self._on_feed, self._on_feed_connected, reactor=self.reactor
        )
        self._feed.subscribe([self.keys.feed])
        self._feed.start()
        self._reconcile = task.LoopingCall(self._reconcile_tick)
        self._reconcile.clock = self.reactor
        self._reconcile.start(self.reconcile_interval, now=False)

    def stop(self):
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._reconcile is not None and self._reconcile.running:
            self._reconcile.stop()
        if self._feed is not None:
            return self._feed.stop()
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

    def _writable(self) -> None:
        """Refuse a write (503) while the node refuses what the config Redis holds."""
        if self.refused is not None:
            raise Unavailable(self.refusal)

    def _eval(self, script: str, args: list, channel_id: str | None = None) -> defer.Deferred:
        """Run a config script; its KEYS are the names _NAMES binds, those of channel_id's sets last."""
        if self.refused is not None:
            return defer.fail(Unavailable(self.refusal))
        k = self.keys
        names = [k.version, k.feed, k.channels, k.tokens, k.drains, k.creds]
        if channel_id is not None:
            names += [k.channel_tokens(channel_id), k.channel_drains(channel_id)]
        return self._call(self.redis.eval(script, names, [_arg(a) for a in args]))

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
        d.addErrback(self._catch_up_later, "refresh")

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
        found = await self._found()
        version = await self._call(self.redis.get(self.keys.version))
        channels = await self._call(self.redis.hgetall(self.keys.channels))
        tokens = await self._call(self.redis.hgetall(self.keys.tokens))
        drains = await self._call(self.redis.hgetall(self.keys.drains))
        creds = await self._call(self.redis.hgetall(self.keys.creds))
        reason = judge(self.held, found)
        if reason is not None:
            self._refuse(reason, found)
            await self._reseed()
            return
        before = dict(self.cache.channels)
        changed = self.cache.replace_all(
            [Channel.from_json(k.decode(), v) for k, v in channels.items()],
            [Token.from_json(k.decode(), v) for k, v in tokens.items()],
            [Drain.from_json(int(k), v) for k, v in drains.items()],
            [Credential.from_json(k.decode(), v) for k, v in creds.items()],
        )
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
            "config_loaded channels={channels} tokens={tokens} drains={drains}",
            channels=len(self.cache.channels), tokens=len(self.cache.tokens),
            drains=len(self.cache.drains),
        )
        for channel_id in changed:
            self._drains_changed(channel_id)
        for channel_id, old in before.items():
            self._identity_check(channel_id, old)

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
        """Write the cache back to the config Redis, if this node wins the re-seed lock.

        The script itself re-seeds only a Redis still without a cluster id, or
        with this cluster's and an older generation: a foreign config is never
        overwritten, and a node that loses the race changes nothing.
        """
        if self.refused == FOREIGN or self.held is None:
            return
        won = await self._call(self.redis.set(self.keys.reseed_lock, self._lock_value,
                                              expire=self.reseed_lock_seconds, only_if_not_exists=True))
        if not won:
            return  # another node re-seeds: its "reseeded" notification makes this one reload
        k, held = self.keys, self.held
        names = [k.cluster_id, k.epoch, k.version, k.feed, k.channels, k.tokens, k.drains, k.creds,
                 k.channel_seq, k.drain_seq]
        document = {"channels": [], "creds": [[c.id, c.to_json()] for c in self.cache.creds.values()],
                    "max_drain": max(self.cache.drains, default=0)}
        for channel in self.cache.channels.values():
            names += [k.channel_tokens(channel.id), k.channel_drains(channel.id)]
            document["channels"].append([
                channel.id, channel.to_json(),
                [[t.id, t.to_json()] for t in self.cache.channel_tokens.get(channel.id, {}).values()],
                [[str(d.id), d.to_json()] for d in self.cache.channel_drains.get(channel.id, {}).values()],
            ])
        replace = self.refused == OLDER
        if replace:
            # The sets of channels deleted since the snapshot go too (the drain limit counts them).
            present = {c.decode() for c in await self._call(self.redis.hkeys(k.channels))}
            for channel_id in sorted(present - set(self.cache.channels)):
                names += [k.channel_tokens(channel_id), k.channel_drains(channel_id)]
        args = [held.cluster_id, held.epoch, held.version, json.dumps(document), "1" if replace else "0"]
        outcome = (await self._call(self.redis.eval(_RESEED, names, [_arg(a) for a in args]))).decode()
        if outcome != "ok":
            log.info("config_reseed_skipped outcome={outcome}", outcome=outcome)
            # Nothing written: the next attempt (this node's or another's) need not wait for the expiry.
            await self._call(self.redis.eval(_UNLOCK, [k.reseed_lock], [self._lock_value]))
            return
        if self.metrics is not None:
            self.metrics.inc("logplex_config_reseeds_total")
        log.warn("config_reseeded reason={reason} channels={channels} tokens={tokens} drains={drains} "
                 "credentials={creds} note='sessions were not re-seeded: session URLs made before are gone'",
                 reason=self.refused, channels=len(self.cache.channels), tokens=len(self.cache.tokens),
                 drains=len(self.cache.drains), creds=len(self.cache.creds))
        # Adopt what was just written (a generation above any node's) at once.
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = self.reactor.callLater(0, self._retry_load)

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

    # -- channels and tokens --------------------------------------------------
    def channel(self, channel_id: str) -> Channel | None:
        return self.cache.channels.get(channel_id)

    def tokens_of(self, channel_id: str) -> list[Token]:
        return sorted(self.cache.channel_tokens.get(channel_id, {}).values(), key=lambda t: (t.name, t.id))

    def drains_of(self, channel_id: str) -> list[Drain]:
        return sorted(self.cache.channel_drains.get(channel_id, {}).values(), key=lambda d: d.id)

    async def create_channel_v2(self, token_names: list[str]) -> tuple[Channel, list[Token]]:
        """A channel with the next free integer id (v2 API)."""
        self._writable()
        while True:
            number = await self._call(self.redis.incr(self.keys.channel_seq))
            channel_id = str(int(number))
            tokens = [Token(new_token_id(), channel_id, n) for n in token_names]
            outcome = await self._put_channel(Channel.new(channel_id), tokens, [], create_only=True)
            if outcome != "exists":
                return self.cache.channels[channel_id], tokens

    async def put_channel(self, channel_id: str, token_names: list[str]) -> bool:
        """Create or update a v3 channel so that its tokens are exactly token_names.

        Tokens whose name is kept keep their value; returns True when created.
        """
        self._writable()
        await self.refresh_channel(channel_id)
        current = self.cache.channel_tokens.get(channel_id, {})
        wanted = set(token_names)
        have = {t.name for t in current.values()}
        add = [Token(new_token_id(), channel_id, n) for n in sorted(wanted - have)]
        remove = [t.id for t in current.values() if t.name not in wanted]
        outcome = await self._put_channel(Channel.new(channel_id), add, remove, create_only=False)
        return outcome == "created"

    async def _put_channel(
        self, channel: Channel, add: list[Token], remove: list[str], *, create_only: bool
    ) -> str:
        """Add and remove tokens; `channel` is written only if no channel of its name exists,
        so it must be a new one (Channel.new): never an old incarnation brought back."""
        args = [channel.id, channel.to_json(), "1" if create_only else "0"]
        for t in add:
            args += [t.id, t.to_json()]
        args.append("--")
        args += remove
        outcome = (await self._eval(_PUT_CHANNEL, args, channel.id)).decode()
        if outcome != "exists":
            await self.refresh_channel(channel.id)
        return outcome

    async def set_channel_flags(self, channel_id: str, flags: frozenset[str]) -> None:
        current = self.cache.channels.get(channel_id)
        if current is None:
            raise NotFound(f"Channel {channel_id} does not exist.")
        changed = Channel(channel_id, flags, current.incarnation)
        outcome = await self._eval(_SET_CHANNEL, [channel_id, changed.to_json(), current.incarnation],
                                   channel_id)
        if outcome == b"nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")
        await self.refresh_channel(channel_id)

    async def delete_channel(self, channel_id: str) -> None:
        drain_ids = list(self.cache.channel_drains.get(channel_id, {}))
        outcome = await self._eval(_DELETE_CHANNEL, [channel_id], channel_id)
        if outcome == b"ok":
            # Before the refresh: the spools go with the drains (the feed says so to the others).
            for drain_id in drain_ids:
                self._tombstone(drain_id)
        await self.refresh_channel(channel_id)
        if outcome == b"nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")

    async def add_token(self, channel_id: str, name: str) -> Token:
        if channel_id not in self.cache.channels:
            await self.refresh_channel(channel_id)
            if channel_id not in self.cache.channels:
                raise NotFound(f"Channel {channel_id} does not exist.")
        token = Token(new_token_id(), channel_id, name)
        await self._put_channel(Channel.new(channel_id), [token], [], create_only=False)
        return token

    # -- drains -----------------------------------------------------------------
    async def add_drain(self, channel_id: str, url: str | None) -> Drain:
        """Create a drain, or reserve an id and token for one when url is None."""
        self._writable()
        drain_id = int(await self._call(self.redis.incr(self.keys.drain_seq)))
        drain = Drain(drain_id, channel_id, new_drain_token(), url)
        outcome = (
            await self._eval(
                _ADD_DRAIN,
                [channel_id, drain_id, drain.to_json(), url or "", self.max_drains],
                channel_id,
            )
        ).decode()
        if outcome == "nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")
        if outcome == "max":
            raise ConfigError(
                f"Channel {channel_id} already has the maximum of {self.max_drains} drains."
            )
        if outcome == "dup":
            raise Conflict(f"Channel {channel_id} already has a drain to that URL.")
        await self.refresh_channel(channel_id)
        return drain

    async def set_drain_url(self, channel_id: str, drain_id: int, url: str) -> Drain:
        outcome = (await self._eval(_SET_DRAIN_URL, [channel_id, drain_id, url], channel_id)).decode()
        if outcome == "nodrain":
            raise NotFound(f"Channel {channel_id} has no drain {drain_id}.")
        if outcome == "dup":
            raise Conflict(f"Channel {channel_id} already has a drain to that URL.")
        await self.refresh_channel(channel_id)
        return self.cache.drains[drain_id]

    async def delete_drain(self, channel_id: str, drain_id: int) -> None:
        outcome = await self._eval(_DELETE_DRAIN, [channel_id, drain_id], channel_id)
        if outcome == b"nodrain":
            raise NotFound(f"Channel {channel_id} has no drain {drain_id}.")
        self._tombstone(drain_id)  # before the refresh that stops its worker
        await self.refresh_channel(channel_id)

    # -- credentials ----------------------------------------------------------------
    async def put_credential(self, cred: Credential) -> None:
        await self._eval(_PUT_CRED, [cred.id, cred.to_json()])
        self.cache.set_credential(cred.id, cred)

    async def create_credential(
        self, perms: Iterable[str] = (FULL_API,), note: str = "", cred_id: str | None = None,
        secret: str | None = None, channels: Iterable[Channel] = (),
    ) -> tuple[Credential, str]:
        """A new credential; read_channel grants name `channels` by identity, not only by name."""
        channels = list(channels)
        secret = secret or secrets.new_secret()
        cred = Credential(
            id=cred_id or uuid.uuid4().hex,
            secret_hash=secrets.hash_secret(secret),
            perms=frozenset(perms),
            note=note,
            channels=frozenset(c.id for c in channels),
            incarnations=frozenset((c.id, c.incarnation) for c in channels),
        )
        await self.put_credential(cred)
        return cred, secret

    async def ensure_credential(self, cred_id: str, secret: str) -> None:
        """The --auth credential: exists with this secret, full_api and any_channel."""
        self._writable()
        raw = await self._call(self.redis.hget(self.keys.creds, cred_id))
        perms = frozenset({FULL_API, ANY_CHANNEL})
        if raw:
            cred = Credential.from_json(cred_id, raw)
            if perms <= cred.perms and secrets.check_secret(secret, cred.secret_hash):
                self.cache.set_credential(cred_id, cred)
                return
        await self.create_credential(perms, note="--auth", cred_id=cred_id, secret=secret)

    async def delete_credential(self, cred_id: str) -> None:
        outcome = await self._eval(_PUT_CRED, [cred_id, ""])
        self.cache.set_credential(cred_id, None)
        if outcome == b"nocred":
            raise NotFound(f"Credential {cred_id} does not exist.")

    # -- sessions -------------------------------------------------------------------------
    async def create_session(self, spec: SessionSpec) -> None:
        await self._call(
            self.redis.set(self.keys.session(spec.id), spec.to_json(), expire=self.session_expiry)
        )

    async def session(self, session_id: str) -> SessionSpec | None:
        raw = await self._call(self.redis.get(self.keys.session(session_id)))
        return SessionSpec.from_json(session_id, raw) if raw else None


def _arg(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
