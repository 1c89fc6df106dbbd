"""A drain's side of its spool: every operation on it in order, its counts, and the spill of overflow in chunks.

The worker hands it what memory could not hold (the queue's overflow); it
writes that to the spool (logplex.drains.spool) a chunk at a time, and runs
the worker's reads and acks of the spool in the same line, so that they land
in the order they were asked for and the counts here stay exact.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.python.failure import Failure

from logplex.drains.formats import encode_chunk
from logplex.drains.queue import Batch, DrainQueue, fitting
from logplex.drains.spool import Spool

# How long overflow short of a chunk may wait for more before it is looked at again.
SPILL_DELAY = 1.0


class SpoolWriter:
    """Moves a drain's overflow to its spool in order, one chunk in flight, and counts what the spool holds.

    `chunks` and `messages` are what this node put in the spool and has not
    yet taken out (a batch in flight from the spool is counted until acked).
    """

    def __init__(self, spool: Spool | None, queue: DrainQueue, clock: Callable[[], float], timers,
                 chunk_bytes: int, *, failing: Callable[[], bool], protect: Callable[[], str],
                 on_error: Callable[[str], None]) -> None:
        self.spool = spool
        self.queue = queue
        self.clock = clock
        # Where the spill timer goes: the node's DrainTicker, or a reactor.
        self.timers = timers
        self.chunk_bytes = chunk_bytes
        # Whether the endpoint is failing now: then a chunk less than full goes too.
        self.failing = failing
        # The frame id of the spool chunk being delivered ('' if none): a bound never drops it.
        self.protect = protect
        self.on_error = on_error
        # Bytes this spool may hold given what the node's other spools hold
        # (--drain-spool-total-bytes); None: only its own bound.
        self.allowance: Callable[[], int] | None = None
        self.chunks = 0
        self.messages = 0
        self.stopped = False
        self._ops: defer.Deferred = defer.succeed(None)
        self._spilling = False
        self._timer = None

    def run(self, fn, *args) -> defer.Deferred:
        """Run fn(*args) once every operation asked for before it is done; fires with its result."""
        result = defer.Deferred()

        def run(_):
            d = defer.maybeDeferred(fn, *args)
            d.addBoth(lambda r: result.callback(r) if not isinstance(r, Failure) else result.errback(r))
            return d.addErrback(lambda _: None)

        self._ops.addCallback(run)
        return result

    def resume(self) -> defer.Deferred:
        """Count what a previous run of this node left in the spool; fires with (chunks, messages)."""
        def found(depth):
            self.chunks, self.messages = depth
            return depth

        return self.run(self.spool.depth).addCallback(found)

    def taken_out(self, n: int) -> None:
        """A chunk of n messages left the spool (delivered, refused or too old)."""
        self.chunks = max(0, self.chunks - 1)
        self.messages = max(0, self.messages - n)

    def moved_in(self, chunks: int, messages: int) -> None:
        """Chunks arrived in the spool from elsewhere (an adopted spool)."""
        self.chunks += chunks
        self.messages += messages

    # -- spilling ------------------------------------------------------------------------------
    def overflowed(self, holding: bool) -> None:
        """The queue has overflow: a full chunk of it goes now, less waits a little for more.

        holding: senders are held back; what they had in flight lands in
        overflow and waits for the endpoint, not for the spool.
        """
        threshold = self.chunk_bytes * (4 if holding else 1)
        if self.queue.overflow_bytes >= threshold:
            self.spill()
        elif self._timer is None:
            self._timer = self.timers.callLater(SPILL_DELAY, self.spill)

    def spill(self) -> None:
        """Move overflow to the spool, one chunk in flight at a time.

        One at a time is what keeps order when a write fails: the chunk goes
        back in front of overflow, and nothing newer has left overflow since,
        because the pump reads the spool while a chunk is counted in it.
        """
        self.cancel_timer()
        if self._spilling or self.stopped or self.spool is None:
            return
        queue = self.queue
        # A full chunk always goes; a partial one only while the endpoint is
        # failing (when it works, the pump takes overflow directly).
        if not (queue.overflow_bytes >= self.chunk_bytes or (queue.overflow and self.failing())):
            return
        self._spilling = True
        d = self.write(queue.take_overflow(self.chunk_bytes))
        d.addCallback(self._spilled)

    def _spilled(self, ok: bool) -> None:
        self._spilling = False
        if ok:
            self.spill()
        elif not self.stopped and self._timer is None:
            self._timer = self.timers.callLater(SPILL_DELAY, self.spill)

    def write(self, messages: list[bytes], at_head: bool = False, frame_id: str | None = None) -> defer.Deferred:
        """Write one chunk to the spool; fires True when it is there."""
        if not messages:
            return defer.succeed(True)
        batch = Batch(messages) if frame_id is None else Batch(messages, frame_id)
        chunk = encode_chunk(messages, batch.frame_id, self.clock())
        self.chunks += 1
        self.messages += len(messages)

        def pushed(dropped):
            self.queue.degraded = False
            if dropped:
                self.messages -= dropped
                self.queue.count_lost(dropped, "spool full")
            return True

        def failed(f):
            self.chunks -= 1
            self.messages -= len(messages)
            self.on_error(f"spool write failed: {f.getErrorMessage()}")
            if self.stopped:
                self.queue.count_lost(len(messages), "spool unavailable at stop")
            else:
                self.queue.degraded = True
                self.queue.return_overflow(messages)
            return False

        def push():
            # Decided when the write runs, not when it was queued.
            allowance = self.allowance() if self.allowance is not None else None
            return self.spool.push(chunk, len(messages), at_head, self.protect(), allowance)

        return self.run(push).addCallbacks(pushed, failed)

    # -- the end ----------------------------------------------------------------------------------
    def cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def stop(self, unsent: Batch | None) -> defer.Deferred:
        """Spill everything held, in order: `unsent` (the batch that was in flight) first; fires when written."""
        self.stopped = True
        self.cancel_timer()
        if unsent is not None and unsent.messages and not unsent.from_spool:
            # Older than anything spooled: it goes back in front, under its
            # frame id, so a receiver can tell a repeat.
            self.write(unsent.messages, at_head=True, frame_id=unsent.frame_id)
        held = self.queue.drain_all()
        start, left = 0, sum(map(len, held))
        while start < len(held):
            n, size = fitting(held[start:], self.chunk_bytes, left)
            self.write(held[start:start + n])
            start, left = start + n, left - size
        d = defer.Deferred()
        self._ops.addBoth(lambda _: d.callback(None))
        return d

    def discard(self) -> None:
        """Stop writing, and forget what is held (the drain was deleted)."""
        self.stopped = True
        self.cancel_timer()
        self.queue.drain_all()
