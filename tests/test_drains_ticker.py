"""The drains' shared timer on a Clock: never early, at most one step late, in order; drains on it keep order and linger."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from logplex.drains.policy import Backoff, Outcome
from logplex.drains.ticker import DrainTicker
from logplex.drains.worker import DrainWorker
from logplex.metrics import Metrics
from logplex.model import Drain
from tests.drain_doubles import Endpoint, MemorySpool, msg

STEP = 0.01
LINGER = 0.25


def test_a_call_runs_at_its_time_rounded_up_to_the_step_never_earlier():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    ran = []
    clock.advance(0.003)
    ticker.callLater(0.25, ran.append, "a")  # due at 0.253: runs at 0.26
    clock.advance(0.252)
    assert ran == []
    clock.advance(0.005)
    assert ran == ["a"]


def test_calls_due_within_one_step_run_in_one_reactor_call_in_the_order_made():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    ran = []
    for i in range(100):
        clock.advance(0.00005)
        ticker.callLater(0.1, ran.append, i)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.2)
    assert ran == list(range(100))
    assert ticker.reactor_timers == 1


def test_a_call_made_while_due_calls_run_comes_after_all_of_them():
    clock = Clock()
    ticker = DrainTicker(clock)
    ran = []

    def first():
        ran.append("first")
        ticker.callLater(0, ran.append, "made during")

    ticker.callLater(0, first)
    ticker.callLater(0, ran.append, "second")
    clock.advance(0)
    assert ran == ["first", "second", "made during"]


def test_cancelled_calls_never_run_and_leave_no_reactor_timer():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    ran = []
    calls = [ticker.callLater(1, ran.append, i) for i in range(500)]
    for call in calls:
        assert call.active()
        call.cancel()
        assert not call.active()
    assert ticker.pending() == 0
    assert clock.getDelayedCalls() == []
    clock.advance(2)
    assert ran == []


def test_a_call_cancelled_by_one_due_before_it_does_not_run():
    clock = Clock()
    ticker = DrainTicker(clock)
    ran = []
    calls = {}
    ticker.callLater(1, lambda: calls["later"].cancel())
    calls["later"] = ticker.callLater(1, ran.append, "cancelled")
    ticker.callLater(1, ran.append, "kept")
    clock.advance(1)
    assert ran == ["kept"]
    assert ticker.pending() == 0 and clock.getDelayedCalls() == []


def test_one_failing_call_does_not_stop_the_others():
    clock = Clock()
    ticker = DrainTicker(clock)
    ran = []
    ticker.callLater(0, lambda: 1 / 0)
    ticker.callLater(0, ran.append, "after")
    clock.advance(0)
    assert ran == ["after"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2), st.floats(0, 3)), min_size=1, max_size=60),
       st.sets(st.integers(0, 59)))
def test_every_call_not_cancelled_runs_once_within_one_step_of_its_time(plan, cancelled):
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    ran: dict[int, float] = {}
    due: dict[int, float] = {}
    calls = []
    cancelled_in_time = set()
    for i, (at, delay) in enumerate(sorted(plan)):
        while clock.seconds() + 0.001 < at:
            clock.advance(0.001)  # time passes in small steps, as on a reactor
        due[i] = clock.seconds() + delay
        calls.append(ticker.callLater(delay, lambda i=i: ran.setdefault(i, clock.seconds())))
        if i in cancelled:
            victim = i // 2  # this call, or one made before it
            if victim not in ran and victim not in cancelled_in_time:
                calls[victim].cancel()
                cancelled_in_time.add(victim)
    while clock.seconds() < 6:
        clock.advance(0.001)
    expected = set(range(len(calls))) - cancelled_in_time
    assert set(ran) == expected
    assert clock.getDelayedCalls() == []
    for i in expected:
        assert due[i] - 1e-9 <= ran[i] <= due[i] + STEP + 0.0011


# -- drains on one ticker -------------------------------------------------------------------------
def make_drains(n: int, clock: Clock, ticker: DrainTicker):
    drains = []
    for i in range(n):
        endpoint = Endpoint()
        worker = DrainWorker(Drain(i + 1, f"ch-{i}", f"d.{i}", f"https://logs.example.com/{i}"), endpoint,
                             MemorySpool(), clock, Metrics(), capacity=1024, target_bytes=4000, linger=LINGER,
                             backoff=Backoff(initial=0.5, cap=30, rand=lambda: 0.5), timers=ticker)
        worker.start()
        drains.append((worker, endpoint))
    return drains


def test_200_drains_on_one_ticker_keep_their_order_and_linger_with_one_reactor_timer():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    drains = make_drains(200, clock, ticker)
    rng = random.Random(14)
    sent: list[list[bytes]] = [[] for _ in drains]
    first_line_at: dict[int, float] = {}
    first_batch_at: dict[int, float] = {}
    # Two seconds of a few lines a second per drain, at random moments.
    for _ in range(2000):
        for i in rng.sample(range(len(drains)), 3):
            line = msg(len(sent[i]))
            sent[i].append(line)
            first_line_at.setdefault(i, clock.seconds())
            drains[i][0].push([line])
        # However many drains linger, the reactor holds one timer for them.
        assert len(clock.getDelayedCalls()) <= 1
        clock.advance(0.001)
        for i in first_line_at:
            if i not in first_batch_at and drains[i][1].sent:
                first_batch_at[i] = clock.seconds()
    clock.advance(1)
    for i, (worker, endpoint) in enumerate(drains):
        assert endpoint.delivered() == sent[i], f"drain {i} delivered out of order or lost lines"
    for i, at in first_batch_at.items():
        # Its first batch waited its linger from its first line, and at most one step (and one
        # of this loop's 1 ms advances) more.
        assert first_line_at[i] + LINGER - 1e-9 <= at <= first_line_at[i] + LINGER + STEP + 0.001
        assert len(drains[i][1].sent[0][1]) >= 1


def test_a_drain_sends_its_first_batch_after_its_linger_and_within_a_step_of_it():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    (worker, endpoint), = make_drains(1, clock, ticker)
    clock.advance(0.1234)
    worker.push([msg(1)])
    clock.advance(LINGER - 0.0001)
    assert endpoint.sent == []
    clock.advance(STEP + 0.0001)
    assert [m for _, m, _ in endpoint.sent] == [[msg(1)]]


def test_drains_that_got_nothing_arm_nothing():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    drains = make_drains(1000, clock, ticker)
    clock.advance(1)
    assert ticker.pending() == 0 and clock.getDelayedCalls() == []
    drains[7][0].push([msg(1)])
    # One drain got a line: one entry on the ticker, one reactor timer.
    assert ticker.pending() == 1 and len(clock.getDelayedCalls()) == 1
    clock.advance(1)
    assert [m for _, m, _ in drains[7][1].sent] == [[msg(1)]]
    assert ticker.pending() == 0 and clock.getDelayedCalls() == []
    assert all(not endpoint.sent for n, (_, endpoint) in enumerate(drains) if n != 7)


def test_a_failing_drain_retries_on_the_ticker_and_its_neighbours_go_on():
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    (bad, bad_end), (good, good_end) = make_drains(2, clock, ticker)
    bad_end.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    bad.push([msg(1)])
    good.push([msg(2)])
    clock.advance(LINGER + STEP)
    assert good_end.delivered() == [msg(2)]
    assert len(bad_end.sent) == 1
    bad_end.answer = Outcome.ok()
    clock.advance(0.5 * 0.75 + STEP)  # Backoff(initial=0.5, rand=0.5): 0.375 s
    assert bad_end.delivered() == [msg(1)]


def test_a_call_due_at_once_is_not_held_to_the_grid():
    # A full batch goes on the next turn of the reactor, not up to a step later.
    clock = Clock()
    ticker = DrainTicker(clock, resolution=STEP)
    ran = []
    clock.advance(0.003)
    ticker.callLater(0, ran.append, "now")
    ticker.callLater(0, ran.append, "also now")
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0.003]
    clock.advance(0)
    assert ran == ["now", "also now"]
