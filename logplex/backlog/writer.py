"""Backlogs on shard Redis instances: batched writes to the shard the ring gives a channel, and reads."""

from __future__ import annotations

import sys
import uuid
from itertools import chain, count as counter
from typing import Callable, Container

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex import hotpath
from logplex.backlog.ring import ShardRing
from logplex.redis.keys import RedisKeys
from logplex.settings import BacklogSettings
from logplex.redis.scripts import lua

log = Logger()


# One flush of a shard's new lines, whatever the channels: one command and one integer reply, not
# LPUSH + LTRIM + EXPIRE per channel (bench/backlog_write.py). KEYS: the writer's hash of calls (see
# BacklogWriter), then the backlogs. ARGV: the last index kept (history - 1), the expiry, the call's
# id, a count n and n ids of answered calls (out of the hash), then per backlog its line count and
# lines, oldest first. A call whose id is in the hash already ran: it writes nothing, answers -1. A
# negative count: the writer refreshed this backlog's expiry lately, so EXPIRE only if the LPUSH
# made the list. LPUSH takes at most a thousand lines a call (Lua's unpack stack limit).
WRITE_SCRIPT = lua("logplex.backlog", "write")

# A flush is cut into script calls of about this many bytes, by channel, a reactor turn apart:
# Redis runs a script without serving anyone else, and runs one while the node encodes the next.
WRITE_CALL_BYTES = 1024 * 1024


def enqueue(pending: dict[str, list[bytes]], batches: dict[str, list[bytes]],
            history: int) -> tuple[int, int, int]:
    """Queue one routed read's lines in pending (channel -> lines, oldest first), keeping the
    newest `history` of a channel: (lines added, their bytes, lines superseded), net of
    what was cut. A channel new to pending goes last: _shed cuts the first ones."""
    count = sum(map(len, batches.values()))
    size = sum(map(len, chain.from_iterable(batches.values())))
    superseded = 0
    for channel_id, messages in batches.items():
        queued = pending.get(channel_id)
        if queued is None:
            queued = pending[channel_id] = list(messages)
        else:
            queued.extend(messages)
        if len(queued) > history:
            # Lines the LTRIM would cut right after the LPUSH are superseded,
            # not lost: the backlog is the newest `history` lines either way.
            excess = len(queued) - history
            size -= sum(map(len, queued[:excess]))
            del queued[:excess]
            count -= excess
            superseded += excess
    return count, size, superseded


def write_calls(prefix: bytes, batch: dict[str, list[bytes]], head: tuple[bytes, bytes], fresh: Container[str],
                max_bytes: int = WRITE_CALL_BYTES) -> list[tuple[list[str], list[bytes], list[bytes]]]:
    """The batch as WRITE_SCRIPT calls of about max_bytes of lines each, cut by channel (a
    channel's lines stay in one call): per call (its channel ids, KEYS, ARGV). A backlog's
    key is prefix + the channel id; head is ARGV's start (the last index kept, the expiry);
    a channel in fresh has its expiry refreshed only if its list is new."""
    calls = []
    ids, names, args, size = [], [], list(head), 0
    for channel_id, lines in batch.items():
        ids.append(channel_id)
        names.append(prefix + channel_id.encode())
        args.append(b"%d" % (-len(lines) if channel_id in fresh else len(lines)))
        args.extend(lines)
        size += sum(map(len, lines))
        if size >= max_bytes:
            calls.append((ids, names, args))
            ids, names, args, size = [], [], list(head), 0
    if ids:
        calls.append((ids, names, args))
    return calls


# The compiled twins, when built, in their place (the pure ones stay for the
# differential test and LOGPLEX_PURE_PYTHON): at 10,000 busy channels these
# loops run once per channel and read, and once per channel and flush.
pure_enqueue, pure_write_calls = enqueue, write_calls
if (_hot := hotpath.compiled()) is not None:
    enqueue, write_calls = _hot.enqueue, _hot.write_calls


def write_arguments(keys: RedisKeys, batch: dict[str, list[bytes]], history: int, expiry: int,
                    fresh: Container[str] = (), writer: str = "direct",
                    call: bytes | None = None) -> tuple[list[bytes], list[bytes]]:
    """(KEYS, ARGV) of one WRITE_SCRIPT call for all of these channels' lines (call: its id,
    a new one by default)."""
    head = (b"%d" % (history - 1), b"%d" % expiry, call or uuid.uuid4().hex.encode(), b"0")
    calls = write_calls(keys.backlog_prefix, batch, head, fresh, sys.maxsize)
    names, args = (calls[0][1], calls[0][2]) if calls else ([], list(head))
    return [keys.backlog_writes(writer), *names], args


class BacklogWriter:
    """Appends to channel backlogs on one shard, one flush per tick whatever the channels.

    The router appends batches; at most one flush is in flight, and it is one
    WRITE_SCRIPT call per few MiB of lines, not commands per channel. When
    the queue passes half its bound while Redis keeps answering, the writer
    pushes back: hold() gives senders a Deferred that fires once it is below
    a quarter again, so overload slows senders down instead of dropping lines.
    Only while Redis fails do lines wait past that, in a queue bounded in lines
    and bytes; past the bound the oldest are dropped and counted.

    A flush costs Redis and the node per channel as well as per line: an
    LPUSH call, a key, an argument count. When thousands of channels each
    have a line or two queued, that is most of its cost, so such a flush
    waits (up to the linger) for more lines to join them; see _due.
    """

    # A flush that would write fewer than LINGER_LINES lines per channel to more than
    # LINGER_CHANNELS channels waits for more, up to `linger` from its oldest line
    # (README: Redis's cost per line at 10,000 channels); a smaller flush is cheap.
    LINGER_CHANNELS = 1000
    LINGER_LINES = 8

    # A flush slower than this is logged (at most every SLOW_LOG_EVERY seconds).
    SLOW_FLUSH = 1.0
    SLOW_LOG_EVERY = 30.0

    def __init__(
        self,
        redis,
        reactor,
        metrics,
        settings: BacklogSettings,
        timeout: float,
        *,
        max_pending: int = 200_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        shard_name: str = "",
        keys: RedisKeys,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.reactor = reactor
        self.metrics = metrics
        self.history = settings.history
        self.expiry = settings.expiry
        self.interval = settings.flush_interval
        self.linger = settings.flush_linger
        self.max_pending = max_pending
        # Lines are up to --max-frame (64 KiB): 200,000 of them must not mean 12 GiB.
        self.max_pending_bytes = max_pending_bytes
        self.timeout = timeout
        self.shard_name = shard_name
        self.pending: dict[str, list[bytes]] = {}
        self.pending_count = 0
        self.pending_bytes = 0
        self._call = None
        # When the oldest queued line was queued (the linger counts from it).
        self._since = 0.0
        self._flushing: defer.Deferred | None = None
        # The parts of the flush in flight, each channel -> lines.
        self.in_flight: list[dict[str, list[bytes]]] = []
        # Every script call has an id, put in this writer's hash on the shard with its lines in
        # one step. A failed call is sent again whole under its id, before anything newer: if it
        # had run (its answer lost), it finds its id and writes nothing. Answered ids leave the
        # hash with the next call.
        self._writes_key = keys.backlog_writes(uuid.uuid4().hex)
        self._call_ids = counter(1)
        self._answered: list[bytes] = []
        # Failed calls to send again, oldest first: (id, channel -> lines), counted in pending_*.
        self.retrying: list[tuple[bytes, dict[str, list[bytes]]]] = []
        # Whether the last flush failed: then senders are not held (the node
        # goes on with tails and drains) and the bound sheds instead.
        self.failing = False
        self._holders: list[defer.Deferred] = []
        self._slow_logged = -self.SLOW_LOG_EVERY
        # Backlogs whose expiry this writer refreshed since _fresh_since: their
        # EXPIRE is skipped until the set is cleared, every 1 % of the expiry
        # (an hour at most), so a backlog expires `expiry` after its last
        # write, give or take that.
        self._fresh: set[str] = set()
        self._fresh_since = reactor.seconds()
        self.refresh_every = min(3600.0, self.expiry / 100)
        self._head = (b"%d" % (self.history - 1), b"%d" % self.expiry)  # WRITE_SCRIPT's first ARGV

    def append(self, channel_id: str, messages: list[bytes]) -> None:
        self.extend({channel_id: messages})

    def extend(self, batches: dict[str, list[bytes]]) -> None:
        """Queue the lines of one routed read, whatever the number of channels it touched."""
        if not self.pending:
            self._since = self.reactor.seconds()
        count, size, superseded = enqueue(self.pending, batches, self.history)
        if not count and not superseded:
            return
        self.pending_count += count
        self.pending_bytes += size
        if superseded:
            self.metrics.inc("logplex_backlog_superseded_total", superseded, shard=self.shard_name)
        if self._over():
            self._shed()
        if self._call is None and self._flushing is None and self.pending:
            self._call = self.reactor.callLater(self.interval, self._tick)

    def _due(self) -> bool:
        """Whether the queue should be written now: it is small, dense enough (LINGER_LINES
        per channel), a quarter of the bound, or its oldest line has waited `linger`."""
        channels = len(self.pending)
        return (channels <= self.LINGER_CHANNELS
                or self.pending_count >= self.LINGER_LINES * channels
                or self._full()
                or self.reactor.seconds() - self._since >= self.linger)

    def _full(self) -> bool:
        return self.pending_count >= self.max_pending // 4 or self.pending_bytes >= self.max_pending_bytes // 4

    def _tick(self) -> None:
        self._call = None
        if self._due():
            self.flush()
        elif self.pending:
            self._call = self.reactor.callLater(self.interval, self._tick)

    # -- pushback ---------------------------------------------------------------------------
    def congested(self) -> bool:
        """Whether senders should wait: the queue is past half its bound and Redis is answering."""
        return not self.failing and (self.pending_count > self.max_pending // 2
                                     or self.pending_bytes > self.max_pending_bytes // 2)

    def wait(self) -> defer.Deferred:
        """Fires once the queue is below a quarter of its bound, or Redis failed (then nobody waits)."""
        if not self._holders:
            self.metrics.inc("logplex_backlog_pushback_total", shard=self.shard_name)
        d = defer.Deferred()
        self._holders.append(d)
        return d

    def _release(self) -> None:
        if not self._holders:
            return
        if not self.failing and (self.pending_count > self.max_pending // 4
                                 or self.pending_bytes > self.max_pending_bytes // 4):
            return
        holders, self._holders = self._holders, []
        for d in holders:
            d.callback(None)

    def _over(self) -> bool:
        return self.pending_count > self.max_pending or self.pending_bytes > self.max_pending_bytes

    def _shed(self) -> None:
        # Drop from the calls to retry, then from the channels that have waited
        # longest, oldest lines first: a backlog is a recent history, so the
        # newest lines matter most.
        while self.retrying and self._over():
            self._shed_from(self.retrying[0][1])
            if not self.retrying[0][1]:
                del self.retrying[0]
        self._shed_from(self.pending)

    def _shed_from(self, queue: dict[str, list[bytes]]) -> None:
        while queue and self._over():
            channel_id = next(iter(queue))
            queued = queue[channel_id]
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
                del queue[channel_id]

    # -- flushing ---------------------------------------------------------------------------
    def flush(self) -> defer.Deferred:
        """Write everything queued; resolves when Redis has answered."""
        self._call = None
        if self._flushing is not None:
            return self._flushing
        if not self.pending and not self.retrying:
            return defer.succeed(None)
        batch, self.pending = self.pending, {}
        retry, self.retrying = self.retrying, []
        count = self.pending_count
        self.pending_count, self.pending_bytes = 0, 0
        self.in_flight = [part for _, part in retry] + [batch]
        self._release()  # the queue is empty now: held senders go on while the flush runs
        self._flushing = defer.ensureDeferred(self._write(retry, batch, count))
        self._flushing.addBoth(self._flushed)
        return self._flushing

    async def _write(self, retry: list[tuple[bytes, dict[str, list[bytes]]]], batch: dict[str, list[bytes]],
                     count: int) -> bool:
        started = self.reactor.seconds()
        if started - self._fresh_since >= self.refresh_every:
            self._fresh = set()
            self._fresh_since = started
        answered = self._answered[:]
        head = (*self._head, b"", b"%d" % len(answered), *answered)
        prefix, calls = self.keys.backlog_prefix, []
        for call_id, part in retry:  # whole, under its id: one call
            calls += [(call_id, ids, part, names, args)
                      for ids, names, args in write_calls(prefix, part, head, self._fresh, sys.maxsize)]
        for ids, names, args in write_calls(prefix, batch, head, self._fresh):
            calls.append((b"%d" % next(self._call_ids), ids, batch, names, args))
        for call_id, _, _, names, args in calls:
            names.insert(0, self._writes_key)
            args[2] = call_id
        if retry:
            results = await self._one_by_one([(names, args) for _, _, _, names, args in calls])
        else:
            sent = []
            for n, (_, _, _, names, args) in enumerate(calls):
                if n:
                    # A reactor turn between parts: the previous part goes out and
                    # Redis runs it while this one is encoded (and reads go on).
                    await task.deferLater(self.reactor, 0, lambda: None)
                sent.append(self._send(names, args))
            results = await defer.DeferredList(sent, consumeErrors=True)
        failed, error, ran = 0, None, False
        for (call_id, ids, source, _, _), (ok, result) in zip(calls, results):
            if ok:
                ran = True
                self._fresh.update(ids)
                self._answered.append(call_id)
                continue
            part = {channel_id: source[channel_id] for channel_id in ids}
            self.retrying.append((call_id, part))
            failed += sum(map(len, part.values()))
            self.pending_bytes += sum(map(len, chain.from_iterable(part.values())))
            error = result.value
        if ran:
            del self._answered[:len(answered)]  # a call that ran took them out of the hash
        if count > failed:
            self.metrics.inc("logplex_backlog_written_total", count - failed, shard=self.shard_name)
        took = self.reactor.seconds() - started
        self.metrics.observe("logplex_redis_command_seconds", took, redis=self.shard_name, op="backlog_flush")
        if took >= self.SLOW_FLUSH and started - self._slow_logged >= self.SLOW_LOG_EVERY:
            self._slow_logged = started
            log.warn("backlog_redis_slow shard={shard} seconds={seconds:.1f} lines={lines} "
                     "action='senders held while the queue is past half its bound'",
                     shard=self.shard_name, seconds=took, lines=count)
        if error is None:
            return True
        # The failed calls wait in front of what arrived meanwhile, so a short
        # outage loses nothing and order is kept; the bound still holds.
        log.warn("backlog_write_failed shard={shard} messages={count} error={error}",
                 shard=self.shard_name, count=failed, error=repr(error))
        self.pending_count += failed
        self._since = float("-inf")  # due whatever their number
        if self._over():
            self._shed()
        return False

    def _send(self, names: list[bytes], args: list[bytes]) -> defer.Deferred:
        return defer.maybeDeferred(self.redis.eval, WRITE_SCRIPT, names, args).addTimeout(self.timeout, self.reactor)

    async def _one_by_one(self, calls: list[tuple[list[bytes], list[bytes]]]) -> list[tuple[bool, object]]:
        # With calls to retry, a channel's lines can be in several calls: they
        # go one at a time, in order, since the pool's connections could run
        # them out of order; after a failure the rest wait for the next try.
        results: list[tuple[bool, object]] = []
        for names, args in calls:
            try:
                results.append(results[-1] if results and not results[-1][0] else (True, await self._send(names, args)))
            except Exception:
                results.append((False, Failure()))
        return results

    def forget(self, channel_id: str) -> int:
        """Drop the queued lines of a deleted channel (they must not land in the backlog of a
        new channel of its name); returns how many."""
        dropped = 0
        for queue in (*(part for _, part in self.retrying), self.pending):
            queued = queue.pop(channel_id, None)
            if queued is not None:
                dropped += len(queued)
                self.pending_count -= len(queued)
                self.pending_bytes -= sum(map(len, queued))
        return dropped

    def landed(self, channel_id: str) -> defer.Deferred:
        """Fires once no write in flight carries lines of this channel."""
        if self._flushing is None or not any(channel_id in part for part in self.in_flight):
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()

        def fire(result):
            waiter.callback(None)
            return result

        self._flushing.addBoth(fire)
        return waiter

    def unwritten(self, channel_id: str) -> list[bytes]:
        """A channel's lines not yet known to be in Redis, oldest first."""
        parts = (*self.in_flight, *(part for _, part in self.retrying), self.pending)
        return [line for part in parts for line in part.get(channel_id, ())]

    def _flushed(self, ok) -> None:
        self._flushing = None
        self.in_flight = []
        self.failing = ok is not True
        self._release()
        if (self.pending or self.retrying) and self._call is None:
            if ok is True:
                # A queue that filled to a quarter of its bound while this flush ran
                # goes at once: under load, a pause here is time senders are held.
                self._call = self.reactor.callLater(0 if self._full() else self.interval, self._tick)
            else:
                # Back off a little after a failure instead of hammering Redis.
                self._call = self.reactor.callLater(max(1.0, self.interval), self.flush)

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
_RECENT = lua("logplex.backlog", "recent")


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

    def __init__(self, reactor, metrics, connect: Callable[[str], object], settings: BacklogSettings,
                 timeout: float, *, keys: RedisKeys, **writer_options) -> None:
        self.reactor = reactor
        self.settings = settings
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
        metrics.gauge_callback("logplex_backlog_queued_messages", lambda: self.queued()[0])
        metrics.gauge_callback("logplex_backlog_queued_bytes", lambda: self.queued()[1])

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
                    pool, self.reactor, self.metrics, self.settings, self.timeout, shard_name=name, keys=self.keys,
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
        """One channel's lines (the router hands whole reads to extend)."""
        self.extend({channel_id: messages})

    def extend(self, by_channel: dict[str, list[bytes]]) -> None:
        """Queue one routed read's lines, grouped per shard: one call per shard, not per channel."""
        if len(self.writers) == 1:
            next(iter(self.writers.values())).extend(by_channel)
            return
        index, names = self.ring.index, self.ring.shards
        per_shard: dict[int, dict[str, list[bytes]]] = {}
        for channel_id, lines in by_channel.items():
            found = index(channel_id)
            part = per_shard.get(found)
            if part is None:
                per_shard[found] = {channel_id: lines}
            else:
                part[channel_id] = lines
        for found, part in per_shard.items():
            self.writers[names[found]].extend(part)

    def hold(self, channel_ids) -> defer.Deferred | None:
        """None, or a Deferred the senders of these channels should wait for: the writer of
        a shard they go to is past half its bound while its Redis keeps answering."""
        congested = [w for w in self.writers.values() if w.congested()]
        if not congested:
            return None
        if len(self.writers) > 1:
            shards = {self.ring.shard(channel_id) for channel_id in channel_ids}
            congested = [w for w in congested if w.shard_name in shards]
            if not congested:
                return None
        if len(congested) == 1:
            return congested[0].wait()
        return defer.DeferredList([w.wait() for w in congested])

    def queued(self):
        """(labels, lines) and (labels, bytes) per shard: the writers' queue depth gauges."""
        return ([({"shard": n}, w.pending_count) for n, w in self.writers.items()],
                [({"shard": n}, w.pending_bytes) for n, w in self.writers.items()])

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
