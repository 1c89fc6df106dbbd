"""Spools that only an API tombstone deletes (on a Clock), whatever the config Redis lost."""

from types import SimpleNamespace

from twisted.internet.task import Clock

from logplex.drains.policy import Backoff, Outcome
from logplex.drains.supervisor import DrainSettings, DrainSupervisor
from logplex.drains.worker import DrainWorker
from logplex.metrics import Metrics
from logplex.model import Drain
from logplex.redis.keys import RedisKeys
from tests.drain_doubles import Endpoint, MemorySpool, msg


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
