"""The cache, sans-IO: which config a node adopts, the diff a load reads pages into, and the
driver that runs long jobs a budget per reactor turn (on a Clock)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st
from twisted.internet.task import Clock

from logplex.config.cache import (
    EMPTY,
    FOREIGN,
    OLDER,
    Cooperation,
    Generation,
    Snapshot,
    SnapshotDiff,
    judge,
    refusal_sentence,
)
from logplex.errors import ConfigError
from logplex.model import Channel


def channel_page(n: int) -> bytes:
    """Channels app-00000… as one page of the page script: key, record, key, record…"""
    ids = [f"app-{i:05d}" for i in range(n)]
    return ("[" + ",".join(json.dumps(i) + "," + Channel(i, incarnation="i").to_json() for i in ids) + "]").encode()


def test_the_cache_loads_neither_a_redis_client_nor_the_reactor():
    probe = ("import sys, logplex.config.cache; "
             "print('txredisapi' in sys.modules, 'twisted.internet.reactor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- which config a node adopts -------------------------------------------------------------

HELD = Generation(b"ours", epoch=1, version=40)


def test_a_node_that_holds_nothing_adopts_anything():
    assert judge(None, Generation(None)) is None
    assert judge(None, Generation(b"theirs", 3, 7)) is None


def test_a_node_that_holds_a_config_refuses_an_empty_foreign_or_older_one():
    assert judge(HELD, Generation(None)) == EMPTY
    # A Redis restarted empty and written to once by a node that had not noticed yet.
    assert judge(HELD, Generation(None, 0, 1)) == EMPTY
    assert judge(HELD, Generation(b"theirs", 1, 40)) == FOREIGN
    assert judge(HELD, Generation(b"ours", 1, 39)) == OLDER
    assert judge(HELD, Generation(b"ours", 0, 900)) == OLDER  # before the last re-seed
    assert judge(HELD, Generation(b"ours", 1, 40)) is None
    assert judge(HELD, Generation(b"ours", 1, 41)) is None
    assert judge(HELD, Generation(b"ours", 2, 1)) is None  # re-seeded by another node


@given(st.integers(0, 5), st.integers(0, 10**6), st.integers(0, 5), st.integers(0, 10**6))
def test_a_node_adopts_exactly_the_generations_not_below_its_own(he, hv, fe, fv):
    held, found = Generation(b"c", he, hv), Generation(b"c", fe, fv)
    assert (judge(held, found) is None) == ((fe, fv) >= (he, hv))


def test_the_refusal_says_what_was_found_and_what_happens_next():
    sentence = refusal_sentence(EMPTY, HELD, Generation(None))
    assert "lost the cluster's config" in sentence and "re-seeds it" in sentence
    sentence = refusal_sentence(FOREIGN, HELD, Generation(b"theirs", 1, 1))
    assert "'theirs'" in sentence and "--config-redis" in sentence
    assert "generation 0.3, this node holds 1.40" in refusal_sentence(OLDER, HELD, Generation(b"ours", 0, 3))


# -- the driver ---------------------------------------------------------------------

def test_a_job_runs_at_once_while_it_fits_in_the_budget():
    clock, now = Clock(), [0.0]
    done = Cooperation(clock, budget=0.01, timer=lambda: now[0]).run(iter(range(100)))
    assert done.called


def test_a_long_job_gives_the_reactor_back_once_a_turn_used_its_budget():
    clock, now, per_turn = Clock(), [0.0], []

    def job():
        for _ in range(100):
            now[0] += 0.003  # each unit takes 3 ms
            per_turn[-1] += 1
            yield

    cooperation = Cooperation(clock, budget=0.01, timer=lambda: now[0])
    per_turn.append(0)
    done = cooperation.run(job())
    turns = 0
    while not done.called:
        per_turn.append(0)
        clock.advance(0.001)
        turns += 1
    # 10 ms a turn: 4 units of 3 ms (the one that crosses the budget ends the turn),
    # and one more turn to find that the job is over.
    assert max(per_turn) == 4 and sum(per_turn) == 100 and turns == 25


def test_jobs_side_by_side_share_one_budget_per_turn():
    clock, now, per_turn = Clock(), [0.0], [0]

    def job():
        for _ in range(40):
            now[0] += 0.003
            per_turn[-1] += 1
            yield

    cooperation = Cooperation(clock, budget=0.01, timer=lambda: now[0])
    first = cooperation.run(job())
    second = cooperation.run(job())  # waits for the turn the first one goes on in
    while not (first.called and second.called):
        per_turn.append(0)
        clock.advance(0.001)
    assert max(per_turn) == 4 and sum(per_turn) == 80


def test_a_job_that_fails_fails_its_deferred():
    def job():
        yield
        raise ValueError("broken record")

    clock = Clock()
    done = Cooperation(clock, budget=0.0).run(job())
    clock.advance(0.001)
    assert isinstance(done.result.value, ValueError)
    done.addErrback(lambda f: None)


# -- the diff ---------------------------------------------------------------------------

def test_reading_a_page_takes_at_most_a_slice_of_records_per_unit():
    page = channel_page(1000)
    diff = SnapshotDiff(Snapshot(), per_slice=30)
    taken = []
    for _ in diff.read_channels(page):
        taken.append(diff.records - sum(taken))
    assert sum(taken) == 1000 and max(taken) <= 30


def test_a_record_that_is_not_json_is_refused_with_a_sentence():
    diff = SnapshotDiff(Snapshot())
    with pytest.raises(ConfigError, match="channels hash holds a record this node cannot read"):
        list(diff.read_channels(b'["app", {"flags": []}, "bad", not json]'))
