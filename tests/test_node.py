"""The node's wiring: makeService and build compose the services, and a node stops stage by stage in order.

In the manner of Twisted's own application tests: an in-memory reactor
(MemoryReactorClock) and a Redis that never answers, so no socket is opened
and time is the test's.
"""

from __future__ import annotations

import attrs
import pytest
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from logplex import workers
from logplex.node import STOP_ORDER, LogplexNode, NodeServices, OrderedServices, build
from logplex.redis.address import parse_redis_url
from logplex.settings import Settings
from logplex.tap import Options, makeService


class SilentPool:
    """A Redis pool whose every command waits for ever (the node's own timeouts end them)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)

        def command(*args, **kwargs):
            self.commands.append(name)
            return defer.Deferred()

        return command


class SilentRedis:
    """What build takes as `redis`: the config pool, the bus, a pool per shard; nothing answers."""

    def __init__(self) -> None:
        self.config_address = parse_redis_url("redis://127.0.0.1:6379/0")
        self.config = SilentPool()
        self.bus = SilentPool()
        self.shards = {"config": self.config}
        self.disconnected = False

    def shard(self, url: str):
        return self.shards.setdefault(url, SilentPool())

    def disconnect(self):
        self.disconnected = True
        return defer.succeed(None)


def settings(**options) -> Settings:
    return Settings.from_options({"config-redis": "redis://127.0.0.1:6379/0", "stop-grace": 0, **options})


def built(**options) -> tuple[NodeServices, MemoryReactorClock, SilentRedis]:
    reactor, redis = MemoryReactorClock(), SilentRedis()
    return build(settings(**options), reactor, redis), reactor, redis


def test_build_composes_the_stages_so_that_they_stop_ingress_bus_drains_backlogs_store():
    node, _, _ = built()
    # A MultiService stops its children last added first.
    assert [service.name for service in node][::-1] == list(STOP_ORDER)
    assert STOP_ORDER[1:6] == ("ingress", "bus", "drains", "backlogs", "store")
    assert isinstance(node.getServiceNamed("drop-report"), TimerService)


def test_every_listener_is_an_endpoint_service_and_they_stop_syslog_logs_api_manhole(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    node, _, _ = built(syslog=["tcp:6001", "tcp:6002"], **{
        "syslog-token": [("t.abc", "tcp:6010")], "manhole": "tcp:2222", "manhole-keys": str(keys),
        "data-dir": str(tmp_path)})
    ingress = list(node.getServiceNamed("ingress"))
    assert all(isinstance(listener, StreamServerEndpointService) for listener in ingress)
    assert [listener.name for listener in ingress][::-1] == [
        "syslog tcp:6010", "syslog tcp:6002", "syslog tcp:6001", "logs tcp:8601", "api tcp:8001",
        "manhole tcp:2222:interface=127.0.0.1"]


def test_a_listener_given_twice_is_built_and_fails_as_its_second_listen_would():
    node, _, _ = built(syslog=["tcp:6001", "tcp:6001"])
    assert [listener.description for listener in node.getServiceNamed("ingress").of_kind("syslog")] == [
        "tcp:6001", "tcp:6001"]


def test_the_parts_are_given_each_other_at_construction():
    node, _, redis = built()
    p = node.parts
    assert p.router.hold == p.drains.hold and p.router.drains == p.drains.publish
    assert p.router.backlog_hold == p.backlogs.hold
    assert p.api.health is p.health and p.logs.health is p.health
    assert p.store.redis is redis.config and p.cluster_tails.local is p.tails


def test_the_store_is_given_its_listeners_at_construction():
    p = built(auth="ops:secret")[0].parts
    assert p.store.feed_listeners == {b"tail": [p.cluster_tails.on_feed], b"shards": [p.shard_maps.on_feed]}
    assert len(p.store.identity_listeners) == 2 and p.store.identity_listeners[0] == p.tails.end_channel
    # --auth: the credential is ensured again when the node adopts the config again.
    assert len(p.store.recovered_listeners) == 1
    assert built()[0].parts.store.recovered_listeners == []


def test_the_tail_registry_is_given_the_bus_as_its_first_and_last_tail_hooks_at_construction():
    p = built()[0].parts
    channel = p.keys.tail("app")
    p.tails.on_first_tail("app")
    assert channel in p.cluster_tails.subscription._channels
    p.tails.on_last_tail("app")
    assert channel not in p.cluster_tails.subscription._channels


def test_the_api_url_is_read_at_use_from_the_option_or_the_bound_api_listener():
    p = built(**{"api-url": "https://logs.example/"})[0].parts
    # Before any start: nothing is set on the API or the registry later.
    assert p.api.api_url == "https://logs.example" and p.registry.api_url() == "https://logs.example"
    node, _, _ = built(api="tcp:8001:interface=127.0.0.1")
    p = node.parts
    assert p.api.api_url == "" and p.registry.api_url() == ""
    bound = node.getServiceNamed("ingress").of_kind("api")[0]
    bound.port = _BoundPort(IPv4Address("TCP", "127.0.0.1", 8001))
    assert p.api.api_url == "http://127.0.0.1:8001" and p.registry.api_url() == "http://127.0.0.1:8001"


def test_a_syslog_listeners_label_is_read_at_use_from_its_bound_port():
    node, _, _ = built(syslog=["tcp:6001"], **{"syslog-token": [("t.abc", "tcp:6010")]})
    plain, token = node.parts.syslog
    assert plain.listener == "syslog" and token.listener == "syslog"
    for listener, port in zip(node.getServiceNamed("ingress").of_kind("syslog"), (6001, 6010)):
        listener.port = _BoundPort(IPv4Address("TCP", "0.0.0.0", port))
    assert plain.listener == "syslog:6001" and token.listener == "syslog-token:6010"


@attrs.frozen
class _BoundPort:
    host: IPv4Address

    def getHost(self) -> IPv4Address:
        return self.host


class Recorded(Service):
    """A service whose stop is recorded, and ends when the test says so."""

    def __init__(self, name: str, record: list) -> None:
        self.setName(name)
        self.record = record
        self.stopping = defer.Deferred()

    def stopService(self):
        super().stopService()
        self.record.append(self.name)
        return self.stopping


def test_ordered_services_stop_one_after_another_last_added_first():
    record: list[str] = []
    parent = OrderedServices()
    children = [Recorded(name, record) for name in ("store", "backlogs", "drains", "bus", "ingress")]
    for child in children:
        child.setServiceParent(parent)
    parent.startService()
    stopped = parent.stopService()
    # Each waits for the one before it: a plain MultiService would stop all five at once.
    for n, child in enumerate(reversed(children), start=1):
        assert record == ["ingress", "bus", "drains", "backlogs", "store"][:n]
        child.stopping.callback(None)
    assert stopped.called and not parent.running


def test_a_service_that_never_started_is_not_stopped():
    record: list[str] = []
    parent = OrderedServices()
    started, idle = Recorded("started", record), Recorded("idle", record)
    started.setServiceParent(parent)
    idle.setServiceParent(parent)
    parent.startService()
    idle.running = False
    started.stopping.callback(None)
    parent.stopService()
    assert record == ["started"]


def test_a_built_node_stops_stage_by_stage_in_the_stated_order():
    node, reactor, redis = built()
    record: list[str] = []
    for stage in list(node) + list(node.getServiceNamed("ingress")):
        stop = stage.stopService

        def recorded(stop=stop, name=stage.name):
            record.append(name)
            return stop()

        stage.stopService = recorded
    node.startService()
    # The boot listens on the API first, then waits on a Redis that never answers.
    assert [port[0] for port in reactor.tcpServers] == [8001]
    stopped = node.stopService()
    reactor.advance(settings().redis.timeout)  # the registry's goodbye to a silent Redis times out
    assert stopped.called
    assert record == ["grace", "ingress", "api tcp:8001", "bus", "drains", "backlogs", "store", "redis", "load",
                      "drop-report"]
    assert node.parts.router.deny_ingress and node.parts.health().status == "stopping"
    assert redis.disconnected


def test_a_stopping_node_says_so_at_once_and_keeps_its_listeners_for_the_grace():
    node, reactor, _ = built(**{"stop-grace": 5})
    node.startService()
    node.parts.health.ready = True  # as at the end of a boot
    stopped = node.stopService()
    assert node.parts.health().code == 503 and not node.parts.router.deny_ingress
    assert node.getServiceNamed("ingress").of_kind("api")[0].running
    reactor.advance(5)
    assert node.parts.router.deny_ingress and not node.getServiceNamed("ingress").running
    reactor.advance(settings().redis.timeout)
    assert stopped.called


def _service(args, monkeypatch):
    monkeypatch.delenv(workers.WORKER_ENV, raising=False)
    options = Options()
    options.parseOptions(["--workers", "1", *args])
    return makeService(options, MemoryReactorClock())


def test_make_service_runs_the_embedded_redis_first_and_builds_the_node_once_redis_is_there(monkeypatch, tmp_path):
    service = _service(["--data-dir", str(tmp_path)], monkeypatch)
    assert isinstance(service, LogplexNode) and [s.name for s in service] == ["embedded-redis"]
    assert service.node is None  # built when the embedded Redis answers: its parts need its pools
    given = _service(["--config-redis", "redis://127.0.0.1:6379/0"], monkeypatch)
    assert list(given) == [] and given.embedded is None


def test_a_worker_gets_its_settings_and_sockets_from_its_master(monkeypatch):
    master = attrs.evolve(settings(), node=attrs.evolve(settings().node, name="n-1"))
    monkeypatch.setenv(workers.WORKER_ENV, workers.worker_environment(master, [3, 4, 5]))
    service = makeService(Options(), MemoryReactorClock())
    assert isinstance(service, LogplexNode) and service.settings == master
    assert service.inherited_fds == [3, 4, 5] and service.embedded is None


@pytest.mark.parametrize("args", [[], ["--syslog-token", "t.x=tcp:1"], ["--allow-private-drains"]])
def test_the_settings_a_master_hands_down_are_the_settings_it_runs(args):
    options = Options()
    options.parseOptions(args)
    s = Settings.from_options(options)
    assert workers.settings_from_environment(workers.worker_environment(s, [3]))[0] == s
