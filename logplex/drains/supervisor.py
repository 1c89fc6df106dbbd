"""Every drain of every channel, on this node: workers follow the config cache as it changes."""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger

from logplex.settings import DrainSettings
from logplex.drains.policy import Backoff, Outcome, Pace
from logplex.drains.http import HttpDrainTransport
from logplex.drains.spool import Spool
from logplex.drains.syslog import SyslogDrainTransport
from logplex.drains.ticker import DrainTicker
from logplex.drains.worker import DrainWorker
from logplex.model import SYSLOG_DEFAULT_PORTS, Drain
from logplex.redis.keys import RedisKeys

log = Logger()


# A syslog drain spools (and later delivers from the spool) in chunks of at
# least this: its batches are small, and one spool round trip each would crawl.
SYSLOG_CHUNK_BYTES = 128 * 1024

# How late a drain's linger (or retry) may end: the drains' timers share one
# reactor timer on this grid, so 1,000 drains lingering cost at most 100
# reactor timers a second, not one each per linger.
TICK = 0.01


# A spool keeps at least its newest chunk whatever its bound, so its chunks
# must be a small part of it for the bound to mean anything.
SPOOL_CHUNKS_AT_LEAST = 8


def http_chunk_bytes(s: DrainSettings) -> int:
    """An HTTP drain's spool chunk: its largest batch, unless the spool is too small for chunks of it.

    A drain spools only while it is backed up, when it sends its largest
    batches; each chunk is one batch when read back, so the spool empties in
    as few POSTs as the drain would send from memory.
    """
    largest = max(s.http_max_bytes, s.http_target_bytes)
    return largest if largest * SPOOL_CHUNKS_AT_LEAST <= s.spool_bytes else s.http_target_bytes


class DrainSupervisor:
    def __init__(self, store, backlogs, metrics, reactor, node: str, settings: DrainSettings,
                 http_client, trust_root=None, emit=lambda channel, message: None,
                 connect_reactor=None, *, keys: RedisKeys,
                 spool_recorder: Callable[[int], defer.Deferred] | None = None) -> None:
        self.keys = keys  # where spools live: the cluster's key schema
        self.store = store
        self.backlogs = backlogs
        self.metrics = metrics
        self.reactor = reactor
        self.node = node
        self.settings = settings
        self.http_client = http_client
        self.trust_root = trust_root
        self.emit = emit
        self.spool_recorder = spool_recorder
        # What syslog drains connect with (the HTTP client was made with the same).
        self.connect_reactor = connect_reactor or reactor
        self.workers: dict[int, DrainWorker] = {}
        self.ticker = DrainTicker(reactor, resolution=TICK)
        self.pace = Pace(settings.http_linger, settings.http_post_rate, reactor.seconds)
        self.by_channel: dict[str, list[DrainWorker]] = {}
        self.stopping = False
        # Drains gone from the config without a tombstone: worker stopped, spool kept.
        self.kept: dict[int, DrainWorker] = {}
        metrics.gauge_callback("logplex_drain_spool_depth", self._spool_depths)
        metrics.gauge_callback("logplex_drain_buffered", self._buffered)
        metrics.gauge_callback("logplex_drain_spool_bytes", lambda: [({}, self.spool_total())])

    # The router's drain sink: the hot path.
    def publish(self, channel_id: str, messages: list[bytes]) -> None:
        for worker in self.by_channel.get(channel_id, ()):
            worker.push(messages)

    def hold(self, channel_ids) -> defer.Deferred | None:
        """None, or a Deferred the senders of these channels should wait for.

        It fires once every drain that holds them back has room again, or
        after `pushback` seconds at most: a sender is never stopped for long,
        and if the node is still behind then, it is simply held again.
        """
        waits = None
        by_channel = self.by_channel
        # Only the channels with drains, found in C: a read may touch hundreds of channels.
        for channel_id in by_channel.keys() & channel_ids:
            for worker in by_channel[channel_id]:
                if worker.holding():
                    if waits is None:
                        waits = []
                    waits.append((worker, worker.wait()))
        if waits is None:
            return None
        self.metrics.inc("logplex_senders_held_total")
        done = defer.Deferred()
        started = self.reactor.seconds()
        left = [len(waits)]

        def finish():
            self.metrics.inc("logplex_senders_held_seconds_total", self.reactor.seconds() - started)
            done.callback(None)

        def timed_out():
            for worker, wait in waits:
                worker.forget(wait)
            finish()

        timer = self.reactor.callLater(self.settings.pushback, timed_out)

        def one(_):
            left[0] -= 1
            if left[0] == 0:
                timer.cancel()
                finish()

        for _, wait in waits:
            wait.addCallback(one)
        return done

    def start(self) -> None:
        self.store.drain_listeners.append(self.sync)
        self.backlogs.on_change.append(self.respool)
        self.store.tombstone_listeners.append(self.tombstoned)
        for channel_id in list(self.store.cache.channel_drains):
            self.sync(channel_id)

    def sync(self, channel_id: str) -> None:
        """Bring this channel's workers in line with its drains in the cache."""
        if self.stopping:
            return
        wanted = {d.id: d for d in self.store.cache.channel_drains.get(channel_id, {}).values() if d.url}
        current = {w.drain.id: w for w in self.by_channel.get(channel_id, [])}
        for drain_id, worker in current.items():
            drain = wanted.get(drain_id)
            if drain is None:
                # Only a drain deleted through the API loses its spool: one that
                # merely vanished (a config Redis that lost its data) keeps it.
                deleted = drain_id in self.store.tombstones
                if not deleted:
                    self.kept[drain_id] = worker
                    log.warn("drain_vanished drain={drain} action=spool_kept reason='gone from the config "
                             "without being deleted'", drain=drain_id)
                self._remove(worker, discard=deleted)
            elif drain.url != worker.drain.url:
                # A new destination: the same queue and spool, a new transport.
                old = worker.transport
                worker.drain = drain
                worker.transport = self._transport(drain)
                worker.backoff.reset()
                old.stop()
                log.info("drain_url_changed drain={drain}", drain=drain_id)
        for drain_id, drain in wanted.items():
            if drain_id not in current:
                self.kept.pop(drain_id, None)  # back: its new worker resumes the spool
                self._add(drain)

    def tombstoned(self, drain_id: int) -> None:
        """A drain was deleted through the API: a spool kept for it goes now."""
        worker = self.kept.pop(drain_id, None)
        if worker is not None and drain_id not in self.workers:
            log.info("drain_spool_deleted drain={drain} reason=tombstone", drain=drain_id)
            # After the stop's spill (the worker's operations run in order).
            worker.discard()

    def respool(self) -> None:
        """The shard map changed: each spool follows its channel's shard."""
        for worker in self.workers.values():
            if worker.spool is not None:
                worker.spool.redis = self.backlogs.pool_for(worker.drain.channel_id)

    def _transport(self, drain: Drain):
        scheme = urlsplit(drain.url).scheme
        if scheme in ("http", "https"):
            return HttpDrainTransport(drain, self.http_client, self.reactor, self.settings.http_timeout)
        if scheme not in SYSLOG_DEFAULT_PORTS:
            # A UDP drain stored before they were refused: say so rather than
            # send TCP to a port that listens for datagrams.
            return RefusedTransport(f"{scheme}:// drains are not supported; re-create the drain as "
                                    "syslog:// or syslog+tls://")
        return SyslogDrainTransport(drain, self.connect_reactor, self.settings, self.trust_root)

    def spool_total(self) -> int:
        """Bytes all of this node's drain spools hold (as their last writes and acks said)."""
        return sum(w.spool.bytes for w in self.workers.values() if w.spool is not None)

    def _allowance(self, worker: DrainWorker) -> Callable[[], int]:
        """What the worker's spool may hold: the node's budget less what the others hold."""
        def allowance() -> int:
            others = self.spool_total() - worker.spool.bytes
            return max(0, self.settings.spool_total_bytes - others)

        return allowance

    def _add(self, drain: Drain) -> None:
        s = self.settings
        http = urlsplit(drain.url).scheme in ("http", "https")
        shard = self.backlogs.pool_for(drain.channel_id)
        worker = DrainWorker(
            drain, self._transport(drain),
            Spool(shard, drain.id, self.node, self.reactor, s.spool_bytes, s.redis_timeout, keys=self.keys),
            self.reactor, self.metrics,
            capacity=s.buffer,
            target_bytes=s.http_target_bytes if http else s.tcp_target_bytes,
            max_bytes=max(s.http_max_bytes, s.http_target_bytes) if http else s.tcp_target_bytes,
            chunk_bytes=http_chunk_bytes(s) if http else max(s.tcp_target_bytes, SYSLOG_CHUNK_BYTES),
            linger=s.http_linger if http else s.tcp_linger,
            pace=self.pace if http else None,
            backoff=Backoff(initial=0.5, cap=s.backoff_max),
            max_age=s.spool_age,
            emit=self.emit,
            pushback=s.pushback,
            timers=self.ticker,
        )
        worker.spool_allowance = self._allowance(worker)
        self._watch_spool(worker.spool)
        self.workers[drain.id] = worker
        self.by_channel.setdefault(drain.channel_id, []).append(worker)
        worker.start()
        log.info("drain_started drain={drain} channel={channel}", drain=drain.id, channel=drain.channel_id)

    def _remove(self, worker: DrainWorker, discard: bool) -> defer.Deferred:
        self.workers.pop(worker.drain.id, None)
        workers = self.by_channel.get(worker.drain.channel_id, [])
        if worker in workers:
            workers.remove(worker)
        if not workers:
            self.by_channel.pop(worker.drain.channel_id, None)
        log.info("drain_removed drain={drain}", drain=worker.drain.id)
        return worker.discard() if discard else worker.stop()

    def state(self, drain_id: int) -> dict | None:
        worker = self.workers.get(drain_id)
        return worker.state() if worker is not None else None

    def _spool_depths(self):
        return [({"drain": str(i)}, w.spool_messages) for i, w in self.workers.items()]

    def _buffered(self):
        return [({"drain": str(i)}, w.queue.pending) for i, w in self.workers.items()]

    def stop(self) -> defer.Deferred:
        """Graceful stop: every worker spills what it holds to its spool."""
        self.stopping = True
        if self.sync in self.store.drain_listeners:
            self.store.drain_listeners.remove(self.sync)
        workers = list(self.workers.values())
        self.workers.clear()
        self.by_channel.clear()
        return defer.DeferredList([w.stop() for w in workers], consumeErrors=True)

    # -- spool adoption (logplex/drains/adoption.py) -------------------------------------------
    # spool_recorder is called with a drain id at a spool's first write: it
    # records, in the config Redis, that this node spools for that drain.

    def _watch_spool(self, spool: Spool) -> None:
        spool.on_first_write = lambda drain_id: (
            self.spool_recorder(drain_id) if self.spool_recorder is not None else None)

    def adopt_spool(self, worker: DrainWorker, departed: str) -> defer.Deferred:
        """Move a departed node's spool of this worker's drain to the tail of the worker's own.

        It runs in line with the worker's other spool operations, so its
        counts stay exact; the worker then delivers it from the spool (which
        always goes before memory), after what it had spooled already.
        Fires with (chunks, messages, chunks dropped, messages dropped).
        """
        def move() -> defer.Deferred:
            batch = worker.inflight
            protect = batch.frame_id if batch is not None and batch.from_spool and batch.messages else ""
            allowance = worker.spool_allowance() if worker.spool_allowance is not None else None
            return worker.spool.adopt(departed, protect, allowance)

        def moved(result):
            chunks, messages, dropped_chunks, dropped = result
            worker.spool_chunks += chunks - dropped_chunks
            worker.spool_messages += messages - dropped
            if dropped:
                worker.queue.count_lost(dropped, "spool full")
            worker._kick()
            return result

        return worker._op(move).addCallback(moved)


class RefusedTransport:
    """A drain this node cannot deliver to: every batch is refused (dropped, counted, last_error says why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred:
        return defer.succeed(Outcome.rejected(self.reason))

    def stop(self) -> defer.Deferred:
        return defer.succeed(None)
