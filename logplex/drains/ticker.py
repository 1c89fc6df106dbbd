"""One reactor timer for every drain of a node: lingers, retries and HTTP timeouts share it."""

from __future__ import annotations

import heapq
import math
from itertools import count
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger()


class Call:
    """A call the ticker will make, shaped like the reactor's DelayedCall where drains use it."""

    __slots__ = ("time", "fn", "args", "ticker")

    def __init__(self, time: float, fn: Callable[..., Any] | None, args: tuple, ticker: DrainTicker) -> None:
        self.time = time
        self.fn = fn
        self.args = args
        self.ticker = ticker

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return self.fn is not None

    def cancel(self) -> None:
        if self.fn is not None:
            self.fn = None
            self.args = ()
            if self.ticker is not None:  # still in the heap (not taken for running)
                self.ticker._cancelled()


class DrainTicker:
    """Runs every drain's timed work off one reactor timer, due calls together, in the order they fell due.

    At 1,000 drains of a few lines a second each, one reactor DelayedCall per
    drain per linger (and per request timeout, and per pooled connection)
    means thousands of timers a second, each a heap operation in the reactor
    and a cancel most of the time. Here a call is a small heap entry; the
    reactor holds one timer, at the earliest entry rounded up to
    `resolution` seconds, so entries that fall due within one resolution
    step run in one reactor call. A call is never run early; it may run up
    to `resolution` late, except one due at once (a full batch), which runs
    on the reactor's next turn. Calls due at the same moment run in the order
    they were made. A call made while due calls run, for now, runs after
    all of them, from a new reactor timer (on a real reactor: its next turn,
    as callLater(0) would).

    It offers callLater and seconds, the part of IReactorTime that drains,
    the HTTP client and its connection pool use.
    """

    def __init__(self, reactor: IReactorTime, resolution: float = 0.0) -> None:
        self.reactor = reactor
        self.resolution = resolution
        self._heap: list[tuple[float, int, Call]] = []
        self._order = count()
        self._dead = 0  # cancelled calls still in the heap
        self._timer = None
        self._timer_at = math.inf
        self._running = False
        self.reactor_timers = 0  # reactor timers this ticker armed: a bench reads it

    def seconds(self) -> float:
        return self.reactor.seconds()

    def callLater(self, delay: float, fn: Callable[..., Any], *args: Any) -> Call:
        now = self.reactor.seconds()
        call = Call(now + max(delay, 0.0), fn, args, self)
        heapq.heappush(self._heap, (call.time, next(self._order), call))
        if not self._running:
            self._arm(call.time)
        return call

    def pending(self) -> int:
        """Calls waiting to be made (not cancelled)."""
        return len(self._heap) - self._dead

    def _cancelled(self) -> None:
        self._dead += 1
        if self._dead == len(self._heap):
            # Nothing left to run: no reactor timer either (a reactor with
            # none pending is what a test, or a clean stop, expects).
            self._heap.clear()
            self._dead = 0
            if not self._running and self._timer is not None and self._timer.active():
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf
            return
        # Cancelled entries are dropped when they come up; a heap mostly of
        # them (linger timers cut short by full batches) is rebuilt instead.
        if self._dead > 64 and self._dead * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].fn is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def _arm(self, when: float) -> None:
        res = self.resolution
        now = self.reactor.seconds()
        if res and when > now:
            # Up to the next step of the grid, so that calls a little apart
            # share one reactor timer; never before the call's own time. A
            # call due now (a full batch) is not delayed: it goes on the
            # reactor's next turn, with every other call due by then.
            when = max(when, math.ceil(when / res - 1e-9) * res)
        if when >= self._timer_at:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer_at = when
        self.reactor_timers += 1
        self._timer = self.reactor.callLater(max(0.0, when - now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self.reactor.seconds()
        heap = self._heap
        due = []
        while heap and heap[0][0] <= now:
            call = heapq.heappop(heap)[2]
            if call.fn is None:
                self._dead -= 1
            else:
                call.ticker = None
                due.append(call)
        self._running = True
        try:
            for call in due:
                fn, args = call.fn, call.args
                if fn is None:
                    continue  # cancelled by a call made before it in this round
                call.fn, call.args = None, ()
                try:
                    fn(*args)
                except Exception:
                    # One drain's fault must not stop the others' timers.
                    log.failure("drain_timer_failed")
        finally:
            self._running = False
            self._skip_dead()
            if heap:
                self._arm(heap[0][0])

    def _skip_dead(self) -> None:
        heap = self._heap
        while heap and heap[0][2].fn is None:
            heapq.heappop(heap)
            self._dead -= 1

    def stop(self) -> None:
        """Cancel every call and the reactor timer."""
        for _, _, call in self._heap:
            call.fn, call.args = None, ()
        self._heap.clear()
        self._dead = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf
