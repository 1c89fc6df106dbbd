"""logplex.drains.policy: backoff, Retry-After and the shared linger (Pace), on a fake clock."""

import email.utils

from twisted.internet.task import Clock

from logplex.drains.policy import Backoff, Pace, parse_retry_after


def test_backoff_grows_with_jitter_to_its_cap_and_honours_retry_after():
    b = Backoff(initial=1.0, cap=30.0, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    low = Backoff(initial=1.0, cap=30.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(3)] == [0.5, 1, 2]
    assert b.next_delay(retry_after=7) == 7
    b.reset()
    assert b.next_delay() == 1


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after(b"12", 0) == 12
    date = email.utils.formatdate(1000.0 + 30, usegmt=True).encode()
    assert parse_retry_after(date, 1000.0) == 30
    assert parse_retry_after(b"soon", 0) is None and parse_retry_after(None, 0) is None


def test_pace_keeps_the_drains_own_linger_while_they_post_within_the_budget():
    clock = Clock()
    pace = Pace(0.25, budget=100, clock=clock.seconds)
    for _ in range(10):
        for _ in range(50):  # 50 POSTs a second, half the budget
            pace.posted()
        clock.advance(1.0)
    assert pace.linger == 0.25


def test_pace_lengthens_the_linger_while_the_drains_post_too_often_and_settles_near_the_budget():
    # 2,000 drains, each with a line every 0.1 s: each POSTs once per linger.
    clock, drains, budget = Clock(), 2000, 1000
    pace = Pace(0.25, budget=budget, clock=clock.seconds)
    rates = []
    for _ in range(30):
        posts = int(drains * 1.0 / pace.linger)  # each drain POSTs once per linger over the second
        for _ in range(posts):
            pace.posted()
        rates.append(posts)
        clock.advance(1.0)
    assert rates[0] == 8000
    assert all(budget * 0.8 <= r <= budget * 1.25 for r in rates[-10:]), rates
    assert 1.6 <= pace.linger <= 2.5  # 2,000 drains / 1,000 POSTs a second
    # The load goes away: back to the drains' own linger.
    clock.advance(1.0)
    assert pace.linger == 0.25


def test_pace_never_lingers_longer_than_its_cap():
    clock = Clock()
    pace = Pace(0.25, budget=10, clock=clock.seconds, cap=5.0)
    for _ in range(20):
        for _ in range(100_000):
            pace.posted()
        clock.advance(1.0)
    assert pace.linger == 5.0
