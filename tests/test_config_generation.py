"""Which config a node adopts (sans-IO), and spools that only an API tombstone deletes (on a Clock)."""

from types import SimpleNamespace

from hypothesis import given, strategies as st
from twisted.internet.task import Clock

from logplex.drains.policy import Backoff, Outcome
from logplex.drains.supervisor import DrainSettings, DrainSupervisor
from logplex.drains.worker import DrainWorker
from logplex.metrics import Metrics
from logplex.model import Drain
from logplex.config.store import EMPTY, FOREIGN, OLDER, Generation, judge, refusal_sentence
from logplex.redis.keys import RedisKeys
from tests.drain_doubles import Endpoint, MemorySpool, msg

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


def supervisor_with_a_spooling_drain():
    """A supervisor whose drain 7 (channel app) has spooled; the store double has no drains left."""
    clock = Clock()
    store = SimpleNamespace(drain_listeners=[], tombstone_listeners=[], tombstones={},
                            cache=SimpleNamespace(channel_drains={"app": {}}))
    supervisor = DrainSupervisor(store, SimpleNamespace(on_change=[]), Metrics(), clock, "node-1",
                                 DrainSettings(), http_client=None, keys=RedisKeys("lp", 0))
    store.tombstone_listeners.append(supervisor.tombstoned)
    endpoint = Endpoint()
    endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    worker = DrainWorker(Drain(7, "app", "d.tok", "https://logs.example.com/"), endpoint, MemorySpool(),
                         clock, Metrics(), capacity=10, target_bytes=4000,
                         backoff=Backoff(initial=0.5, cap=30, rand=lambda: 0.5))
    supervisor.workers[7] = worker
    supervisor.by_channel["app"] = [worker]
    worker.start()
    for n in range(0, 100, 20):
        worker.push([msg(i) for i in range(n, n + 20)])
        clock.advance(1)
    assert worker.spool.chunks
    return supervisor, store, worker


def test_a_drain_that_vanishes_without_a_tombstone_keeps_its_spool_until_one_comes():
    supervisor, store, worker = supervisor_with_a_spooling_drain()
    supervisor.sync("app")  # a reload that no longer shows the drain (the config Redis lost it)
    assert 7 not in supervisor.workers and worker.stopped
    assert worker.spool.chunks, "the spool was deleted without a tombstone"
    assert supervisor.kept == {7: worker}
    # Deleted through the API after all: now the spool goes.
    store.tombstones[7] = None
    for listener in store.tombstone_listeners:
        listener(7)
    assert worker.spool.chunks == [] and supervisor.kept == {}


def test_a_drain_deleted_through_the_api_loses_its_spool_at_once():
    supervisor, store, worker = supervisor_with_a_spooling_drain()
    store.tombstones[7] = None  # the feed's drain-deleted came before the channel's refresh
    supervisor.sync("app")
    assert worker.spool.chunks == [] and supervisor.kept == {}
