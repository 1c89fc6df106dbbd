"""One drain on one node: its life in named states, from its queue to the endpoint, with retries and the spool."""

from __future__ import annotations

import enum
from typing import Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex import syslog
from logplex.drains.formats import decode_chunk
from logplex.drains.policy import Backoff, Outcome, Pace
from logplex.drains.pushback import PushbackGate
from logplex.drains.queue import Batch, BatchSize, DrainQueue
from logplex.drains.spool import Spool
from logplex.drains.spoolwriter import SpoolWriter
from logplex.model import Drain

log = Logger()


class DrainTransport(Protocol):
    def send(self, messages: list[bytes], frame_id: str) -> defer.Deferred: ...

    def stop(self) -> defer.Deferred: ...


class DrainState(enum.Enum):
    """Where a drain is. One batch at a time leaves a drain (that keeps order), so it is in exactly one of these."""

    IDLE = "idle"                           # nothing to send
    LINGERING = "lingering"                 # a batch is due: after the linger (for more to fill it), or at once
    SENDING = "sending"                     # a batch is with the transport, its outcome awaited
    WAITING_TO_RETRY = "waiting to retry"   # the endpoint (or the spool) failed: a timer, then the same batch
    READING_SPOOL = "reading the spool"     # the next batch is read from the spool, which goes before memory
    STOPPING = "stopping"                   # stopped or deleted: what is held goes to the spool
    STOPPED = "stopped"                     # that is done, and the transport stopped


_S = DrainState
# The life of a drain: every move it makes, and no other (DrainWorker._move checks).
MOVES: dict[DrainState, frozenset[DrainState]] = {
    _S.IDLE: frozenset({_S.LINGERING, _S.SENDING, _S.READING_SPOOL, _S.STOPPING}),
    _S.LINGERING: frozenset({_S.IDLE, _S.SENDING, _S.READING_SPOOL, _S.STOPPING}),
    _S.SENDING: frozenset({_S.IDLE, _S.READING_SPOOL, _S.WAITING_TO_RETRY, _S.STOPPING}),
    _S.READING_SPOOL: frozenset({_S.IDLE, _S.SENDING, _S.WAITING_TO_RETRY, _S.STOPPING}),
    _S.WAITING_TO_RETRY: frozenset({_S.IDLE, _S.SENDING, _S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset({_S.STOPPING}),  # a stopped drain deleted later: its spool goes
}
# Where a new batch may be started (nothing is in flight, nothing waits for a retry).
_READY = (_S.IDLE, _S.LINGERING)
_STOPPED = (_S.STOPPING, _S.STOPPED)


class DrainWorker:
    """Delivers a drain's messages in order, at least once, through a transport.

    The queue's memory part is the fast path. What does not fit moves to
    `overflow` and from there, a chunk at a time, to the spool in Redis (the
    SpoolWriter's work). A batch is always taken from the oldest place: the
    spool, then overflow, then memory. One batch is in flight at a time,
    which is what keeps order; `status` says what the drain is doing, and
    MOVES lists every change of it.

    When the memory part is full, a largest batch waits behind the one in
    flight, and the endpoint answers within
    `pushback` seconds, what limits the drain is this node, not the
    endpoint: then `holding()` asks the senders of the channel to wait
    (`wait()`, kept by the PushbackGate), rather than spool what the node
    itself could deliver.
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
        self.reactor = reactor
        # Where linger, retry and spill timers go: the node's DrainTicker
        # (one reactor timer for all drains), else the reactor itself.
        self.timers = timers if timers is not None else reactor
        self.metrics = metrics
        self.target_bytes = target_bytes
        # Batches of target_bytes while the drain keeps up, growing to
        # max_bytes while its queue is backed up.
        self.batch_size = BatchSize(target_bytes, max_bytes or target_bytes)
        self.linger = linger
        # Shared by a node's HTTP drains: a longer linger while they POST too often.
        self.pace = pace
        self.backoff = backoff or Backoff()
        self.max_age = max_age
        self.emit = emit
        self.queue = DrainQueue(capacity, reactor.seconds, on_lost=self._lost)
        # Spool chunks: what goes to Redis in one write, and what a batch
        # delivered from the spool is. Larger than a syslog drain's batches,
        # so a spool drains in few round trips; an HTTP drain's are its
        # largest batches (what it sends while backed up, as it is then).
        self.spooler = SpoolWriter(
            spool, self.queue, reactor.seconds, self.timers, chunk_bytes or self.batch_size.maximum,
            failing=lambda: self._status is _S.WAITING_TO_RETRY, protect=self._protected,
            on_error=self._error)
        self.spooler.allowance = spool_allowance
        self.gate = PushbackGate(pushback, reactor.seconds)
        self._status = _S.IDLE
        self.inflight: Batch | None = None
        self._timer = None  # the pump's while lingering, the retry's while waiting to retry
        self._pumping = False
        self._last_l14 = float("-inf")
        self.delivered = 0
        self.dropped = 0
        self.retried = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._labels = {"drain": str(drain.id)}

    # -- the state ---------------------------------------------------------------------------
    @property
    def status(self) -> DrainState:
        return self._status

    def _move(self, to: DrainState) -> None:
        """Every change of status goes through here, and only along MOVES."""
        if to is self._status:
            return
        if to not in MOVES[self._status]:
            raise AssertionError(f"drain {self.drain.id}: no move from {self._status.value} to {to.value}")
        self._status = to

    @property
    def stopped(self) -> bool:
        return self._status in _STOPPED

    # -- the spool (its writer keeps the counts and the order of operations) ---------------
    @property
    def spool(self) -> Spool | None:
        return self.spooler.spool

    @property
    def spool_chunks(self) -> int:
        return self.spooler.chunks

    @spool_chunks.setter
    def spool_chunks(self, n: int) -> None:
        self.spooler.chunks = n

    @property
    def spool_messages(self) -> int:
        return self.spooler.messages

    @spool_messages.setter
    def spool_messages(self, n: int) -> None:
        self.spooler.messages = n

    @property
    def spool_allowance(self) -> Callable[[], int] | None:
        """Bytes this drain's spool may hold given what the node's other spools hold; None: its own bound."""
        return self.spooler.allowance

    @spool_allowance.setter
    def spool_allowance(self, allowance: Callable[[], int] | None) -> None:
        self.spooler.allowance = allowance

    def _op(self, fn, *args) -> defer.Deferred:
        """Run a spool operation after every one asked for before it."""
        return self.spooler.run(fn, *args)

    def _protected(self) -> str:
        """The frame id of the spool chunk in flight ('' if none): no bound may drop it."""
        batch = self.inflight
        return batch.frame_id if batch is not None and batch.from_spool else ""

    def start(self) -> defer.Deferred:
        """Resume the spool a previous run of this node left behind."""
        if self.spool is None:
            return defer.succeed(None)

        def found(depth):
            chunks, messages = depth
            if chunks:
                log.info("drain_spool_resumed drain={drain} messages={n}", drain=self.drain.id, n=messages)
            self._kick()

        def failed(f):
            log.warn("drain_spool_unreadable drain={drain} error={e!r}", drain=self.drain.id,
                     e=f.getErrorMessage())

        return self.spooler.resume().addCallbacks(found, failed)

    # -- input ----------------------------------------------------------------------------
    def push(self, messages: list[bytes]) -> None:
        if self.stopped:
            return
        queue = self.queue
        queue.push(messages)
        if queue.overflow:
            # Senders held now, or about to be once this read is routed: what
            # overflowed waits for the endpoint rather than going to the spool.
            self.spooler.overflowed(holding=self.gate.holding_anyone or self.holding())
        self._kick()

    # -- pushback ---------------------------------------------------------------------------
    def holding(self) -> bool:
        """Whether the senders of this drain's channel should wait before sending more.

        Memory (--drain-buffer messages) is full, and a whole largest batch
        waits behind the one in flight: the most the next POST can take. Memory
        alone is too little to hold on: 1,024 lines of 200 bytes are 5 ms of a
        channel fed 200,000 lines a second, less than one 1 MiB POST is in
        flight, and senders held for every POST wait longer than the POST.
        """
        queue = self.queue
        return bool(queue.overflow) and queue.pending_bytes >= self.batch_size.maximum \
            and self._may_hold()

    def _may_hold(self) -> bool:
        """Pushback is on, and the endpoint is working and quick."""
        if self._status is _S.WAITING_TO_RETRY or self.stopped:
            return False
        if self.backoff.failures:
            return False  # a retry in flight: the endpoint has not worked since it failed
        return self.gate.quick(in_flight=self.inflight is not None)

    def wait(self) -> defer.Deferred:
        """Fires once this drain has room again, or has stopped holding anyone back."""
        return self.gate.wait()

    def forget(self, d: defer.Deferred) -> None:
        """A sender stopped waiting on its own (its hold timed out)."""
        self.gate.forget(d)

    def _release(self, force: bool = False) -> None:
        if not self.gate.holding_anyone:
            return
        queue = self.queue
        full = (queue.overflow or queue.half_full) and queue.pending_bytes > self.batch_size.maximum // 2
        if not force and full and self._may_hold():
            return  # half the buffer, and half a largest batch, must be free before senders go on
        self.gate.release()

    # -- the pump: idle -> lingering -> sending / reading the spool -------------------------------
    def _kick(self, direct: bool = False) -> None:
        """Schedule the next send: now if there is a full batch or a backlog, else after linger.

        direct: a batch just got through, so the next full one goes at once,
        not after another turn of the reactor (unless this is inside a send).
        """
        if self._status not in _READY:
            return
        queue = self.queue
        if self.spooler.chunks or queue.overflow or queue.memory_bytes >= self.target_bytes:
            delay = 0
        elif queue.memory:
            # Held senders cannot fill a batch: what there is goes at once.
            if self.gate.holding_anyone:
                delay = 0
            elif self._timer is not None and self._timer.active():
                return  # lingering already: a line more does not bring the send forward
            else:
                delay = self.linger if self.pace is None else self.pace.linger
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
        self._move(_S.LINGERING)

    def _pump(self) -> None:
        self._timer = None
        if self._status not in _READY:
            return
        self._pumping = True
        try:
            if self.spooler.chunks:
                self._reading_spool()
                self.spooler.run(self._from_spool).addErrback(self._spool_read_failed)
                return
            queue = self.queue
            # Less than a target batch waiting: the linger ran out (or held senders could not
            # fill it). Only such POSTs are the shared pace's to cut; full batches are as few
            # as the volume allows, and counting them would make a busy drain's last lines of
            # a burst wait up to the pace's 5 s cap.
            lingered = queue.pending_bytes < self.target_bytes
            messages = queue.take(self.batch_size.current)
            self.batch_size.taken(queue.pending_bytes)
            if messages:
                if lingered and self.pace is not None:
                    self.pace.posted()
                self._send(Batch(messages))
            else:
                self._move(_S.IDLE)
        finally:
            self._pumping = False

    # -- reading the spool ----------------------------------------------------------------------
    def _reading_spool(self) -> None:
        self.inflight = Batch([], from_spool=True)  # a placeholder: the read is in flight
        self.gate.sent()
        self._move(_S.READING_SPOOL)

    def _from_spool(self):
        return self.spool.head().addCallback(self._got_chunk)

    def _got_chunk(self, chunk: bytes | None) -> None:
        self.inflight = None
        if self.stopped:
            return
        if chunk is None:
            # The spool is empty (or was emptied from outside): carry on from memory.
            self.spooler.chunks = self.spooler.messages = 0
            self._move(_S.IDLE)
            self._kick()
            return
        frame_id, messages, created = decode_chunk(chunk)
        if self.reactor.seconds() - created > self.max_age:
            self.spooler.run(self.spool.ack, frame_id)
            self.spooler.taken_out(len(messages))
            self.queue.count_lost(len(messages), "spool age limit")
            self._move(_S.IDLE)
            self._kick()
            return
        self._send(Batch(messages, frame_id, from_spool=True))

    def _spool_read_failed(self, failure) -> None:
        self.inflight = None
        self._error(f"spool read failed: {failure.getErrorMessage()}")
        if not self.stopped:
            self._retry_in(self.backoff.next_delay())

    # -- sending --------------------------------------------------------------------------------
    def _send(self, batch: Batch) -> None:
        self.inflight = batch
        # Loss is told once, by an L10 at the head of the next delivery. A
        # retried batch keeps its messages and frame id; only its L10 count
        # grows if more was lost meanwhile, so the endpoint hears one total.
        batch.take_loss(self.queue)
        batch.attempts += 1
        self.gate.sent()
        self._move(_S.SENDING)
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
        self.gate.answered()
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
                self.spooler.taken_out(n)
                if self.spooler.chunks and not self.stopped:
                    # Ack this chunk and read the next in one round trip.
                    self._reading_spool()
                    self.spooler.run(self.spool.ack_next, batch.frame_id).addCallbacks(
                        self._got_chunk, self._spool_read_failed)
                    return
                self.spooler.run(self.spool.ack, batch.frame_id)
            self._move(_S.IDLE)
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
            self.spooler.run(self.spool.ack, batch.frame_id)
            self.spooler.taken_out(n)
        self._move(_S.IDLE)
        self._kick()

    # -- waiting to retry -----------------------------------------------------------------------
    def _retry_in(self, delay: float) -> None:
        self._move(_S.WAITING_TO_RETRY)
        self._release(force=True)
        # While we wait, what keeps arriving should go to the spool rather
        # than wait in memory.
        if self.queue.overflow:
            self.spooler.spill()
        self._timer = self.timers.callLater(delay, self._retry)

    def _retry(self) -> None:
        self._timer = None
        batch, self.inflight = self.inflight, None
        if self.stopped:
            return
        if batch is None or not batch.messages:
            self._move(_S.IDLE)
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
            "spool_depth": self.spooler.messages,
            "holding_senders": self.gate.holding_anyone,
        }

    # -- stopping -------------------------------------------------------------------------------
    def _stopping(self) -> None:
        self._move(_S.STOPPING)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._release(force=True)

    def _stopped(self, result):
        self._move(_S.STOPPED)
        return result

    def stop(self) -> defer.Deferred:
        """A graceful stop: everything held in memory goes to the spool, in order."""
        self._stopping()
        batch, self.inflight = self.inflight, None
        if batch is not None:
            self.queue.owe(batch.lost, batch.lost_since)
        d = self.spooler.stop(batch)
        return d.addCallback(lambda _: self.transport.stop()).addBoth(self._stopped)

    def discard(self) -> defer.Deferred:
        """The drain was deleted: stop and free its spool."""
        self._stopping()
        self.inflight = None
        self.spooler.discard()
        d = self.transport.stop()
        if self.spool is not None:
            d.addBoth(lambda _: self.spooler.run(self.spool.delete))
        return d.addBoth(self._stopped)
