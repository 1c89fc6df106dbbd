"""The cluster's shard map in the config Redis: stable names to URLs under a version, the
nodes' following of it, and the admin operations that change it (add, replace, remove a
shard) and move the backlogs and spools the change displaces, resumably."""

from __future__ import annotations

import json
import time
from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from logplex.backlog.ring import ShardRing
from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua

log = Logger()

# The map's URL for "the config Redis itself, as each node reaches it".
CONFIG = "config"


def names_for(urls: list[str]) -> dict[str, str]:
    return {f"shard-{i}": url for i, url in enumerate(urls)}


async def load_or_init(config_redis, keys: RedisKeys, urls: list[str]) -> dict[str, str]:
    """The cluster's map; the first node to start writes it from its command line.

    Afterwards the map in Redis is the truth: a node started with other
    --shard-redis URLs says so in its log and follows the cluster.
    """
    wanted = names_for(urls or [CONFIG])
    for name, url in wanted.items():
        await config_redis.hsetnx(keys.shards, name, url)
    stored = await load(config_redis, keys)
    if stored != wanted:
        log.warn("shard_map_differs cluster={stored!r} action='following the cluster'", stored=stored)
    return stored


async def load(config_redis, keys: RedisKeys) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await config_redis.hgetall(keys.shards)).items()}


# On the target Redis, in one step: a moved backlog's lines (older) appended under what it
# holds, trimmed to the history, and a mark naming the move. A move re-run after a crash
# between this and the source's deletion finds its mark and copies nothing twice.
# KEYS: backlog, mark. ARGV: move, history (0: no trim), expiry, lines...
_APPEND_ONCE = lua("logplex.backlog", "append_once")

# The same for a spool: chunks (given newest first) in front of the target's, counts added.
# KEYS: spool, its meta, mark. ARGV: move, bytes, messages, chunks...
_PREPEND_ONCE = lua("logplex.backlog", "prepend_once")


async def _merge_list(source, target, key: bytes, history: int | None, move: str, keys: RedisKeys) -> int:
    """Append source's list under what target already has (source's lines are older), once."""
    items = await source.lrange(key, 0, -1)
    mark = keys.moved_mark(key)
    await target.eval(_APPEND_ONCE, [key, mark], [move, str(history or 0), str(7 * 86400), *items])
    await source.delete(key)
    await target.delete(mark)
    return len(items)


async def _merge_spool(source, target, key: bytes, move: str, keys: RedisKeys) -> int:
    """Spool chunks moved in front of the target's (they are older), counts kept, once."""
    meta_key = RedisKeys.spool_meta(key)
    chunks = await source.lrange(key, 0, -1)
    meta = await source.hgetall(meta_key)
    mark = keys.moved_mark(key)
    await target.eval(_PREPEND_ONCE, [key, meta_key, mark],
                      [move, str(int(meta.get(b"bytes", 0))), str(int(meta.get(b"messages", 0))),
                       *reversed(chunks)])
    await source.delete([key, meta_key])
    await target.delete(mark)
    return len(chunks)


async def _scan(redis, pattern: bytes) -> list[bytes]:
    keys, cursor = [], 0
    while True:
        cursor, found = await redis.scan(cursor, pattern, 1000)
        keys.extend(found)
        if int(cursor) == 0:
            return keys


# A change of the map, in one atomic step on the config Redis: the whole map rewritten, its
# version bumped, the merge it owes recorded and the nodes told. Refused (-1) when the map
# moved since the caller read it (another admin), or (-2) while a merge is still owed.
_CHANGE = lua("logplex.backlog", "change_map")


class ShardChangeRefused(RuntimeError):
    """The map cannot be changed now; the message says why and what to do."""


class NodesBehind(RuntimeError):
    """Live nodes did not report the new map version in time: the merge waits for them."""


async def load_versioned(config_redis, keys: RedisKeys) -> tuple[int, dict[str, str]]:
    """(version, map). The version is read first: a map changed in between is newer than the
    version returned, so whoever compares versions loads it again."""
    version = int(await config_redis.get(keys.shard_map_version) or 0)
    return version, await load(config_redis, keys)


async def nodes_behind(config_redis, keys: RedisKeys, version: int) -> list[str]:
    """Live nodes (heard within their heartbeat TTL) whose heartbeat reports an older map.

    A node of a logplex that reports no map version counts as behind: it may be on any map.
    """
    now = time.time()
    behind = []
    for name, raw in (await config_redis.hgetall(keys.nodes)).items():
        doc = json.loads(raw)
        if now - doc["seen_at"] > doc.get("ttl", 15.0):
            continue
        if int(doc.get("shard_map_version", -1)) < version:
            behind.append(name.decode())
    return sorted(behind)


async def wait_for_nodes(config_redis, keys: RedisKeys, version: int, timeout: float, reactor,
                         poll: float = 0.1) -> None:
    """Return once every live node reports map `version`; NodesBehind naming them after timeout."""
    deadline = reactor.seconds() + timeout
    while True:
        behind = await nodes_behind(config_redis, keys, version)
        if not behind:
            return
        if reactor.seconds() >= deadline:
            raise NodesBehind(
                f"Node{'s' if len(behind) > 1 else ''} {', '.join(behind)} did not report shard map "
                f"version {version} within {timeout:g} s, so no data was moved yet: a node on the old "
                "map would write on to the old shards. The map itself is changed. Check that those "
                "nodes reach the config Redis and run this logplex version (or stop them), then run "
                "`python -m logplex.admin.shards resume` to move the data.")
        await task.deferLater(reactor, poll, lambda: None)


async def _move(config_redis, connect, plan: dict, version: int, *, keys: RedisKeys,
                history: int) -> dict:
    """Move every backlog and spool that is not where the plan's new map puts it.

    Re-runnable: a run stopped anywhere leaves each key on its source, its target or both
    with the target's mark, and the next run completes it without a line copied twice.
    """
    old, new = plan["old"], plan["new"]
    ring = ShardRing(sorted(new))
    drains = {int(k): json.loads(v)["channel_id"]
              for k, v in (await config_redis.hgetall(keys.drains)).items()}
    # A deleted drain's spool has no channel: off a Redis that leaves the cluster, it goes
    # to the first shard rather than be stranded.
    fallback = new[sorted(new)[0]]
    channels = lines = chunks = 0
    for source_url in sorted(set(old.values())):
        source = connect(source_url)
        for key in await _scan(source, keys.backlog_pattern):
            target_url = new[ring.shard(keys.channel_of_backlog(key))]
            if target_url != source_url:
                lines += await _merge_list(source, connect(target_url), key, history,
                                           f"{version} {source_url}", keys)
                channels += 1
        for key in await _scan(source, keys.spool_pattern):
            drain_id = keys.drain_of_spool(key)
            if drain_id is None:  # a meta hash: it moves with its list
                continue
            if drain_id in drains:
                target_url = new[ring.shard(drains[drain_id])]
            elif source_url not in new.values():
                target_url = fallback
            else:
                continue
            if target_url != source_url:
                chunks += await _merge_spool(source, connect(target_url), key,
                                             f"{version} {source_url}", keys)
    return {"channels_moved": channels, "backlog_lines": lines, "spool_chunks_moved": chunks}


async def _finish(config_redis, connect, plan: dict, version: int, *, keys: RedisKeys, history: int,
                  settle: float, wait: float, reactor) -> dict:
    """The merge a map change owes: once every node follows the map, and their writes queued
    for the old map have had `settle` seconds to land, move the data; then forget the plan."""
    await wait_for_nodes(config_redis, keys, version, wait, reactor)
    await task.deferLater(reactor, settle, lambda: None)
    moved = await _move(config_redis, connect, plan, version, keys=keys, history=history)
    await config_redis.delete(keys.shard_merge)
    return {"op": plan["op"], "shard": plan["shard"], "version": version, **moved}


async def resume(config_redis, connect, *, keys: RedisKeys, history: int = 1500, settle: float = 2.0,
                 wait: float = 60.0, reactor=None) -> dict | None:
    """Complete the merge an interrupted change left recorded; None when none is owed."""
    owed = await config_redis.hgetall(keys.shard_merge)
    if not owed:
        return None
    plan = json.loads(owed[b"plan"])
    log.info("shard_merge_resumed op={op} shard={shard}", op=plan["op"], shard=plan["shard"])
    return await _finish(config_redis, connect, plan, int(owed[b"version"]), keys=keys, history=history,
                         settle=settle, wait=wait, reactor=reactor or _reactor())


async def _change(config_redis, connect, op: str, decide, *, keys: RedisKeys, history: int,
                  settle: float, wait: float, reactor) -> dict:
    """Finish any owed merge, then change the map as decide(map) says and move the data."""
    reactor = reactor or _reactor()
    options = dict(keys=keys, history=history, settle=settle, wait=wait, reactor=reactor)
    resumed = await resume(config_redis, connect, **options)
    version, stored = await load_versioned(config_redis, keys)
    shard, new_map, info = await decide(stored)
    plan = {"op": op, "shard": shard, "old": stored, "new": new_map}
    pairs = [item for name_url in sorted(new_map.items()) for item in name_url]
    changed = await config_redis.eval(
        _CHANGE, [keys.shards, keys.shard_map_version, keys.shard_merge, keys.feed],
        [str(version), json.dumps(plan), *pairs])
    if changed == -1:
        raise ShardChangeRefused("The shard map changed while this command ran (another admin at "
                                 "work?); list it and run the command again.")
    if changed == -2:
        raise ShardChangeRefused("A merge of an earlier shard map change is still owed; run "
                                 "`python -m logplex.admin.shards resume` first.")
    result = {**await _finish(config_redis, connect, plan, int(changed), **options), **info,
              "shards": len(new_map)}
    if resumed is not None:
        result["resumed"] = resumed
    return result


async def replace_shard(config_redis, connect, name: str, new_url: str, *, keys: RedisKeys,
                        history: int = 1500, settle: float = 2.0, wait: float = 60.0, reactor=None) -> dict:
    """Point shard `name` at new_url and move its backlogs and spools there.

    The data moves once every live node writes to new_url, and `settle` seconds later, so
    what the old Redis holds is merged under what the new one gathered: no line is lost.
    """
    async def decide(stored):
        if name not in stored:
            raise KeyError(f"There is no shard named {name}; shards: {', '.join(sorted(stored))}.")
        await connect(new_url).ping()
        return name, {**stored, name: new_url}, {"from": stored[name], "to": new_url}

    return await _change(config_redis, connect, "replace", decide, keys=keys, history=history,
                         settle=settle, wait=wait, reactor=reactor)


async def add_shard(config_redis, connect, url: str, *, keys: RedisKeys, history: int = 1500,
                    settle: float = 2.0, wait: float = 60.0, reactor=None) -> dict:
    """Add a shard; the channels the ring now gives it (about 1/N) move there."""
    async def decide(stored):
        name = f"shard-{len(stored)}"
        while name in stored:
            name += "x"
        await connect(url).ping()
        return name, {**stored, name: url}, {"url": url}

    return await _change(config_redis, connect, "add", decide, keys=keys, history=history,
                         settle=settle, wait=wait, reactor=reactor)


async def remove_shard(config_redis, connect, name: str, *, keys: RedisKeys, history: int = 1500,
                       settle: float = 2.0, wait: float = 60.0, reactor=None) -> dict:
    """Take shard `name` out; its channels' backlogs and spools move where the ring now puts them."""
    async def decide(stored):
        if name not in stored:
            raise KeyError(f"There is no shard named {name}; shards: {', '.join(sorted(stored))}.")
        if len(stored) == 1:
            raise ValueError(f"{name} is the cluster's only shard: add another before removing it.")
        return name, {k: v for k, v in stored.items() if k != name}, {"url": stored[name]}

    return await _change(config_redis, connect, "remove", decide, keys=keys, history=history,
                         settle=settle, wait=wait, reactor=reactor)


class ShardMapFollower:
    """Keeps a node's backlogs on the cluster's newest shard map: the feed says when it
    changes, and a check every `interval` seconds catches a notification this node missed."""

    def __init__(self, config_redis, keys: RedisKeys, configure: Callable[[dict[str, str]], None],
                 reactor, metrics, interval: float, timeout: float,
                 on_version: Callable[[int], object] | None = None) -> None:
        self.redis = config_redis
        self.keys = keys
        self.configure = configure
        self.reactor = reactor
        self.metrics = metrics
        self.timeout = timeout
        # Told the new version once the map is in use (the heartbeat reports it at once).
        self.on_version = on_version
        self.version = 0
        self.shard_map: dict[str, str] = {}
        self._loading = False
        self._again = False
        self._check = task.LoopingCall(self.check)
        self._check.clock = reactor
        self.interval = interval

    def follow(self, version: int, shard_map: dict[str, str]) -> None:
        """Use this map (the one a node started with, or a newer one)."""
        if not shard_map:
            # An empty map (a wiped config Redis) would leave no shard to write to.
            log.warn("shard_map_empty version={version} action='keeping the current map'", version=version)
            return
        if shard_map != self.shard_map:
            self.configure(shard_map)
            if self.shard_map:
                log.info("shard_map_followed version={version} shards={shards!r}", version=version,
                         shards=shard_map)
            self.shard_map = dict(shard_map)
        changed = version != self.version
        self.version = version
        self.metrics.set("logplex_shard_map_version", version)
        if changed and self.on_version is not None:
            self.on_version(version)

    def on_feed(self, message: bytes) -> None:
        self.reload()

    def check(self) -> defer.Deferred:
        """Reload when the map's version moved without this node hearing of it."""
        d = self.redis.get(self.keys.shard_map_version).addTimeout(self.timeout, self.reactor)

        def compare(version):
            if int(version or 0) != self.version:
                log.info("shard_map_reconcile_reload reason='version moved without a notification'")
                return self.reload()

        return d.addCallback(compare).addErrback(
            lambda f: log.warn("shard_map_check_failed error={e!r}", e=f.getErrorMessage()))

    def reload(self) -> defer.Deferred:
        # One load at a time; a change heard meanwhile loads once more after it, so an
        # older snapshot never lands on top of a newer one.
        if self._loading:
            self._again = True
            return defer.succeed(None)
        self._loading = True

        async def load_all() -> None:
            try:
                while True:
                    self._again = False
                    version, shard_map = await load_versioned(self.redis, self.keys)
                    self.follow(version, shard_map)
                    if not self._again:
                        return
            finally:
                self._loading = False

        d = defer.ensureDeferred(load_all())
        return d.addErrback(lambda f: log.warn("shard_map_reload_failed error={e!r}", e=f.getErrorMessage()))

    def start(self) -> None:
        self._check.start(self.interval, now=False)

    def stop(self) -> None:
        if self._check.running:
            self._check.stop()

def _reactor():
    from twisted.internet import reactor

    return reactor
