"""Load gauges an operator can scale on: reactor lag, busy share of each worker, time senders are held.

CPU time is not one of them: a node that holds its senders back (pushback)
or waits on Redis idles in the poller while its senders wait, so its CPU
reads the same whether it keeps up or falls behind. What tells the two
apart is how late the reactor runs its timers (lag), how much of the wall
time it spends outside the poller (busy share), and how long senders are
held back, per listener.

Nothing here costs anything per message: lag and busy share are sampled by
timers, and a hold is timed once per held read or request.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterable

from twisted.logger import Logger

log = Logger()

Rows = Iterable[tuple[dict, float]]


class ReactorLag:
    """How late the reactor runs a timer due every `interval` seconds: the latest lateness and the worst of a window.

    A reactor that is busy (a long callback, a flood of reads) runs its
    timers late; the lateness is how far behind it runs, in seconds. The
    worst is kept over the last one to two `window`s, so that a scrape
    every `window` seconds sees every stall, however short.
    """

    def __init__(self, clock, interval: float = 0.1, window: float = 15.0) -> None:
        self.clock = clock
        self.interval = interval
        self.window = window
        self.latest = 0.0
        self._worst_now = 0.0  # worst of the window under way
        self._worst_before = 0.0  # worst of the window before it
        self._window_ends = 0.0
        self._due = 0.0
        self._call = None

    @property
    def worst(self) -> float:
        return max(self._worst_now, self._worst_before)

    def start(self) -> None:
        now = self.clock.seconds()
        self._window_ends = now + self.window
        self._schedule(now)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self.clock.seconds()
        lag = max(0.0, now - self._due)
        self.latest = lag
        if now >= self._window_ends:
            # A stall longer than a window is seen by the tick that ends it,
            # and counts in the window that tick opens.
            self._worst_before = self._worst_now
            self._worst_now = 0.0
            self._window_ends = now + self.window
        self._worst_now = max(self._worst_now, lag)
        self._schedule(now)


class BusyShare:
    """The share of wall time a worker spends working rather than waiting in the poller, per `interval`.

    Where the reactor's poller can be timed (epoll, poll: see
    `time_the_poller`), busy is the wall time outside the poller's wait;
    otherwise it falls back to CPU time over wall time. The CPU share is
    kept too, for comparison.
    """

    def __init__(self, clock, interval: float = 1.0, wall: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.clock = clock
        self.interval = interval
        self.wall = wall
        self.cpu = cpu
        self.busy = 0.0
        self.cpu_share = 0.0
        self.timed = False  # whether poller waits are reported through waited()
        self._waited = 0.0  # seconds waited in the poller since the last sample
        self._wall_at = 0.0
        self._cpu_at = 0.0
        self._call = None

    def waited(self, seconds: float) -> None:
        """The poller waited this long for I/O (called by a timed poller)."""
        self._waited += seconds

    def start(self) -> None:
        self._wall_at, self._cpu_at, self._waited = self.wall(), self.cpu(), 0.0
        self._call = self.clock.callLater(self.interval, self._sample)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _sample(self) -> None:
        wall, cpu = self.wall(), self.cpu()
        elapsed = wall - self._wall_at
        if elapsed > 0:
            self.cpu_share = _share(cpu - self._cpu_at, elapsed)
            self.busy = _share(elapsed - self._waited, elapsed) if self.timed else self.cpu_share
        self._wall_at, self._cpu_at, self._waited = wall, cpu, 0.0
        self._call = self.clock.callLater(self.interval, self._sample)


def _share(part: float, whole: float) -> float:
    return min(1.0, max(0.0, part / whole))


class _TimedPoller:
    """Stands in for a reactor's epoll/poll object, and reports how long each poll() waited."""

    def __init__(self, poller, waited: Callable[[float], None], wall: Callable[[], float]) -> None:
        self.poller = poller
        self._report = waited
        self._wall = wall
        # Registrations go straight to the real poller, at no extra cost.
        for name in ("register", "modify", "unregister", "close", "fileno"):
            if hasattr(poller, name):
                setattr(self, name, getattr(poller, name))

    def poll(self, *args, **kwargs):
        began = self._wall()
        try:
            return self.poller.poll(*args, **kwargs)
        finally:
            self._report(self._wall() - began)

    def __getattr__(self, name: str):
        return getattr(self.poller, name)


def time_the_poller(reactor, busy: BusyShare) -> Callable[[], None] | None:
    """Time the reactor's poller waits into busy; a function that undoes it, or None where it cannot.

    Twisted's epoll and poll reactors keep their poller in `_poller`, used
    only through its methods: a stand-in that times poll() costs two clock
    reads per reactor iteration, nothing per message.
    """
    poller = getattr(reactor, "_poller", None)
    if poller is None or not callable(getattr(poller, "poll", None)):
        return None
    timed = reactor._poller = _TimedPoller(poller, busy.waited, busy.wall)
    busy.timed = True

    def undo() -> None:
        # Only our own stand-in: another node in this process may have wrapped it since.
        if reactor._poller is timed:
            reactor._poller = poller
        busy.timed = False

    return undo


class HoldMeter:
    """Senders held back, per listener: how many holds, how many are held now, and for how long in all.

    The seconds include holds still under way, so a sender held for a
    minute shows in every scrape of that minute, not only at its end.
    """

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.holds: dict[str, int] = {}
        self.held_now: dict[str, int] = {}
        self._ended_seconds: dict[str, float] = {}
        self._started_sum: dict[str, float] = {}  # sum of the start times of holds under way

    def begin(self, listener: str) -> float:
        """A sender of this listener is held from now; give the result to end()."""
        started = self.now()
        self.holds[listener] = self.holds.get(listener, 0) + 1
        self.held_now[listener] = self.held_now.get(listener, 0) + 1
        self._started_sum[listener] = self._started_sum.get(listener, 0.0) + started
        return started

    def end(self, listener: str, started: float) -> None:
        self.held_now[listener] -= 1
        self._started_sum[listener] -= started
        self._ended_seconds[listener] = self._ended_seconds.get(listener, 0.0) + self.now() - started

    def seconds(self, listener: str) -> float:
        n = self.held_now.get(listener, 0)
        ongoing = n * self.now() - self._started_sum.get(listener, 0.0) if n else 0.0
        return self._ended_seconds.get(listener, 0.0) + max(0.0, ongoing)

    def expose(self, metrics) -> None:
        metrics.gauge_callback("logplex_ingress_holds_total",
                               lambda: [({"listener": k}, v) for k, v in self.holds.items()])
        metrics.gauge_callback("logplex_ingress_held",
                               lambda: [({"listener": k}, v) for k, v in self.held_now.items()])
        metrics.gauge_callback("logplex_ingress_held_seconds_total",
                               lambda: [({"listener": k}, self.seconds(k)) for k in self.holds])


class WorkerLoad:
    """This worker's lag and busy share on /metrics, with its sibling workers' under --workers.

    A scrape of a --workers node reaches whichever worker the kernel hands
    the connection to. So that every scrape shows every worker, each worker
    writes its figures to `<share_dir>/<worker>.json` every `interval`
    seconds and reads its siblings' at scrape time (files older than
    `stale_after` seconds belong to workers that are gone, and are left out).
    """

    def __init__(self, reactor, worker: str, share_dir: str | None = None, *,
                 lag_interval: float = 0.1, busy_interval: float = 1.0,
                 stale_after: float = 5.0, wall: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.worker = worker
        self.share_dir = share_dir
        self.stale_after = stale_after
        self.wall = wall
        self.lag = ReactorLag(reactor, lag_interval)
        self.busy = BusyShare(reactor, busy_interval)
        self._undo_poller = None
        self._share_call = None

    def start(self) -> None:
        self.lag.start()
        self.busy.start()
        self._undo_poller = time_the_poller(self.reactor, self.busy)
        if self.share_dir is not None:
            os.makedirs(self.share_dir, mode=0o700, exist_ok=True)
            self._share()

    def stop(self) -> None:
        self.lag.stop()
        self.busy.stop()
        if self._undo_poller is not None:
            self._undo_poller()
            self._undo_poller = None
        if self._share_call is not None and self._share_call.active():
            self._share_call.cancel()
        self._share_call = None
        if self.share_dir is not None:
            try:
                os.unlink(self._path(self.worker))
            except OSError:
                pass

    def figures(self) -> dict[str, float]:
        return {"lag": self.lag.latest, "lag_max": self.lag.worst, "busy": self.busy.busy,
                "cpu": self.busy.cpu_share}

    def _path(self, worker: str) -> str:
        return os.path.join(self.share_dir, worker.replace(os.sep, "_") + ".json")

    def _share(self) -> None:
        self.write()
        self._share_call = self.reactor.callLater(self.busy.interval, self._share)

    def write(self) -> None:
        """Write this worker's figures where its siblings read them."""
        path = self._path(self.worker)
        try:
            with open(path + ".tmp", "w") as f:
                json.dump({"worker": self.worker, "at": self.wall(), **self.figures()}, f)
            os.replace(path + ".tmp", path)  # a reader never sees half a file
        except OSError as e:
            log.warn("worker_load_not_shared path={path} error={e!r}", path=path, e=str(e))

    def all_figures(self) -> dict[str, dict[str, float]]:
        """worker -> figures, this worker's own fresh, its siblings' as they last wrote them."""
        out = {}
        if self.share_dir is not None:
            now = self.wall()
            try:
                names = os.listdir(self.share_dir)
            except OSError:
                names = []
            for name in names:
                if not name.endswith(".json"):
                    continue
                try:
                    with open(os.path.join(self.share_dir, name)) as f:
                        doc = json.load(f)
                    if now - float(doc["at"]) <= self.stale_after:
                        out[str(doc["worker"])] = {k: float(doc[k]) for k in ("lag", "lag_max", "busy", "cpu")}
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # a file being replaced, or not ours
        out[self.worker] = self.figures()
        return out

    def expose(self, metrics) -> None:
        for family, key in (("logplex_reactor_lag_seconds", "lag"),
                            ("logplex_reactor_lag_max_seconds", "lag_max"),
                            ("logplex_worker_busy_ratio", "busy"),
                            ("logplex_worker_cpu_ratio", "cpu")):
            metrics.gauge_callback(family, self._rows(key))

    def _rows(self, key: str) -> Callable[[], Rows]:
        # One directory read per family and scrape: four small reads every scrape.
        return lambda: [({"worker": w}, f[key]) for w, f in sorted(self.all_figures().items())]


def listener_name(kind: str, port) -> str:
    """A listener's label: its kind and the port it is bound to ("syslog:6514"), or its address."""
    host = port.getHost()
    return f"{kind}:{getattr(host, 'port', None) or getattr(host, 'name', '') or '?'}"
