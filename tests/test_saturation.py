"""Load gauges on a Clock: reactor lag, busy share, time held per listener, and their exposition."""

from __future__ import annotations

import ast
import pathlib
import re

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from logplex.framing import octet_frame
from logplex.ingest.syslog import SyslogFactory
from logplex.metrics import DECLARED, Metrics
from logplex.saturation import BusyShare, HoldMeter, ReactorLag, WorkerLoad, time_the_poller
from logplex.settings import ListenSettings


# -- reactor lag -----------------------------------------------------------------------------
def test_lag_is_zero_while_timers_run_on_time():
    clock = Clock()
    lag = ReactorLag(clock, interval=0.1, window=15)
    lag.start()
    clock.pump([0.1] * 50)
    assert lag.latest == 0.0
    assert lag.worst == 0.0


def test_a_stall_shows_as_lag_and_as_the_worst_until_two_windows_pass():
    clock = Clock()
    lag = ReactorLag(clock, interval=0.1, window=15)
    lag.start()
    clock.pump([0.1] * 10)
    # The reactor is stuck for 0.6 s: the timer due 0.1 s on runs 0.5 s late.
    clock.advance(0.6)
    assert abs(lag.latest - 0.5) < 1e-9
    clock.advance(0.1)
    assert lag.latest == 0.0  # back on time
    assert abs(lag.worst - 0.5) < 1e-9
    clock.pump([0.1] * 140)  # to the end of the first window
    assert abs(lag.worst - 0.5) < 1e-9
    clock.pump([0.1] * 160)  # a whole window on time since
    assert lag.worst == 0.0


def test_lag_stops_with_its_timer():
    clock = Clock()
    lag = ReactorLag(clock)
    lag.start()
    lag.stop()
    assert clock.getDelayedCalls() == []


# -- busy share ------------------------------------------------------------------------------
class FakeCpu:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def test_busy_is_wall_time_outside_the_poller_wait():
    clock, cpu = Clock(), FakeCpu()
    busy = BusyShare(clock, interval=1.0, wall=clock.seconds, cpu=cpu)
    busy.timed = True
    busy.start()
    busy.waited(0.75)
    cpu.seconds = 0.2
    clock.advance(1.0)
    assert abs(busy.busy - 0.25) < 1e-9
    assert abs(busy.cpu_share - 0.2) < 1e-9
    # A second in which the poller never waited: nothing spare.
    cpu.seconds = 1.1
    clock.advance(1.0)
    assert busy.busy == 1.0
    assert abs(busy.cpu_share - 0.9) < 1e-9


def test_busy_falls_back_to_cpu_share_where_the_poller_is_not_timed():
    clock, cpu = Clock(), FakeCpu()
    busy = BusyShare(clock, interval=1.0, wall=clock.seconds, cpu=cpu)
    busy.start()
    cpu.seconds = 0.4
    clock.advance(1.0)
    assert abs(busy.busy - 0.4) < 1e-9


class FakePoller:
    """An epoll double whose poll() takes as long as the test says, on the test's wall clock."""

    def __init__(self, clock: Clock, takes: float) -> None:
        self.clock = clock
        self.takes = takes
        self.registered: list[int] = []

    def poll(self, timeout=-1, maxevents=-1):
        self.clock.advance(self.takes)
        return []

    def register(self, fd, flags=0):
        self.registered.append(fd)


class FakeReactor:
    def __init__(self, poller) -> None:
        self._poller = poller


def test_a_timed_poller_reports_its_waits_and_is_undone():
    wall = Clock()
    poller = FakePoller(wall, takes=0.3)
    reactor = FakeReactor(poller)
    busy = BusyShare(Clock(), wall=wall.seconds)
    undo = time_the_poller(reactor, busy)
    assert undo is not None and busy.timed
    assert reactor._poller.poll(1.0, 10) == []
    reactor._poller.register(5)
    assert poller.registered == [5]
    assert abs(busy._waited - 0.3) < 1e-9
    undo()
    assert reactor._poller is poller and not busy.timed


def test_a_reactor_without_a_poller_is_left_alone():
    busy = BusyShare(Clock())
    assert time_the_poller(Clock(), busy) is None
    assert not busy.timed


# -- held senders ----------------------------------------------------------------------------
def test_held_seconds_count_holds_under_way():
    clock = Clock()
    holds = HoldMeter(clock.seconds)
    a = holds.begin("syslog:6514")
    clock.advance(2)
    b = holds.begin("syslog:6514")
    clock.advance(1)
    assert holds.held_now["syslog:6514"] == 2
    assert holds.seconds("syslog:6514") == 3 + 1
    holds.end("syslog:6514", a)
    clock.advance(1)
    holds.end("syslog:6514", b)
    clock.advance(5)
    assert holds.seconds("syslog:6514") == 3 + 2
    assert holds.held_now["syslog:6514"] == 0
    assert holds.holds["syslog:6514"] == 2


class HoldingRouter:
    """Routes nothing; every read is held until the test fires the Deferred."""

    def __init__(self) -> None:
        self.holds: list[defer.Deferred] = []

    def route_held(self, messages, route=None):
        d = defer.Deferred()
        self.holds.append(d)
        return d


def held_connection(clock: Clock, holds: HoldMeter):
    router = HoldingRouter()
    factory = SyslogFactory(router, Metrics(), ListenSettings().max_frame, clock=clock, holds=holds, label=lambda: "syslog:6514")
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(octet_frame(b"<13>1 - h app p - - hi"))
    return router, protocol, transport


def test_a_syslog_sender_held_shows_under_its_listener_until_reading_resumes():
    clock = Clock()
    holds = HoldMeter(clock.seconds)
    metrics = Metrics()
    holds.expose(metrics)
    router, protocol, transport = held_connection(clock, holds)
    assert transport.producerState == "paused"
    clock.advance(1.5)
    text = metrics.exposition().decode()
    assert 'logplex_ingress_held{listener="syslog:6514"} 1\n' in text
    assert 'logplex_ingress_held_seconds_total{listener="syslog:6514"} 1.5\n' in text
    router.holds[0].callback(None)
    clock.advance(10)
    assert transport.producerState == "producing"
    text = metrics.exposition().decode()
    assert 'logplex_ingress_held{listener="syslog:6514"} 0\n' in text
    assert 'logplex_ingress_held_seconds_total{listener="syslog:6514"} 1.5\n' in text
    assert 'logplex_ingress_holds_total{listener="syslog:6514"} 1\n' in text


def test_a_held_sender_that_hangs_up_stops_counting_at_once():
    clock = Clock()
    holds = HoldMeter(clock.seconds)
    router, protocol, transport = held_connection(clock, holds)
    clock.advance(1)
    protocol.connectionLost(None)
    clock.advance(5)
    router.holds[0].callback(None)  # the hold ends later: counted once, up to the hang-up
    assert holds.held_now["syslog:6514"] == 0
    assert holds.seconds("syslog:6514") == 1


# -- per worker, and the exposition ----------------------------------------------------------
def test_each_worker_shows_its_siblings_figures_and_not_those_of_workers_gone(tmp_path):
    clock = Clock()
    now = [1000.0]
    a = WorkerLoad(clock, "n-0", str(tmp_path), wall=lambda: now[0])
    b = WorkerLoad(clock, "n-1", str(tmp_path), wall=lambda: now[0])
    gone = WorkerLoad(clock, "n-2", str(tmp_path), wall=lambda: now[0] - 60)
    for load in (a, b, gone):
        load.start()
    clock.pump([0.1] * 10)
    b.busy.busy = 0.75
    b.write()
    metrics = Metrics()
    a.expose(metrics)
    text = metrics.exposition().decode()
    assert 'logplex_worker_busy_ratio{worker="n-1"} 0.75\n' in text
    assert 'logplex_reactor_lag_seconds{worker="n-0"} 0\n' in text
    assert 'worker="n-2"' not in text
    for load in (a, b, gone):
        load.stop()
    assert list(tmp_path.iterdir()) == []


def test_a_single_process_node_shows_itself_only(tmp_path):
    clock = Clock()
    load = WorkerLoad(clock, "solo")
    load.start()
    metrics = Metrics()
    load.expose(metrics)
    text = metrics.exposition().decode()
    assert 'logplex_worker_busy_ratio{worker="solo"} 0\n' in text
    assert "# TYPE logplex_reactor_lag_max_seconds gauge\n" in text
    load.stop()
    assert clock.getDelayedCalls() == []


def test_every_metric_the_code_names_is_declared():
    # A metric not in DECLARED has no HELP or TYPE, and is missing from
    # /metrics until it is first counted: an operator's alert on it sees nothing.
    root = pathlib.Path(__file__).parent.parent / "logplex"
    named = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"logplex_[a-z0-9_]+", node.value):
                named.add(node.value)
    assert named - set(DECLARED) == set()
