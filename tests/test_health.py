"""What /healthcheck says, from the node's phase and its pools' connections, and how each listener says it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from logplex.api.ops import Ops
from logplex.health import (
    BOOTING, DEGRADED, DOWN, INGRESS_OFF, NORMAL, STOPPING, UP, BootWait, Health, assess, pool_connected,
)
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect


def healthy(**changes) -> Health:
    facts = dict(stopping=False, ready=True, ingress=True, config_redis=True,
                 shards={"shard-0": True, "shard-1": True})
    facts.update(changes)
    return assess(**facts)


def test_all_well_is_normal_and_200():
    health = healthy()
    assert (health.code, health.document()) == (
        200, {"status": "normal", "config_redis": "up", "shards": {"shard-0": "up", "shard-1": "up"}})
    assert health.words() == b"OK"


@pytest.mark.parametrize("changes, status", [
    ({"shards": {"shard-0": True, "shard-1": False}}, DEGRADED),
    ({"config_redis": False}, DEGRADED),
    ({"ready": False}, BOOTING),
    ({"ready": False, "config_redis": None, "shards": {}}, BOOTING),
    ({"ingress": False}, INGRESS_OFF),
    ({"stopping": True}, STOPPING),
    # A stopping node says so before anything else: it will not come back.
    ({"stopping": True, "ready": False, "ingress": False, "config_redis": False}, STOPPING),
    ({"ingress": False, "shards": {"shard-0": False}}, INGRESS_OFF),
])
def test_status_by_phase_and_dependencies(changes, status):
    assert healthy(**changes).status == status


def test_a_redis_down_keeps_the_node_in_the_balancer_and_a_phase_that_cannot_route_takes_it_out():
    # Routing to tails and drains goes on with a Redis down; every node shares it.
    assert healthy(shards={"shard-0": False}).code == 200
    assert healthy(config_redis=False).code == 200
    for changes in ({"ready": False}, {"stopping": True}, {"ingress": False}):
        assert healthy(**changes).code == 503


def test_the_log_input_says_it_in_logplex_words():
    assert healthy(ready=False).words() == b"SYSTEM BOOTING"
    assert healthy(stopping=True).words() == b"STOPPING"
    assert healthy(ingress=False).words() == b"INGRESS OFF"
    assert healthy(config_redis=False).words() == b"OK"


@given(stopping=st.booleans(), ready=st.booleans(), ingress=st.booleans(),
       config_redis=st.sampled_from([None, False, True]),
       shards=st.dictionaries(st.from_regex(r"shard-[0-9]{1,3}", fullmatch=True), st.booleans(), max_size=5))
def test_every_answer_names_every_shard_and_is_200_exactly_when_routing(stopping, ready, ingress,
                                                                        config_redis, shards):
    health = assess(stopping=stopping, ready=ready, ingress=ingress, config_redis=config_redis, shards=shards)
    doc = json.loads(json.dumps(health.document()))
    assert doc["shards"] == {name: UP if up else DOWN for name, up in shards.items()}
    assert doc["config_redis"] == (UP if config_redis else DOWN)
    assert (health.code == 200) == (not stopping and ready and ingress)
    assert (doc["status"] == NORMAL) == (health.code == 200 and config_redis is True and all(shards.values()))


class _Factory:
    def __init__(self, size: int) -> None:
        self.size = size


class _Pool:
    def __init__(self, size: int) -> None:
        self._factory = _Factory(size)


def test_a_pool_is_up_while_it_holds_a_connection_past_its_handshake():
    assert pool_connected(_Pool(2)) and pool_connected(_Pool(1))
    assert not pool_connected(_Pool(0))
    assert not pool_connected(object())


def test_a_real_txredisapi_pool_that_has_not_connected_yet_is_down():
    # A memory reactor: the pool starts connecting and never gets an answer.
    pool = connect(parse_redis_url("redis://127.0.0.1:1/0"), reactor=MemoryReactorClock())
    assert not pool_connected(pool)


def test_the_api_answers_the_health_it_is_given_as_json():
    for health in (healthy(), healthy(stopping=True), healthy(shards={"shard-0": False})):
        api = SimpleNamespace(health=lambda health=health: health, boot=BootWait(Clock(), 5.0))
        reply = successResultOf(defer.ensureDeferred(Ops(api).healthcheck(None)))
        assert (reply.status, reply.body) == (health.code, health.document())


def successResultOf(d: defer.Deferred):
    results = []
    d.addBoth(results.append)
    assert len(results) == 1, "the healthcheck waited on something"
    return results[0]


def test_a_node_refusing_the_config_redis_contents_is_degraded_and_says_so():
    # It still routes from the config it holds: a load balancer keeps it (200).
    health = assess(stopping=False, ready=True, ingress=True, config_redis=True,
                    shards={"shard-0": True}, config_refused=True)
    assert (health.code, health.document()) == (
        200, {"status": "degraded", "config_redis": "up", "shards": {"shard-0": "up"}, "config": "refused"})


class Booting:
    """A node's phase as a worker's BootWait sees it: booting until ready is set."""

    def __init__(self) -> None:
        self.ready = False

    def __call__(self) -> Health:
        return healthy(ready=self.ready)


def test_a_worker_answers_a_healthcheck_that_comes_while_it_boots_once_it_has_booted():
    clock, node = Clock(), Booting()
    boot = BootWait(clock, 5.0)
    answer = defer.ensureDeferred(boot.health(node))
    clock.advance(4.9)
    assert not answer.called
    node.ready = True
    boot.changed()
    assert answer.result.status == NORMAL
    assert clock.getDelayedCalls() == []


def test_a_worker_whose_boot_does_not_end_within_the_hold_answers_booting():
    clock, node = Clock(), Booting()
    boot = BootWait(clock, 5.0)
    answer = defer.ensureDeferred(boot.health(node))
    boot.changed()  # a step of the boot that does not make it ready
    clock.advance(4.9)
    assert not answer.called
    clock.advance(0.1)
    assert answer.result.status == BOOTING
    # Later steps find nobody waiting.
    node.ready = True
    boot.changed()


def test_a_single_process_answers_booting_at_once_and_a_booted_worker_does_not_wait():
    node = Booting()
    assert successResultOf(defer.ensureDeferred(BootWait(Clock(), 0).health(node))).status == BOOTING
    node.ready = True
    assert successResultOf(defer.ensureDeferred(BootWait(Clock(), 5.0).health(node))).status == NORMAL


def test_each_waiter_is_released_by_its_own_condition():
    clock = Clock()
    boot = BootWait(clock, 5.0)
    phase = {"loaded": False, "ready": False}
    api = boot.until(lambda: phase["loaded"])
    health = boot.until(lambda: phase["ready"])
    phase["loaded"] = True
    boot.changed()
    assert (api.called, health.called) == (True, False)
    phase["ready"] = True
    boot.changed()
    assert health.called and clock.getDelayedCalls() == []
