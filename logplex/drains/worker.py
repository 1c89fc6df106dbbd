"""One drain on one node: batches out of the queue, retries with backoff, spills to the spool."""

from __future__ import annotations

from typing import Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex import syslog
from logplex.drains.formats import decode_chunk, encode_chunk
from logplex.drains.policy import Backoff, Outcome, Pace
from logplex.drains.queue import Batch, BatchSize, DrainQueue, fitting
from logplex.drains.spool import Spool
from logplex.model import Drain

log = Logger()


class DrainTransport(Protocol):
    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred: ...

    def stop(self) -> defer.Deferred: ...


class DrainWorker:
    """Delivers a drain's messages in order, at least once, through a transport.

    The queue's memory part is the fast path. What does not fit moves to
    `overflow` and from there, a chunk at a time, to the spool in Redis. A
    batch is always taken from the oldest place: the spool, then overflow,
    then memory. One batch is in flight at a time, which is what keeps order.

    When the memory part is full while the endpoint answers within
    `pushback` seconds, what limits the drain is this node, not the
    endpoint: then `holding()` asks the senders of the channel to wait
    (`wait()`), rather than spool what the node itself could deliver. A
    failing or slow endpoint never holds senders back: that is what the
    spool is for.
    """

    def __init__(
        self,
        drain: Drain,
        transport: DrainTransport,
        spool: Spool | None,
        reactor,
        metrics,
        *,
        capacity: int = 1024,
        target_bytes: int = 100 * 1024,
        max_bytes: int | None = None,
        chunk_bytes: int | None = None,
        linger: float = 0.25,
        backoff: Backoff | None = None,
        max_age: float = 86400.0,
        emit: Callable[[str, bytes], None] = lambda channel, message: None,
        pushback: float = 0.0,
        spool_allowance: Callable[[], int] | None = None,
        timers=None,
        pace: Pace | None = None,
    ) -> None:
        self.drain = drain
        self.transport = transport
        self.spool = spool
        self.reactor = reactor
        # Where linger, retry and spill timers go: the node's DrainTicker
        # (one reactor timer for all drains), else the reactor itself.
        self.timers = timers if timers is not None else reactor
        self.metrics = metrics
        self.target_bytes = target_bytes
        # Batches of target_bytes while the drain keeps up, growing to
        # max_bytes while its queue is backed up.
        self.batch_size = BatchSize(target_bytes, max_bytes or target_bytes)
        # Spool chunks: what goes to Redis in one write, and what a batch
        # delivered from the spool is. Larger than a syslog drain's batches,
        # so a spool drains in few round trips; an HTTP drain's are its
        # largest batches (what it sends while backed up, as it is then).
        self.chunk_bytes = chunk_bytes or self.batch_size.maximum
        self.linger = linger
        # Shared by a node's HTTP drains: a longer linger while they POST too often.
        self.pace = pace
        self.backoff = backoff or Backoff()
        self.max_age = max_age
        self.emit = emit
        self.queue = DrainQueue(capacity, reactor.seconds, on_lost=self._lost)
        self._spilling = False
        self.inflight: Batch | None = None
        self.spool_chunks = 0
        self.spool_messages = 0
        self.stopped = False
        self._timer = None  # linger, pump or retry
        self._retrying = False
        self._spill_timer = None
        self._ops: defer.Deferred = defer.succeed(None)
        self._last_l14 = float("-inf")
        self.delivered = 0
        self.dropped = 0
        self.retried = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._labels = {"drain": str(drain.id)}
        self.pushback = pushback
        # Bytes this drain's spool may hold given what the node's other
        # spools hold (--drain-spool-total-bytes); None: only its own bound.
        self.spool_allowance = spool_allowance
        self.last_rtt = 0.0
        self._sent_at = 0.0
        self._holders: list[defer.Deferred] = []
        self._pumping = False

    # -- spool operations run one after another, so they land in order -------------
    def _op(self, fn, *args) -> defer.Deferred:
        result = defer.Deferred()

        def run(_):
            d = defer.maybeDeferred(fn, *args)
            d.addBoth(lambda r: result.callback(r) if not isinstance(r, Failure) else result.errback(r))
            return d.addErrback(lambda _: None)

        self._ops.addCallback(run)
        return result

    def start(self) -> defer.Deferred:
        """Resume the spool a previous run of this node left behind."""
        if self.spool is None:
            return defer.succeed(None)

        def found(depth):
            self.spool_chunks, self.spool_messages = depth
            if self.spool_chunks:
                log.info("drain_spool_resumed drain={drain} messages={n}", drain=self.drain.id,
                         n=self.spool_messages)
            self._kick()

        def failed(f):
            log.warn("drain_spool_unreadable drain={drain} error={e!r}", drain=self.drain.id,
                     e=f.getErrorMessage())

        return self._op(self.spool.depth).addCallbacks(found, failed)

    # -- input ----------------------------------------------------------------------------
    def push(self, messages: list[bytes]) -> None:
        if self.stopped:
            return
        queue = self.queue
        queue.push(messages)
        if queue.overflow:
            # While senders are held back, what they had in flight lands
            # in overflow: it waits for the endpoint, not for the spool.
            threshold = self.chunk_bytes * (4 if self._holders else 1)
            if queue.overflow_bytes >= threshold:
                self._spill()
            elif self._spill_timer is None:
                self._spill_timer = self.timers.callLater(1.0, self._spill)
        self._kick()

    def _spill(self) -> None:
        """Move overflow to the spool, one chunk in flight at a time.

        One at a time is what keeps order when a write fails: the chunk goes
        back in front of overflow, and nothing newer has left overflow since,
        because the pump reads the spool while a chunk is counted in it.
        """
        if self._spill_timer is not None and self._spill_timer.active():
            self._spill_timer.cancel()
        self._spill_timer = None
        if self._spilling or self.stopped or self.spool is None:
            return
        queue = self.queue
        # A full chunk always goes; a partial one only while the endpoint is
        # failing (when it works, the pump takes overflow directly).
        if not (queue.overflow_bytes >= self.chunk_bytes or (queue.overflow and self._retrying)):
            return
        self._spilling = True
        d = self._spill_chunk(queue.take_overflow(self.chunk_bytes))
        d.addCallback(self._spilled)

    def _spilled(self, ok: bool) -> None:
        self._spilling = False
        if ok:
            self._spill()
        elif not self.stopped and self._spill_timer is None:
            self._spill_timer = self.timers.callLater(1.0, self._spill)

    def _spill_chunk(self, messages: list[bytes], at_head: bool = False,
                     frame_id: str | None = None) -> defer.Deferred:
        """Write one chunk to the spool; fires True when it is there."""
        if not messages:
            return defer.succeed(True)
        batch = Batch(messages) if frame_id is None else Batch(messages, frame_id)
        chunk = encode_chunk(messages, batch.frame_id, self.reactor.seconds())
        self.spool_chunks += 1
        self.spool_messages += len(messages)

        def pushed(dropped):
            self.queue.degraded = False
            if dropped:
                self.spool_messages -= dropped
                self.queue.count_lost(dropped, "spool full")
            return True

        def failed(f):
            self.spool_chunks -= 1
            self.spool_messages -= len(messages)
            self._error(f"spool write failed: {f.getErrorMessage()}")
            if self.stopped:
                self.queue.count_lost(len(messages), "spool unavailable at stop")
            else:
                self.queue.degraded = True
                self.queue.return_overflow(messages)
            return False

        def push():
            # Decided when the write runs, not when it was queued.
            batch = self.inflight
            protect = batch.frame_id if batch is not None and batch.from_spool else ""
            allowance = self.spool_allowance() if self.spool_allowance is not None else None
            return self.spool.push(chunk, len(messages), at_head, protect, allowance)

        return self._op(push).addCallbacks(pushed, failed)

    # -- pushback ---------------------------------------------------------------------------
    def holding(self) -> bool:
        """Whether the senders of this drain's channel should wait before sending more."""
        return bool(self.queue.overflow) and self._may_hold()

    def _may_hold(self) -> bool:
        """Pushback is on, and the endpoint is working and quick."""
        if not self.pushback or self.stopped or self._retrying or self.last_rtt >= self.pushback:
            return False
        if self.backoff.failures:
            return False  # a retry in flight: the endpoint has not worked since it failed
        return self.inflight is None or self.reactor.seconds() - self._sent_at < self.pushback

    def wait(self) -> defer.Deferred:
        """Fires once this drain has room again, or has stopped holding anyone back."""
        d = defer.Deferred()
        self._holders.append(d)
        return d

    def forget(self, d: defer.Deferred) -> None:
        """A sender stopped waiting on its own (its hold timed out)."""
        if d in self._holders:
            self._holders.remove(d)

    def _release(self, force: bool = False) -> None:
        if not self._holders:
            return
        queue = self.queue
        if not force and self._may_hold() and (queue.overflow or queue.half_full):
            return  # still full: half the buffer must be free before senders go on
        holders, self._holders = self._holders, []
        for d in holders:
            d.callback(None)

    # -- the pump ---------------------------------------------------------------------------
    def _kick(self, direct: bool = False) -> None:
        """Schedule the next send: now if there is a full batch or a backlog, else after linger.

        direct: a batch just got through, so the next full one goes at once,
        not after another turn of the reactor (unless this is inside a send).
        """
        if self.stopped or self.inflight is not None or self._retrying:
            return
        queue = self.queue
        if self.spool_chunks or queue.overflow or queue.memory_bytes >= self.target_bytes:
            delay = 0
        elif queue.memory:
            # Held senders cannot fill a batch: what there is goes at once.
            delay = 0 if self._holders else (self.linger if self.pace is None else self.pace.linger)
        else:
            return
        at_once = direct and not delay and not self._pumping
        if self._timer is not None and self._timer.active():
            if (delay or self._timer.getTime() <= self.reactor.seconds()) and not at_once:
                return  # already due as soon as it should be
            self._timer.cancel()
        if at_once:
            self._timer = None
            self._pump()
            return
        self._timer = self.timers.callLater(delay, self._pump)

    def _pump(self) -> None:
        self._timer = None
        if self.stopped or self.inflight is not None or self._retrying:
            return
        self._pumping = True
        try:
            if self.spool_chunks:
                self.inflight = Batch([], from_spool=True)  # a placeholder: the read is in flight
                self._sent_at = self.reactor.seconds()
                self._op(self._from_spool).addErrback(self._spool_read_failed)
                return
            queue = self.queue
            messages = queue.take(self.batch_size.current)
            self.batch_size.taken(queue.pending_bytes)
            if messages:
                self._send(Batch(messages))
        finally:
            self._pumping = False

    def _from_spool(self):
        return self.spool.head().addCallback(self._got_chunk)

    def _got_chunk(self, chunk: bytes | None) -> None:
        self.inflight = None
        if self.stopped:
            return
        if chunk is None:
            # The spool is empty (or was emptied from outside): carry on from memory.
            self.spool_chunks = self.spool_messages = 0
            self._kick()
            return
        frame_id, messages, created = decode_chunk(chunk)
        if self.reactor.seconds() - created > self.max_age:
            self._op(self.spool.ack, frame_id)
            self._spooled_out(len(messages))
            self.queue.count_lost(len(messages), "spool age limit")
            self._kick()
            return
        self._send(Batch(messages, frame_id, from_spool=True))

    def _spool_read_failed(self, failure) -> None:
        self.inflight = None
        self._error(f"spool read failed: {failure.getErrorMessage()}")
        self._retry_in(self.backoff.next_delay())

    def _spooled_out(self, n: int) -> None:
        self.spool_chunks = max(0, self.spool_chunks - 1)
        self.spool_messages = max(0, self.spool_messages - n)

    def _send(self, batch: Batch) -> None:
        self.inflight = batch
        # Loss is told once, by an L10 at the head of the next delivery. A
        # retried batch keeps its messages and frame id; only its L10 count
        # grows if more was lost meanwhile, so the endpoint hears one total.
        batch.take_loss(self.queue)
        batch.attempts += 1
        self._sent_at = self.reactor.seconds()
        if self.pace is not None:
            self.pace.posted()
        try:
            d = self.transport.send(batch.wire(self.reactor.seconds()), batch.frame_id)
        except Exception:  # noqa: BLE001 - a transport's bug is a failed delivery, retried
            d = defer.fail()
        # One hop: a failure becomes a retry in the same step.
        d.addCallbacks(self._sent, self._send_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _send_failed(self, failure: Failure, batch: Batch) -> None:
        self._sent(Outcome.retry_later(failure.getErrorMessage() or failure.type.__name__), batch)

    def _sent(self, outcome: Outcome, batch: Batch) -> None:
        if self.inflight is not batch:
            return  # stopped or replaced meanwhile
        n = len(batch.messages)
        self.last_rtt = self.reactor.seconds() - self._sent_at
        try:
            self._outcome(outcome, batch, n)
        finally:
            self._release()

    def _outcome(self, outcome: Outcome, batch: Batch, n: int) -> None:
        if outcome.delivered:
            self.inflight = None
            self.backoff.reset()
            if batch.lost:
                self.metrics.inc("logplex_drain_l10_total", **self._labels)
            self.delivered += n
            self.metrics.inc("logplex_drain_delivered_total", n, **self._labels)
            if batch.from_spool:
                self._spooled_out(n)
                if self.spool_chunks and not self.stopped:
                    # Ack this chunk and read the next in one round trip.
                    self.inflight = Batch([], from_spool=True)  # the read is in flight
                    self._sent_at = self.reactor.seconds()
                    self._op(self.spool.ack_next, batch.frame_id).addCallbacks(
                        self._got_chunk, self._spool_read_failed)
                    return
                self._op(self.spool.ack, batch.frame_id)
            self._kick(direct=True)
            return
        self._error(outcome.error or "delivery failed")
        if outcome.certificate_error:
            self._tell_l14(outcome.error or "")
        if outcome.retry:
            self.retried += 1
            self.metrics.inc("logplex_drain_retried_total", **self._labels)
            # The batch stays in flight: the same messages, the same frame id.
            self._retry_in(self.backoff.next_delay(outcome.retry_after))
            return
        self.inflight = None
        # The endpoint refused the batch, and its L10 with it: the next
        # delivered batch tells both (logplex does the same).
        self.queue.owe(batch.lost, batch.lost_since)
        self.queue.count_lost(n, "rejected")
        if batch.from_spool:
            self._op(self.spool.ack, batch.frame_id)
            self._spooled_out(n)
        self._kick()

    def _retry_in(self, delay: float) -> None:
        self._retrying = True
        self._release(force=True)
        # While we wait, what keeps arriving should go to the spool rather
        # than wait in memory.
        if self.queue.overflow:
            self._spill()
        self._timer = self.timers.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        self._retrying = False
        batch, self.inflight = self.inflight, None
        if self.stopped:
            return
        if batch is None or not batch.messages:
            self._kick()
            return
        self._send(batch)

    # -- accounting ---------------------------------------------------------------------------
    def _lost(self, n: int, why: str) -> None:
        """The queue counted a loss: the drain's state, metrics and log say so too."""
        self.dropped += n
        self.metrics.inc("logplex_drain_dropped_total", n, reason=why, **self._labels)
        log.warn("drain_dropped drain={drain} messages={n} reason={why!r}", drain=self.drain.id, n=n, why=why)

    def _error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = self.reactor.seconds()

    def _tell_l14(self, reason: str) -> None:
        now = self.reactor.seconds()
        if now - self._last_l14 < 60:
            return
        self._last_l14 = now
        text = b"Error L14 (certificate validation): " + reason.encode("utf-8", "replace")[:400]
        self.emit(self.drain.channel_id, syslog.make_message(
            syslog.FACILITY_LOCAL5, syslog.SEVERITY_WARNING, syslog.utc_timestamp(now),
            b"heroku", b"logplex", text))

    def state(self) -> dict:
        return {
            "delivered": self.delivered,
            "dropped": self.dropped,
            "retried": self.retried,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            # A batch in flight from the spool is counted in spool_depth until acked.
            "buffered": self.queue.pending + (len(self.inflight.messages)
                                              if self.inflight and not self.inflight.from_spool else 0),
            "spool_depth": self.spool_messages,
            "holding_senders": bool(self._holders),
        }

    # -- stopping -------------------------------------------------------------------------------
    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._spill_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._spill_timer = None

    def stop(self) -> defer.Deferred:
        """A graceful stop: everything held in memory goes to the spool, in order."""
        self.stopped = True
        self._cancel_timers()
        self._release(force=True)
        batch, self.inflight = self.inflight, None
        if batch is not None:
            self.queue.owe(batch.lost, batch.lost_since)
        if batch is not None and batch.messages and not batch.from_spool:
            # Older than anything spooled: it goes back in front, under its
            # frame id, so a receiver can tell a repeat.
            self._spill_chunk(batch.messages, at_head=True, frame_id=batch.frame_id)
        held = self.queue.drain_all()
        start, left = 0, sum(map(len, held))
        while start < len(held):
            n, size = fitting(held[start:], self.chunk_bytes, left)
            self._spill_chunk(held[start:start + n])
            start, left = start + n, left - size
        d = defer.Deferred()
        self._ops.addBoth(lambda _: d.callback(None))
        return d.addCallback(lambda _: self.transport.stop())

    def discard(self) -> defer.Deferred:
        """The drain was deleted: stop and free its spool."""
        self.stopped = True
        self._cancel_timers()
        self._release(force=True)
        self.inflight = None
        self.queue.drain_all()
        d = self.transport.stop()
        if self.spool is not None:
            d.addBoth(lambda _: self._op(self.spool.delete))
        return d
