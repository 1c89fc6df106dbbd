"""The cluster's shard map in the config Redis: stable names to URLs, and the admin
operations that change it (replace a shard's URL, add a shard) without losing backlogs."""

from __future__ import annotations

import json

from twisted.internet import task
from twisted.logger import Logger

from logplex.redis.keys import RedisKeys
from logplex.redis.shards import ShardRing

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


async def _announce(config_redis, keys: RedisKeys) -> None:
    await config_redis.incr(keys.version)
    await config_redis.publish(keys.feed, "shards")


async def _merge_list(source, target, key: bytes, history: int | None, reactor) -> int:
    """Append source's list under what target already has (source's lines are older)."""
    items = await source.lrange(key, 0, -1)
    if items:
        await target.execute_command("RPUSH", key, *items)
        if history:
            await target.ltrim(key, 0, history - 1)
            await target.expire(key, 7 * 86400)
    await source.delete(key)
    return len(items)


async def _merge_spool(source, target, key: bytes) -> int:
    """Spool chunks moved in front of the target's (they are older), counts kept."""
    meta_key = RedisKeys.spool_meta(key)
    chunks = await source.lrange(key, 0, -1)
    meta = await source.hgetall(meta_key)
    if chunks:
        await target.execute_command("LPUSH", key, *reversed(chunks))
        for field in (b"bytes", b"messages"):
            await target.hincrby(meta_key, field, int(meta.get(field, 0)))
    await source.delete([key, meta_key])
    return len(chunks)


async def _scan(redis, pattern: bytes) -> list[bytes]:
    keys, cursor = [], 0
    while True:
        cursor, found = await redis.scan(cursor, pattern, 1000)
        keys.extend(found)
        if int(cursor) == 0:
            return keys


async def replace_shard(config_redis, connect, name: str, new_url: str, *, keys: RedisKeys,
                        history: int = 1500, settle: float = 2.0, reactor=None) -> dict:
    """Point shard `name` at new_url and move its backlogs and spools there.

    Nodes switch their writes within the feed's latency; after `settle`
    seconds what the old Redis holds is merged under what the new one has
    gathered meanwhile, so no line of a backlog is lost.
    """
    stored = await load(config_redis, keys)
    if name not in stored:
        raise KeyError(f"There is no shard named {name}; shards: {', '.join(sorted(stored))}.")
    old_url = stored[name]
    source, target = connect(old_url), connect(new_url)
    await target.ping()
    await config_redis.hset(keys.shards, name, new_url)
    await _announce(config_redis, keys)
    await task.deferLater(reactor or _reactor(), settle, lambda: None)
    lines = sum([await _merge_list(source, target, key, history, reactor)
                 for key in await _scan(source, keys.backlog_pattern)])
    spooled = 0
    for key in await _scan(source, keys.spool_pattern):
        if keys.drain_of_spool(key) is not None:  # its meta hash moves with it
            spooled += await _merge_spool(source, target, key)
    return {"shard": name, "from": old_url, "to": new_url, "backlog_lines": lines,
            "spool_chunks": spooled}


async def add_shard(config_redis, connect, url: str, *, keys: RedisKeys, history: int = 1500,
                    settle: float = 2.0, reactor=None) -> dict:
    """Add a shard; the channels the ring now gives it (about 1/N) move there."""
    stored = await load(config_redis, keys)
    name = f"shard-{len(stored)}"
    while name in stored:
        name += "x"
    target = connect(url)
    await target.ping()
    ring = ShardRing(sorted([*stored, name]))
    await config_redis.hset(keys.shards, name, url)
    await _announce(config_redis, keys)
    await task.deferLater(reactor or _reactor(), settle, lambda: None)
    drains = {int(k): json.loads(v)["channel_id"]
              for k, v in (await config_redis.hgetall(keys.drains)).items()}
    moved_channels = moved_chunks = 0
    for old_name, old_url in stored.items():
        source = connect(old_url)
        for key in await _scan(source, keys.backlog_pattern):
            if ring.shard(keys.channel_of_backlog(key)) == name:
                await _merge_list(source, target, key, history, reactor)
                moved_channels += 1
        for key in await _scan(source, keys.spool_pattern):
            drain_id = keys.drain_of_spool(key)
            if drain_id is None:  # a meta hash: it moves with its list
                continue
            if drain_id in drains and ring.shard(drains[drain_id]) == name:
                moved_chunks += await _merge_spool(source, target, key)
    return {"shard": name, "url": url, "channels_moved": moved_channels,
            "spool_chunks_moved": moved_chunks, "shards": len(stored) + 1}


def _reactor():
    from twisted.internet import reactor

    return reactor
