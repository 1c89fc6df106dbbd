"""A logplex node as Twisted services: `build` wires the parts, `NodeServices` boots and stops them in order.

`LogplexNode` is what `twistd logplex` runs: the embedded Redis (when no
--config-redis is given), then, once Redis can be reached, the services
`build(settings, reactor, redis)` wires. Those stop one after another:
ingress (after --stop-grace), bus, drains, backlogs, store, Redis pools.
"""

from __future__ import annotations

import os
import signal
from typing import Callable

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger

from logplex import __version__, hotpath
from logplex.admin.manhole import Admin, loopback_only, manhole_factory
from logplex.api.app import ManagementApi
from logplex.api.tailpage import TailPage
from logplex.backlog.shardmap import CONFIG, ShardMapFollower, load_or_init, load_versioned
from logplex.backlog.writer import Backlogs
from logplex.config.store import ConfigStore
from logplex.drains.adoption import SpoolAdopter
from logplex.drains.http import load_trust_root, make_client
from logplex.drains.netpolicy import PublicOnlyReactor
from logplex.drains.supervisor import DrainSupervisor
from logplex.errors import StartFailed
from logplex.health import BootWait, NodeHealth
from logplex.http.auth import Authenticator, LoginThrottle
from logplex.http.site import ConnectionCap, LogplexSite
from logplex.ingest.http import LogInput
from logplex.ingest.syslog import SyslogFactory
from logplex.listen import ApiUrl, Listener, server_endpoint
from logplex.metrics import Metrics
from logplex.model import FULL_API
from logplex.process import exit_status_at_exit
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import RedisClusterRefused, connect, refuse_cluster_mode
from logplex.redis.password import RedisSecrets
from logplex.redis.embedded import EmbeddedRedis, EmbeddedRedisError
from logplex.redis.keys import RedisKeys
from logplex.router import DropReport, Router, TokenMisses
from logplex.saturation import HoldMeter, WorkerLoad, listener_name
from logplex.settings import Settings
from logplex.tails.cluster import ClusterTails, NodeRegistry
from logplex.tails.session import TailRegistry
from logplex.workers import InheritedEndpoint, inherited_listeners

log = Logger()

# Seconds a request that reaches a --workers worker while it boots waits for
# the boot before it is answered 503 SYSTEM BOOTING.
WORKER_BOOT_HOLD = 5.0

# The stages of a node, in the order they stop (build adds them in reverse).
STOP_ORDER = ("grace", "ingress", "bus", "drains", "backlogs", "store", "redis", "load", "drop-report")


class OrderedServices(MultiService):
    """A MultiService whose children stop one after another, the last added first.

    (MultiService stops them all at once.) A child that is not running is
    not stopped: a listener the boot never reached.
    """

    def stopService(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop_in_order())

    async def _stop_in_order(self) -> None:
        Service.stopService(self)
        for service in reversed(list(self)):
            if service.running:
                try:
                    await defer.maybeDeferred(service.stopService)
                except Exception:
                    log.failure("service_stop_failed name={name}", name=service.name)


class Listeners(OrderedServices):
    """The node's listeners; each is started by the boot at its moment, not all at once."""

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)

    def of_kind(self, kind: str) -> list[Listener]:
        """The listeners of a kind ("api", "logs", "syslog", "manhole"), in the order they were added."""
        return [listener for listener in self if listener.kind == kind]


class Stage(Service):
    """One stage of a node's stop (and, where it has one, of its start)."""

    def __init__(self, name: str, stop, start=None) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.maybeDeferred(self._stop)


class RedisPools:
    """The node's Redis connections: a pool for the config Redis, one for the bus, one per shard URL."""

    def __init__(self, config_address, reactor, timeout: float, secrets: RedisSecrets | None = None) -> None:
        self.config_address = config_address
        self.reactor = reactor
        self.timeout = timeout
        self.secrets = secrets
        self._pools: list = []
        self.config = self._pool(config_address)
        # One connection for the bus: what a node publishes stays in order.
        self.bus = self._pool(config_address, poolsize=1)
        self._shards = {CONFIG: self.config}

    def shard(self, url: str):
        """The connection pool of a shard URL ("config" is the config Redis's)."""
        if url not in self._shards:
            self._shards[url] = self._pool(parse_redis_url(url, secrets=self.secrets))
        return self._shards[url]

    def _pool(self, address, poolsize: int = 2):
        pool = connect(address, poolsize=poolsize, reply_timeout=self.timeout, reactor=self.reactor)
        self._pools.append(pool)
        return pool

    async def disconnect(self) -> None:
        for pool in self._pools:
            try:
                await pool.disconnect()
            except Exception:
                pass


@attrs.define
class Parts:
    """What build wires, for the boot, the admin shell and tests to reach."""

    settings: Settings
    reactor: object
    redis: RedisPools
    keys: RedisKeys
    metrics: Metrics
    drops: DropReport
    load: WorkerLoad
    holds: HoldMeter
    store: ConfigStore
    backlogs: Backlogs
    tails: TailRegistry
    cluster_tails: ClusterTails
    registry: NodeRegistry
    shard_maps: ShardMapFollower
    router: Router
    drains: DrainSupervisor
    adopter: SpoolAdopter
    auth: Authenticator
    api: ManagementApi
    health: NodeHealth
    logs: LogInput
    syslog: list  # SyslogFactory per listener, in listen.all() order

    def shard_pool(self, url: str):
        return self.redis.shard(url)


def build(settings: Settings, reactor, redis: RedisPools, inherited_fds: list[int] = (),
          metrics: Metrics | None = None) -> NodeServices:
    """The node's services, wired: every collaborator is given to the constructor that needs it."""
    s = settings
    metrics = metrics if metrics is not None else Metrics()
    # Which node (or --workers worker) answered a scrape.
    metrics.set("logplex_node_info", 1, node=s.node.name, version=__version__)
    # Pub/sub ignores the db: the db is in every channel name (and the namespace in every name).
    keys = RedisKeys(s.redis.namespace, redis.config_address.db)
    timeout = s.redis.timeout
    # Dropped lines (unknown tokens, malformed syslog) in the log, a line per kind a minute.
    drops = DropReport(reactor.seconds, _log_drop)
    # Signals to scale on; under --workers each worker shares its figures with its siblings.
    load = WorkerLoad(reactor, s.node.name,
                      os.path.join(s.node.data_dir, "load") if inherited_fds else None)
    load.expose(metrics)
    holds = HoldMeter(reactor.seconds)
    holds.expose(metrics)
    backlogs = Backlogs(reactor, metrics, redis.shard, s.backlog, timeout, keys=keys)
    tails = TailRegistry(metrics, on_first_tail=lambda channel_id: cluster_tails.first_tail(channel_id),
                         on_last_tail=lambda channel_id: cluster_tails.last_tail(channel_id))

    def incarnation_of(channel_id: str) -> str | None:
        channel = store.cache.channels.get(channel_id)
        return None if channel is None else channel.incarnation

    cluster_tails = ClusterTails(tails, redis.bus, redis.config_address, s.node.name, reactor, metrics,
                                 timeout, incarnation_of=incarnation_of, keys=keys)
    # The shard map is followed through the feed, and checked every --reconcile-interval
    # for a change this node did not hear of; its version goes out in the heartbeat.
    shard_maps = ShardMapFollower(
        redis.config, keys, backlogs.configure, reactor, metrics,
        s.node.reconcile_interval, timeout, on_version=lambda version: registry.heartbeat())
    registry = NodeRegistry(redis.config, s.node, reactor, timeout, keys=keys, api_url=lambda: api.api_url,
                            shard_map_version=lambda: shard_maps.version)
    store = ConfigStore(
        redis.config, redis.config_address, reactor, s.api, timeout=timeout, metrics=metrics, keys=keys,
        node=s.node.name, reconcile_interval=s.node.reconcile_interval,
        feed_listeners={b"tail": [cluster_tails.on_feed], b"shards": [shard_maps.on_feed]},
        # A channel deleted (or deleted and made again): its tails end, and
        # its lines still queued here never reach the new channel's backlog.
        identity_listeners=[tails.end_channel, lambda channel_id, now: backlogs.forget(channel_id)],
        # A re-seeded config Redis has the --auth credential's hash back; it is ensured all the same.
        recovered_listeners=[lambda: _ensure_credential_again(store, s.api.auth)] if s.api.auth else [],
    )
    # Drains connect through a resolver that refuses private addresses,
    # unless the operator allows them.
    drain_reactor = reactor if s.drains.allow_private else PublicOnlyReactor(reactor)
    drain_trust = load_trust_root(s.drains.ca_file)
    # The router and the drains, and the drains and the adopter, need each
    # other: each is given a function that reaches the other when called.
    drains = DrainSupervisor(
        store, backlogs, metrics, reactor, s.node.name, s.drains,
        make_client(drain_reactor, drain_trust), drain_trust,
        emit=lambda channel_id, message: router.emit(channel_id, message),
        connect_reactor=drain_reactor, keys=keys,
        spool_recorder=lambda drain_id: adopter.record(drain_id),
    )
    router = Router(store.cache, backlogs, cluster_tails, metrics, drains=drains.publish, drops=drops,
                    hold=drains.hold, backlog_hold=backlogs.hold,
                    misses=TokenMisses(store.caught_up, reactor.seconds))
    adopter = SpoolAdopter(redis.config, drains, registry, s.node.name, reactor, metrics,
                           s.drains.adopt_after, timeout, keys=keys)
    health = NodeHealth(router, store, redis.config, backlogs.pools)
    # A worker's listeners take connections from the start, its siblings' too (logplex.health).
    boot = BootWait(reactor, WORKER_BOOT_HOLD if inherited_fds else 0.0)
    auth = Authenticator(store.cache, reactor)
    # One throttle per listener: guesses at the log input do not lock
    # operators out of the API, nor the other way round.
    api = ManagementApi(
        store, backlogs, tails, auth, metrics, s,
        # Without --api-url, made from the API listener's address once it is bound.
        api_url=ApiUrl(s.api.url, s.listen.api, lambda: listeners.of_kind("api")[0].port),
        reactor=reactor, drain_state=drains.state, nodes=registry.live, health=health,
        throttle=LoginThrottle(reactor, limit=s.listen.login_failures, metrics=metrics, listener="api"),
        boot=boot,
    )
    logs = LogInput(store, router, auth, metrics, s.listen,
                    throttle=LoginThrottle(reactor, limit=s.listen.login_failures, metrics=metrics,
                                           listener="logs"),
                    reactor=reactor, health=health, holds=holds, boot=boot)
    # One factory per listener: --max-connections holds for each.
    syslog = [SyslogFactory(router, metrics, s.listen.max_frame, token=token,
                            max_connections=s.listen.max_connections,
                            idle_timeout=s.listen.syslog_idle_timeout, frame_timeout=s.listen.frame_timeout,
                            clock=reactor, holds=holds, label=_syslog_label(lambda: listeners, i, token))
              for i, (token, _) in enumerate(_syslog_listeners(s))]
    metrics.gauge_callback("logplex_active_connections", lambda: [({}, sum(f.connections for f in syslog))])
    parts = Parts(settings, reactor, redis, keys, metrics, drops, load, holds, store, backlogs, tails,
                  cluster_tails, registry, shard_maps, router, drains, adopter, auth, api, health, logs,
                  syslog)
    node = NodeServices(parts)
    listeners = _listeners(parts, inherited_fds)
    _add_stages(node, parts, listeners)
    return node


def _syslog_listeners(s: Settings) -> list[tuple[str | None, str]]:
    return [(None, d) for d in s.listen.syslog] + list(s.listen.syslog_token)


def _syslog_label(listeners: Callable[[], Listeners], i: int, token: str | None) -> Callable[[], str]:
    """The i-th syslog listener's label in metrics ("syslog:6514"), from its port once bound."""
    kind = "syslog-token" if token else "syslog"

    def label() -> str:
        port = listeners().of_kind("syslog")[i].port
        return "syslog" if port is None else listener_name(kind, port)

    return label


def _listeners(parts: Parts, inherited_fds) -> Listeners:
    """Every listener as a service; they stop in the order syslog, logs, API, admin shell."""
    s, reactor = parts.settings, parts.reactor
    inherited = inherited_listeners(s, list(inherited_fds))

    def listener(kind: str, description: str, factory) -> Listener:
        fd = inherited.get(description)
        endpoint = (InheritedEndpoint(reactor, description, fd) if fd is not None
                    else server_endpoint(reactor, description))
        made = Listener(kind, description, endpoint, factory)
        # A description given twice fails as the second listen, as it always did, not here.
        made.setName(made.name + f" ({len(listeners.namedServices)})" if made.name in listeners.namedServices
                     else made.name)
        return made

    listeners = Listeners()
    listeners.setName("ingress")
    if s.admin.manhole:
        shell = manhole_factory(Admin(parts).namespace(), s.admin.manhole_keys, s.node.data_dir)
        listener("manhole", loopback_only(s.admin.manhole), shell).setServiceParent(listeners)
    api = parts.api.resource(extra_routes=TailPage(parts.api).routes())
    listener("api", s.listen.api, _site(parts, api)).setServiceParent(listeners)
    listener("logs", s.listen.logs, _site(parts, parts.logs.resource())).setServiceParent(listeners)
    for (_, description), factory in zip(_syslog_listeners(s), parts.syslog):
        listener("syslog", description, factory).setServiceParent(listeners)
    return listeners


def _add_stages(node: NodeServices, p: Parts, listeners: Listeners) -> None:
    """The stages, added in the reverse of STOP_ORDER: a node stops the last added first."""
    flusher = TimerService(p.drops.interval, p.drops.flush)
    flusher.clock = p.reactor
    flusher.setName("drop-report")
    for service in (
        flusher,
        Stage("load", p.load.stop, start=p.load.start),
        Stage("redis", p.redis.disconnect),
        Stage("store", p.store.stop),
        Stage("backlogs", p.backlogs.stop),
        Stage("drains", lambda: _stop_drains(p)),
        Stage("bus", lambda: _stop_bus(p)),
        listeners,
        Stage("grace", node.grace),
    ):
        service.setServiceParent(node)


def _stop_drains(p: Parts) -> defer.Deferred:
    p.adopter.stop()
    return p.drains.stop()


async def _stop_bus(p: Parts) -> None:
    p.shard_maps.stop()
    await p.cluster_tails.stop()
    await p.registry.stop()


def _site(p: Parts, resource) -> ConnectionCap:
    s = p.settings.listen
    site = LogplexSite(
        resource, max_body=s.max_body, header_timeout=s.http_header_timeout,
        request_timeout=s.http_request_timeout, idle_timeout=s.http_idle_timeout,
        max_header_bytes=s.max_header_bytes, metrics=p.metrics, reactor=p.reactor)
    # ALPN offers http/1.1 only, even where Twisted could speak h2 (the h2
    # package installed): the header size, header and request deadlines
    # are enforced by the HTTP/1.1 channel, and an h2 connection would
    # carry requests past them.
    return ConnectionCap(site, s.max_connections, p.metrics, negotiable=(b"http/1.1",))


class NodeServices(OrderedServices):
    """A wired node: started, it boots (API first, inputs last); stopped, it stops stage by stage."""

    def __init__(self, parts: Parts) -> None:
        super().__init__()
        self.parts = parts
        self.settings = parts.settings
        self.reactor = parts.reactor
        self.booted: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        defer.ensureDeferred(self._boot()).chainDeferred(self.booted)

    async def _boot(self) -> None:
        p, s = self.parts, self.settings
        ingress: Listeners = self.getServiceNamed("ingress")
        # A worker sharing the API port with one that is ready must not
        # answer 401 to the right login while its --auth credential is not in place.
        p.api.booting = bool(s.api.auth)
        # The API listens first: a load balancer sees 503 SYSTEM BOOTING
        # until the config is loaded.
        await self._listen(ingress.of_kind("api")[0])
        # Made now from the bound port, once: a host name that does not resolve is told here.
        api_url = p.api.api_url
        for manhole in ingress.of_kind("manhole"):
            await self._listen(manhole)
        # Before anything is read: a Redis Cluster node with no slots would
        # make the config load retry for ever.
        await self._refuse_cluster_mode([(p.redis.config, p.redis.config_address)])
        p.store.start()
        await self._retry_until_loaded()
        p.api.boot.changed()
        shard_map = await load_or_init(p.redis.config, p.keys, list(s.redis.shards))
        await self._refuse_cluster_mode([(p.redis.shard(url), parse_redis_url(url))
                                         for url in sorted(set(shard_map.values()) - {CONFIG})])
        p.shard_maps.follow(*await load_versioned(p.redis.config, p.keys))
        p.shard_maps.start()
        p.cluster_tails.start()
        p.registry.start()
        if s.api.auth:
            user, _, password = s.api.auth.partition(":")
            await p.store.ensure_credential(user, password)
            p.api.booting = False
            p.api.boot.changed()
        # Drains start (and resume their spools) before any input is accepted;
        # not while another node is adopting this node's spools.
        await p.adopter.wait_own_lease()
        p.drains.start()
        p.adopter.start()
        await self._listen(ingress.of_kind("logs")[0])
        for listener in ingress.of_kind("syslog"):
            await self._listen(listener)
        # Only now is the node ready: a load balancer that trusts /healthcheck
        # must not send logs to listeners that are not bound yet.
        p.health.ready = True
        p.api.boot.changed()
        log.info(
            "node_ready version={version} node={node} api={api} logs={logs} syslog={syslog} api_url={url} "
            "hot_path={hot_path!r}",
            version=__version__, node=s.node.name, api=self.addresses("api"),
            logs=self.addresses("logs"), syslog=self.addresses("syslog"), url=api_url,
            hot_path=hotpath.HOT_PATH,
        )
        if not any(FULL_API in cred.perms for cred in p.store.cache.creds.values()):
            log.warn("node_has_no_api_credential: every API call will be refused (401) until one "
                     "exists; start the node with --auth USER:PASSWORD (or LOGPLEX_AUTH) to have one")

    async def _listen(self, listener: Listener):
        listener.startService()
        return await listener.listening()

    async def _retry_until_loaded(self) -> None:
        while True:
            try:
                await self.parts.store.load()
                return
            except Exception as e:
                log.warn("config_redis_unavailable error={e!r} action=retrying", e=str(e))
                await _sleep(self.reactor, 1.0)

    async def _refuse_cluster_mode(self, checks) -> None:
        """Stop at start on a Redis Cluster node: it would half-work (MOVED, duplicates)."""
        for pool, address in checks:
            try:
                await refuse_cluster_mode(pool, address, self.settings.redis.timeout, self.reactor)
            except RedisClusterRefused:
                raise  # LogplexNode says why, in one line
            except Exception as e:
                # Unreachable now: the node starts and says so; an operator
                # who points it at a cluster later sees MOVED errors.
                log.warn("redis_cluster_check_skipped address={address} reason={reason!r}",
                         address=address.describe(), reason=str(e) or e.__class__.__name__)

    def addresses(self, kind: str) -> list[str]:
        out = []
        for listener in self.getServiceNamed("ingress"):
            if listener.kind == kind and listener.port is not None:
                host = listener.port.getHost()
                out.append(f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}")
        return out

    async def grace(self) -> None:
        """The first stage of a stop: /healthcheck answers 503 "stopping", the listeners still serve."""
        health = self.parts.health
        health.stopping = True
        grace = self.settings.node.stop_grace
        if health.ready and grace > 0:
            # A load balancer needs a few of its health checks to take this
            # node out: until then the listeners accept and serve as before.
            log.info("node_stopping grace={grace}s: /healthcheck answers 503 while the listeners "
                     "still accept", grace=grace)
            await _sleep(self.reactor, grace)
        # Nothing is acknowledged from here on: keep-alive HTTP senders get
        # 503 and retry elsewhere, syslog connections are closed (their
        # senders keep the messages), instead of a 204 for a line the
        # stopping drains would never carry.
        self.parts.router.deny_ingress = True


class LogplexNode(OrderedServices):
    """What `twistd logplex` runs in one process: the embedded Redis if any, then the wired node.

    It stops in the reverse order: the node (stage by stage), then the embedded Redis.
    """

    def __init__(self, settings: Settings, reactor, inherited_fds: list[int] | None = None, *,
                 exit_on_failure: bool = False, embedded: EmbeddedRedis | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        # Under twistd, which exits 0 whatever happened: a node that could
        # not start makes its process exit 1 once twistd has cleaned up.
        self.exit_on_failure = exit_on_failure
        # Listening sockets handed down by a --workers master, in listen.all() order.
        self.inherited_fds = list(inherited_fds or [])
        self.metrics = Metrics()
        # Passwords of Redis URLs that have none (--redis-password-file), re-read on SIGHUP.
        self.redis_secrets = RedisSecrets(settings.redis.password_file, self.metrics, reactor)
        self.embedded = embedded
        if embedded is not None:
            embedded.setName("embedded-redis")
            embedded.setServiceParent(self)
        self.node: NodeServices | None = None
        self.booted: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self._install_sighup()
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.booted.callback, self._boot_failed)

    async def _start(self) -> None:
        if self.embedded is not None:
            await self.embedded.whenReady()
            config_address = parse_redis_url(self.embedded.url)  # has no password
        else:
            config_address = parse_redis_url(self.settings.redis.config, secrets=self.redis_secrets)
        redis = RedisPools(config_address, self.reactor, self.settings.redis.timeout, self.redis_secrets)
        self.node = build(self.settings, self.reactor, redis, self.inherited_fds, self.metrics)
        self.node.setName("node")
        self.node.setServiceParent(self)  # starts it: the boot
        await self.node.booted

    def _boot_failed(self, failure) -> None:
        if failure.check(StartFailed, EmbeddedRedisError, RedisClusterRefused):
            # A cause the operator can fix: one line that says what to do.
            log.critical("node_start_failed reason={reason}", reason=str(failure.value))
        else:
            log.failure("node_start_failed", failure)
        self.booted.errback(failure)
        if self.exit_on_failure:
            exit_status_at_exit(1)
        if self.running:
            # Also when the failure came before the reactor ran (the embedded
            # Redis found another node's socket): never stay up serving nothing.
            self.reactor.callWhenRunning(self.reactor.stop)

    def _install_sighup(self) -> None:
        def hup(signum, frame):
            self.reactor.callFromThread(self._reload_secrets)

        try:
            signal.signal(signal.SIGHUP, hup)
        except ValueError:
            pass  # not the main thread (a node inside a test): no signals to take

    def _reload_secrets(self) -> None:
        ok = self.redis_secrets.reload()
        log.info("redis_password_file_reloaded ok={ok}", ok=ok)


def embedded_redis(settings: Settings, reactor) -> EmbeddedRedis | None:
    """The redis-server a node runs in its data directory when it is given no --config-redis."""
    if settings.redis.config is not None:
        return None
    return EmbeddedRedis(settings.node.data_dir, reactor=reactor)


def _ensure_credential_again(store: ConfigStore, auth: str) -> defer.Deferred:
    user, _, password = auth.partition(":")
    return defer.ensureDeferred(store.ensure_credential(user, password)).addErrback(
        lambda f: log.warn("auth_credential_not_ensured error={e!r}", e=f.getErrorMessage()))


def _log_drop(reason: str, detail: str, count: int) -> None:
    log.warn("messages_dropped reason={reason!r} {detail}count={count} (the next such line within "
             "a minute waits and counts)", reason=reason, detail=f"token={detail!r} " if detail else "",
             count=count)


def _sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
