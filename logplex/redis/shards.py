"""Backlogs on shard Redis instances: which shard holds a channel, and batched writes to it."""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Callable, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from logplex.redis.keys import RedisKeys

log = Logger()


class ShardRing:
    """Rendezvous hashing of channel ids over shard names.

    Each channel goes to the shard with the highest hash of (shard, channel),
    so adding a shard moves only the channels that now score highest on it
    (about 1/N of them) and removing one moves only its own channels.
    """

    def __init__(self, shards: Sequence[str]) -> None:
        if not shards:
            raise ValueError("A shard ring needs at least one shard.")
        self.shards = list(shards)
        self._seeds = [s.encode() + b"\x00" for s in self.shards]
        self._memo: dict[str, int] = {}

    def index(self, channel_id: str) -> int:
        found = self._memo.get(channel_id)
        if found is None:
            key = channel_id.encode()
            scores = [
                hashlib.blake2b(seed + key, digest_size=8).digest() for seed in self._seeds
            ]
            found = max(range(len(scores)), key=scores.__getitem__)
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            self._memo[channel_id] = found
        return found

    def shard(self, channel_id: str) -> str:
        return self.shards[self.index(channel_id)]


class BacklogWriter:
    """Appends to channel backlogs on one shard, one pipelined flush per tick.

    The router appends batches; at most one flush is in flight. A flush
    writes, per channel, one LPUSH of all its new messages, an LTRIM to the
    history size and an EXPIRE. While Redis is slow or down, messages wait in
    a bounded queue; past the bound the oldest are dropped and counted.
    """

    def __init__(
        self,
        redis,
        reactor,
        metrics,
        *,
        history: int = 1500,
        expiry: int = 7 * 86400,
        interval: float = 0.05,
        max_pending: int = 200_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        timeout: float = 5.0,
        shard_name: str = "",
        keys: RedisKeys,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.reactor = reactor
        self.metrics = metrics
        self.history = history
        self.expiry = expiry
        self.interval = interval
        self.max_pending = max_pending
        # Lines are up to --max-frame (64 KiB): 200,000 of them must not mean 12 GiB.
        self.max_pending_bytes = max_pending_bytes
        self.timeout = timeout
        self.shard_name = shard_name
        self.pending: dict[str, list[bytes]] = {}
        self.pending_count = 0
        self.pending_bytes = 0
        self._order: deque[str] = deque()
        self._call = None
        self._flushing: defer.Deferred | None = None
        self.in_flight: dict[str, list[bytes]] = {}

    def append(self, channel_id: str, messages: list[bytes]) -> None:
        if not messages:
            return
        queued = self.pending.get(channel_id)
        if queued is None:
            queued = self.pending[channel_id] = list(messages)
            self._order.append(channel_id)
        else:
            queued.extend(messages)
        self.pending_count += len(messages)
        self.pending_bytes += sum(map(len, messages))
        excess = len(queued) - self.history
        if excess > 0:
            # Lines the LTRIM would cut right after the LPUSH are superseded,
            # not lost: the backlog is the newest `history` lines either way.
            self.pending_bytes -= sum(map(len, queued[:excess]))
            del queued[:excess]
            self.pending_count -= excess
            self.metrics.inc("logplex_backlog_superseded_total", excess, shard=self.shard_name)
        if self.pending_count > self.max_pending or self.pending_bytes > self.max_pending_bytes:
            self._shed()
        if self._call is None and self._flushing is None:
            self._call = self.reactor.callLater(self.interval, self.flush)

    def _shed(self) -> None:
        # Drop from the channels that have waited longest, oldest lines first:
        # a backlog is a recent history, so the newest lines matter most.
        while (self.pending_count > self.max_pending or self.pending_bytes > self.max_pending_bytes) \
                and self._order:
            channel_id = self._order[0]
            queued = self.pending[channel_id]
            cut = min(max(0, self.pending_count - self.max_pending), len(queued))
            size = sum(map(len, queued[:cut]))
            while cut < len(queued) and self.pending_bytes - size > self.max_pending_bytes:
                size += len(queued[cut])
                cut += 1
            del queued[:cut]
            self.pending_count -= cut
            self.pending_bytes -= size
            self.metrics.inc("logplex_backlog_dropped_total", cut, shard=self.shard_name)
            if not queued:
                del self.pending[channel_id]
                self._order.popleft()

    def flush(self) -> defer.Deferred:
        """Write everything queued; resolves when Redis has answered."""
        self._call = None
        if self._flushing is not None:
            return self._flushing
        if not self.pending:
            return defer.succeed(None)
        batch, self.pending, self._order = self.pending, {}, deque()
        count, self.pending_count, self.pending_bytes = self.pending_count, 0, 0
        self.in_flight = batch
        self._flushing = defer.ensureDeferred(self._write(batch, count))
        self._flushing.addBoth(self._flushed)
        return self._flushing

    async def _write(self, batch: dict[str, list[bytes]], count: int) -> bool:
        started = self.reactor.seconds()
        try:
            pipe = await self.redis.pipeline().addTimeout(self.timeout, self.reactor)
            for channel_id, messages in batch.items():
                key = self.keys.backlog(channel_id)
                pipe.execute_command("LPUSH", key, *messages)
                pipe.execute_command("LTRIM", key, 0, self.history - 1)
                pipe.execute_command("EXPIRE", key, self.expiry)
            await pipe.execute_pipeline().addTimeout(self.timeout, self.reactor)
        except Exception as e:
            self._requeue(batch, count, e)
            return False
        self.metrics.inc("logplex_backlog_written_total", count, shard=self.shard_name)
        self.metrics.observe("logplex_redis_command_seconds", self.reactor.seconds() - started,
                             redis=self.shard_name, op="backlog_flush")
        return True

    def _requeue(self, batch: dict[str, list[bytes]], count: int, error: Exception) -> None:
        # Put the failed batch back in front of what arrived meanwhile, so a
        # short outage loses nothing and order is kept; the bound still holds.
        log.warn(
            "backlog_write_failed shard={shard} messages={count} error={error}",
            shard=self.shard_name, count=count, error=repr(error),
        )
        newer, newer_order = self.pending, self._order
        self.pending, self._order = batch, deque(batch)
        for channel_id in newer_order:
            if channel_id in self.pending:
                self.pending[channel_id].extend(newer[channel_id])
            else:
                self.pending[channel_id] = newer[channel_id]
                self._order.append(channel_id)
        self.pending_count += count
        self.pending_bytes += sum(len(line) for lines in batch.values() for line in lines)
        if self.pending_count > self.max_pending or self.pending_bytes > self.max_pending_bytes:
            self._shed()

    def forget(self, channel_id: str) -> int:
        """Drop the queued lines of a deleted channel (they must not land in the backlog of a
        new channel of its name); returns how many."""
        queued = self.pending.pop(channel_id, None)
        if queued is None:
            return 0
        self._order.remove(channel_id)
        self.pending_count -= len(queued)
        self.pending_bytes -= sum(map(len, queued))
        return len(queued)

    def landed(self, channel_id: str) -> defer.Deferred:
        """Fires once no write in flight carries lines of this channel."""
        if self._flushing is None or channel_id not in self.in_flight:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()

        def fire(result):
            waiter.callback(None)
            return result

        self._flushing.addBoth(fire)
        return waiter

    def unwritten(self, channel_id: str) -> list[bytes]:
        """A channel's lines not yet known to be in Redis, oldest first."""
        return self.in_flight.get(channel_id, []) + self.pending.get(channel_id, [])

    def _flushed(self, ok) -> None:
        self._flushing = None
        self.in_flight = {}
        if self.pending and self._call is None:
            # Back off a little after a failure instead of hammering Redis.
            delay = self.interval if ok is True else max(1.0, self.interval)
            self._call = self.reactor.callLater(delay, self.flush)

    def stop(self) -> defer.Deferred:
        """Flush what is queued (for a graceful stop)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self.flush()


# The newest ARGV[1] lines of a backlog, newest first, but no more bytes than
# ARGV[2] (the newest line always, whatever its size): read a page at a time
# inside Redis, so neither Redis nor the node holds more than that for one
# reader, whatever the lines' sizes. Atomic, so no write shifts a page.
_RECENT = """
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, total, start = {}, 0, 0
while #out < want do
  local page = redis.call('LRANGE', KEYS[1], start, start + math.min(99, want - #out - 1))
  if #page == 0 then break end
  for _, line in ipairs(page) do
    if #out > 0 and total + #line > budget then return out end
    out[#out + 1] = line
    total = total + #line
  end
  start = start + #page
end
return out
"""


def within_bytes(lines: list[bytes], max_bytes: int) -> list[bytes]:
    """The newest of lines (oldest first) that fit in max_bytes; the newest one always."""
    total, keep = 0, 0
    for line in reversed(lines):
        total += len(line)
        if keep and total > max_bytes:
            break
        keep += 1
    return lines[len(lines) - keep:]


def merge_backlog(stored: list[bytes], unwritten: list[bytes], num: int) -> list[bytes]:
    """Stored lines (oldest first) and lines still on their way, without repeating
    those that were written while the read was in flight; the newest num."""
    if not unwritten:
        return stored[-num:]
    # The unwritten lines that already landed sit at the end of `stored`.
    overlap = 0
    for size in range(min(len(stored), len(unwritten)), 0, -1):
        if stored[-size:] == unwritten[:size]:
            overlap = size
            break
    return (stored + unwritten[overlap:])[-num:]


class Backlogs:
    """The backlog of every channel, spread over the shards by the ring.

    Shards have stable names (shard-0, shard-1, ...) and the ring hashes the
    names, so a shard's URL can be replaced without moving a channel, and
    the map can change while the node runs (`configure`).
    """

    def __init__(self, reactor, metrics, connect: Callable[[str], object], timeout: float = 5.0, *,
                 keys: RedisKeys, **writer_options) -> None:
        self.reactor = reactor
        self.keys = keys
        self.metrics = metrics
        self.connect = connect
        self.timeout = timeout
        self.writer_options = writer_options
        self.urls: dict[str, str] = {}
        self.pools: dict[str, object] = {}
        self.writers: dict[str, BacklogWriter] = {}
        self.ring: ShardRing | None = None
        self.on_change: list[Callable[[], None]] = []

    def configure(self, shard_map: dict[str, str]) -> None:
        """Use this name -> URL map from now on."""
        for name, url in shard_map.items():
            if self.urls.get(name) == url:
                continue
            pool = self.connect(url)
            self.pools[name] = pool
            if name in self.writers:
                # A replaced URL: what is queued goes to the new Redis.
                self.writers[name].redis = pool
            else:
                self.writers[name] = BacklogWriter(
                    pool, self.reactor, self.metrics, timeout=self.timeout, shard_name=name, keys=self.keys,
                    **self.writer_options)
            self.urls[name] = url
        for name in set(self.urls) - set(shard_map):
            # A shard taken out: flush what it queued, then forget it.
            self.writers.pop(name).stop()
            del self.urls[name], self.pools[name]
        self.ring = ShardRing(sorted(self.urls))
        for listener in self.on_change:
            listener()

    def shard_of(self, channel_id: str) -> str:
        return self.ring.shard(channel_id)

    def pool_for(self, channel_id: str):
        return self.pools[self.ring.shard(channel_id)]

    def append(self, channel_id: str, messages: list[bytes]) -> None:
        self.writers[self.ring.shard(channel_id)].append(channel_id, messages)

    def recent(self, channel_id: str, num: int, max_bytes: int | None = None) -> defer.Deferred:
        """Up to num most recent messages of a channel, oldest first, and (with max_bytes)
        no more bytes than that: a reader of a backlog of huge lines holds a bounded answer."""
        if num <= 0:
            return defer.succeed([])
        name = self.ring.shard(channel_id)
        # Lines routed but not flushed yet are part of the backlog too: a
        # session must not miss what arrived in the last flush interval.
        unwritten = self.writers[name].unwritten(channel_id)
        if max_bytes is None:
            d = self.pools[name].lrange(self.keys.backlog(channel_id), 0, num - 1)
        else:
            d = self.pools[name].eval(_RECENT, [self.keys.backlog(channel_id)], [num, max_bytes])
        d.addTimeout(self.timeout, self.reactor)

        def merged(newest_first: list[bytes]) -> list[bytes]:
            lines = merge_backlog(newest_first[::-1], unwritten, num)
            return lines if max_bytes is None else within_bytes(lines, max_bytes)

        return d.addCallback(merged)

    def forget(self, channel_id: str) -> int:
        """A deleted channel's lines still queued on this node are dropped, and counted."""
        if self.ring is None:
            return 0
        dropped = self.writers[self.ring.shard(channel_id)].forget(channel_id)
        if dropped:
            self.metrics.inc("logplex_backlog_forgotten_total", dropped)
        return dropped

    def delete(self, channel_id: str) -> defer.Deferred:
        """Delete a channel's backlog, with nothing of it left to be written afterwards."""
        return defer.ensureDeferred(self._delete(channel_id))

    async def _delete(self, channel_id: str) -> None:
        writer = self.writers[self.ring.shard(channel_id)]
        self.forget(channel_id)
        # A write in flight may carry its lines: delete once it has landed
        # (or failed and put them back in the queue, to be dropped now).
        await writer.landed(channel_id)
        self.forget(channel_id)
        d = self.pool_for(channel_id).delete(self.keys.backlog(channel_id))
        await d.addTimeout(self.timeout, self.reactor)

    def stop(self) -> defer.Deferred:
        return defer.DeferredList([w.stop() for w in self.writers.values()])
