"""A logplex node as a Twisted service: Redis, config cache, router, listeners, API."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from logplex import __version__, hotpath
from logplex.admin.manhole import Admin, loopback_only, manhole_factory
from logplex.api.app import ManagementApi
from logplex.api.tailpage import TailPage
from logplex.http.auth import Authenticator, LoginThrottle
from logplex.settings import Settings
from logplex.drains.adoption import SpoolAdopter
from logplex.drains.http import load_trust_root, make_client
from logplex.drains.netpolicy import PublicOnlyReactor
from logplex.drains.supervisor import DrainSettings, DrainSupervisor
from logplex.errors import StartFailed
from logplex.health import Health, assess, pool_connected
from logplex.ingest.http import LogInput
from logplex.ingest.syslog import SyslogFactory
from logplex.listen import description_fields, server_endpoint
from logplex.metrics import Metrics
from logplex.model import FULL_API
from logplex.tails.cluster import ClusterTails, NodeRegistry
from logplex.config.store import ConfigStore
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import RedisClusterRefused, connect, refuse_cluster_mode
from logplex.redis.password import RedisSecrets
from logplex.redis.embedded import EmbeddedRedis, EmbeddedRedisError
from logplex.redis.keys import RedisKeys
from logplex.backlog.shardmap import CONFIG, ShardMapFollower, load_or_init, load_versioned
from logplex.backlog.writer import Backlogs
from logplex.router import DropReport, Router
from logplex.saturation import HoldMeter, WorkerLoad, listener_name
from logplex.tails.session import TailRegistry
from logplex.http.site import ConnectionCap, LogplexSite
from logplex.workers import adopt, listeners

log = Logger()


class LogplexNode(MultiService):
    """Boots in order: Redis, config cache (API answers 503 until then), then log inputs."""

    def __init__(self, settings: Settings, reactor, inherited_fds: list[int] | None = None, *,
                 exit_on_failure: bool = False) -> None:
        super().__init__()
        self.settings = settings
        # Under twistd, which exits 0 whatever happened: a node that could
        # not start makes its process exit 1 once twistd has cleaned up.
        self.exit_on_failure = exit_on_failure
        # Listening sockets handed down by a --workers master, in listeners() order.
        self.inherited = dict(zip([d for _, d in listeners(settings)], inherited_fds or []))
        self.reactor = reactor
        self.metrics = Metrics()
        # Which node (or --workers worker) answered a scrape.
        self.metrics.set("logplex_node_info", 1, node=settings.node_name, version=__version__)
        self.embedded: EmbeddedRedis | None = None
        if settings.config_redis is None:
            self.embedded = EmbeddedRedis(settings.data_dir, reactor=reactor)
            self.embedded.setServiceParent(self)
        # Dropped lines (unknown tokens, malformed syslog) in the log, a line per kind a minute.
        self.drops = DropReport(reactor.seconds, _log_drop)
        flusher = TimerService(self.drops.interval, self.drops.flush)
        flusher.clock = reactor
        flusher.setServiceParent(self)
        self.ports: dict[str, list] = {}
        self.store: ConfigStore | None = None
        self.booted: defer.Deferred = defer.Deferred()
        self.stopping = False
        self.ready = False
        self._pools: list = []
        # Passwords of Redis URLs that have none (--redis-password-file), re-read on SIGHUP.
        self.redis_secrets = RedisSecrets(settings.redis_password_file, self.metrics, reactor)
        # Signals to scale on; under --workers each worker shares its figures with its siblings.
        self.load = WorkerLoad(reactor, settings.node_name,
                               os.path.join(settings.data_dir, "load") if inherited_fds else None)
        self.load.expose(self.metrics)
        self.holds = HoldMeter(reactor.seconds)
        self.holds.expose(self.metrics)

    # -- start --------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._install_sighup()
        self.load.start()
        d = defer.ensureDeferred(self._boot())
        d.addCallbacks(self.booted.callback, self._boot_failed)

    def _boot_failed(self, failure) -> None:
        if failure.check(StartFailed, EmbeddedRedisError, RedisClusterRefused):
            # A cause the operator can fix: one line that says what to do.
            log.critical("node_start_failed reason={reason}", reason=str(failure.value))
        else:
            log.failure("node_start_failed", failure)
        self.booted.errback(failure)
        if self.exit_on_failure:
            exit_status_at_exit(1)
        if not self.stopping:
            # Also when the failure came before the reactor ran (the embedded
            # Redis found another node's socket): never stay up serving nothing.
            self.reactor.callWhenRunning(self.reactor.stop)

    async def _boot(self) -> None:
        s = self.settings
        if self.embedded is not None:
            await self.embedded.whenReady()
            config_address = parse_redis_url(self.embedded.url)  # has no password
        else:
            config_address = parse_redis_url(s.config_redis, secrets=self.redis_secrets)
        config_redis = self._pool(config_address)
        # Pub/sub ignores the db: the db is in every channel name (and the namespace in every name).
        keys = RedisKeys(s.namespace, config_address.db)
        self._shard_pools = {CONFIG: config_redis}
        self.backlogs = Backlogs(
            self.reactor, self.metrics, self.shard_pool, s.redis_timeout, history=s.history,
            expiry=s.backlog_expiry, interval=s.flush_interval, keys=keys,
        )
        self.store = ConfigStore(
            config_redis, config_address, self.reactor, max_drains=s.max_drains,
            session_expiry=s.session_expiry, timeout=s.redis_timeout, metrics=self.metrics, keys=keys,
            node=s.node_name,
            reconcile_interval=s.reconcile_interval,
        )
        self.tails = TailRegistry(self.metrics)
        # One connection for the bus: what a node publishes stays in order.
        self.cluster_tails = ClusterTails(
            self.tails, connect(config_address, poolsize=1, reply_timeout=s.redis_timeout,
                                reactor=self.reactor),
            config_address, s.node_name, self.reactor, self.metrics, timeout=s.redis_timeout,
            incarnation_of=self._incarnation_of, keys=keys)
        self.store.feed_listeners[b"tail"] = [self.cluster_tails.on_feed]
        # A channel deleted (or deleted and made again): its tails end, and
        # its lines still queued here never reach the new channel's backlog.
        self.store.identity_listeners += [self.tails.end_channel,
                                          lambda channel_id, now: self.backlogs.forget(channel_id)]
        self.registry = NodeRegistry(config_redis, s.node_name, self.reactor, interval=s.heartbeat,
                                     timeout=s.redis_timeout, keys=keys)
        self.router = Router(self.store.cache, self.backlogs, self.cluster_tails, self.metrics, drops=self.drops,
                             backlog_hold=self.backlogs.hold)
        # Drains connect through a resolver that refuses private addresses,
        # unless the operator allows them.
        drain_reactor = self.reactor if s.allow_private_drains else PublicOnlyReactor(self.reactor)
        drain_trust = load_trust_root(s.drain_ca_file)
        self.drains = DrainSupervisor(
            self.store, self.backlogs, self.metrics, self.reactor, s.node_name,
            DrainSettings.from_settings(s),
            make_client(drain_reactor, drain_trust),
            drain_trust,
            emit=self.router.emit,
            connect_reactor=drain_reactor, keys=keys,
        )
        self.router.drains = self.drains.publish
        self.adopter = SpoolAdopter(config_redis, self.drains, self.registry, s.node_name, self.reactor,
                                    self.metrics, s.spool_adopt_after, s.redis_timeout, keys=keys)
        self.drains.spool_recorder = self.adopter.record
        self.router.hold = self.drains.hold
        self.auth = Authenticator(self.store.cache, self.reactor)
        # One throttle per listener: guesses at the log input do not lock
        # operators out of the API, nor the other way round.
        self.throttle = LoginThrottle(self.reactor, limit=s.login_failures, metrics=self.metrics, listener="api")
        self.api = ManagementApi(
            self.store, self.backlogs, self.tails, self.auth, self.metrics,
            api_url=s.api_url or "", history=s.history,
            allow_private_drains=s.allow_private_drains, tail_buffer=s.tail_buffer,
            tail_buffer_bytes=s.tail_buffer_bytes,
            reactor=self.reactor, drain_state=self.drains.state, nodes=self.registry.live,
            metrics_auth=s.metrics_auth, health=self.health,
            throttle=self.throttle, max_json=s.max_json,
        )
        # The API listens first: a load balancer sees 503 SYSTEM BOOTING
        # until the config is loaded.
        api_port = await self._listen("api", s.api, self._site(
            self.api.resource(extra_routes=TailPage(self.api).routes())))
        if not s.api_url:
            self.api.api_url = _default_api_url(s.api, api_port)
        self.registry.api_url = self.api.api_url
        if s.manhole:
            shell = manhole_factory(Admin(self).namespace(), s.manhole_keys, s.data_dir)
            await self._listen("manhole", loopback_only(s.manhole), shell)
        # Before anything is read: a Redis Cluster node with no slots would
        # make the config load retry for ever.
        await self._refuse_cluster_mode([(config_redis, config_address)])
        self.store.start()
        await self._retry_until_loaded()
        shard_map = await load_or_init(config_redis, keys, list(s.shard_redis))
        await self._refuse_cluster_mode([(self.shard_pool(url), parse_redis_url(url))
                                         for url in sorted(set(shard_map.values()) - {CONFIG})])
        # The shard map is followed through the feed, and checked every --reconcile-interval
        # for a change this node did not hear of; its version goes out in the heartbeat.
        self.shard_maps = ShardMapFollower(
            config_redis, keys, self.backlogs.configure, self.reactor, self.metrics,
            interval=s.reconcile_interval, timeout=s.redis_timeout,
            on_version=lambda version: self.registry.heartbeat())
        self.registry.shard_map_version = lambda: self.shard_maps.version
        self.shard_maps.follow(*await load_versioned(config_redis, keys))
        self.store.feed_listeners[b"shards"] = [self.shard_maps.on_feed]
        self.shard_maps.start()
        self.cluster_tails.start()
        self.registry.start()
        if s.auth:
            user, _, password = s.auth.partition(":")
            await self.store.ensure_credential(user, password)
            # A re-seeded config Redis has the credential's hash back; ensure it all the same.
            self.store.recovered_listeners.append(lambda: defer.ensureDeferred(
                self.store.ensure_credential(user, password)).addErrback(
                    lambda f: log.warn("auth_credential_not_ensured error={e!r}", e=f.getErrorMessage())))
        # Drains start (and resume their spools) before any input is accepted;
        # not while another node is adopting this node's spools.
        await self.adopter.wait_own_lease()
        self.drains.start()
        self.adopter.start()
        logs = LogInput(self.store, self.router, self.auth, self.metrics, s.max_body, s.max_frame,
                        throttle=LoginThrottle(self.reactor, limit=s.login_failures, metrics=self.metrics,
                                               listener="logs"),
                        reactor=self.reactor, health=self.health, holds=self.holds)
        await self._listen("logs", s.logs, self._site(logs.resource()))
        factories = []
        # One factory per listener: --max-connections holds for each.
        for token, description in [(None, d) for d in s.syslog] + list(s.syslog_token):
            factories.append(SyslogFactory(
                self.router, self.metrics, s.max_frame, token=token, max_connections=s.max_connections,
                idle_timeout=s.syslog_idle_timeout, frame_timeout=s.frame_timeout, clock=self.reactor,
                holds=self.holds))
            port = await self._listen("syslog", description, factories[-1])
            factories[-1].listener = listener_name("syslog-token" if token else "syslog", port)
        self.metrics.gauge_callback(
            "logplex_active_connections", lambda: [({}, sum(f.connections for f in factories))]
        )
        # Only now is the node ready: a load balancer that trusts /healthcheck
        # must not send logs to listeners that are not bound yet.
        self.ready = True
        log.info(
            "node_ready version={version} node={node} api={api} logs={logs} syslog={syslog} api_url={url} "
            "hot_path={hot_path!r}",
            version=__version__, node=s.node_name, api=self.addresses("api"),
            logs=self.addresses("logs"), syslog=self.addresses("syslog"), url=self.api.api_url,
            hot_path=hotpath.HOT_PATH,
        )
        if not any(FULL_API in cred.perms for cred in self.store.cache.creds.values()):
            log.warn("node_has_no_api_credential: every API call will be refused (401) until one "
                     "exists; start the node with --auth USER:PASSWORD (or LOGPLEX_AUTH) to have one")

    def _site(self, resource) -> ConnectionCap:
        s = self.settings
        site = LogplexSite(
            resource, max_body=s.max_body, header_timeout=s.http_header_timeout,
            request_timeout=s.http_request_timeout, idle_timeout=s.http_idle_timeout,
            max_header_bytes=s.max_header_bytes, metrics=self.metrics, reactor=self.reactor)
        # ALPN offers http/1.1 only, even where Twisted could speak h2 (the h2
        # package installed): the header size, header and request deadlines
        # are enforced by the HTTP/1.1 channel, and an h2 connection would
        # carry requests past them.
        return ConnectionCap(site, s.max_connections, self.metrics, negotiable=(b"http/1.1",))

    def _incarnation_of(self, channel_id: str) -> str | None:
        channel = self.store.cache.channels.get(channel_id)
        return None if channel is None else channel.incarnation

    def shard_pool(self, url: str):
        """The connection pool of a shard URL ("config" is the config Redis's)."""
        if url not in self._shard_pools:
            self._shard_pools[url] = self._pool(parse_redis_url(url, secrets=self.redis_secrets))
        return self._shard_pools[url]

    async def _retry_until_loaded(self) -> None:
        while True:
            try:
                await self.store.load()
                return
            except Exception as e:
                log.warn("config_redis_unavailable error={e!r} action=retrying", e=str(e))
                await _sleep(self.reactor, 1.0)

    async def _refuse_cluster_mode(self, checks) -> None:
        """Stop at start on a Redis Cluster node: it would half-work (MOVED, duplicates)."""
        for pool, address in checks:
            try:
                await refuse_cluster_mode(pool, address, self.settings.redis_timeout, self.reactor)
            except RedisClusterRefused:
                raise  # _boot_failed says why, in one line
            except Exception as e:
                # Unreachable now: the node starts and says so; an operator
                # who points it at a cluster later sees MOVED errors.
                log.warn("redis_cluster_check_skipped address={address} reason={reason!r}",
                         address=address.describe(), reason=str(e) or e.__class__.__name__)

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

    def _pool(self, address):
        pool = connect(address, poolsize=2, reply_timeout=self.settings.redis_timeout,
                       reactor=self.reactor)
        self._pools.append(pool)
        return pool

    async def _listen(self, kind: str, description: str, factory):
        fd = self.inherited.get(description)
        if fd is not None:
            port = adopt(self.reactor, description, fd, factory)
        else:
            try:
                port = await server_endpoint(self.reactor, description).listen(factory)
            except CannotListenError as e:
                raise StartFailed(
                    f"The {kind} listener cannot listen on {description}: {e.socketError}. Stop what "
                    f"uses that address, or give the node another one (--{kind})."
                ) from None
        self.ports.setdefault(kind, []).append(port)
        return port

    def health(self) -> Health:
        """What /healthcheck answers, on the API and the log input: no Redis command is sent."""
        router = getattr(self, "router", None)
        shard_pools = getattr(getattr(self, "backlogs", None), "pools", {})
        config_pool = getattr(self, "_shard_pools", {}).get(CONFIG)
        return assess(
            stopping=self.stopping,
            ready=self.ready and self.store is not None and self.store.loaded,
            ingress=router is None or not router.deny_ingress,
            config_redis=None if config_pool is None else pool_connected(config_pool),
            shards={name: pool_connected(pool) for name, pool in shard_pools.items()},
            config_refused=self.store is not None and self.store.refused is not None,
        )

    def addresses(self, kind: str) -> list[str]:
        out = []
        for port in self.ports.get(kind, []):
            host = port.getHost()
            out.append(f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}")
        return out

    # -- stop ---------------------------------------------------------------------
    def stopService(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # /healthcheck answers 503 "stopping" from here on.
        self.stopping = True
        grace = self.settings.stop_grace
        if self.ready and grace > 0:
            # A load balancer needs a few of its health checks to take this
            # node out: until then the listeners accept and serve as before.
            log.info("node_stopping grace={grace}s: /healthcheck answers 503 while the listeners "
                     "still accept", grace=grace)
            await _sleep(self.reactor, grace)
        # Nothing is acknowledged from here on: keep-alive HTTP senders get
        # 503 and retry elsewhere, syslog connections are closed (their
        # senders keep the messages), instead of a 204 for a line the
        # stopping drains would never carry.
        if getattr(self, "router", None) is not None:
            self.router.deny_ingress = True
        # Inputs first, so nothing new arrives while the rest drains.
        for kind in ("syslog", "logs", "api", "manhole"):
            for port in self.ports.pop(kind, []):
                await defer.maybeDeferred(port.stopListening)
        if getattr(self, "shard_maps", None) is not None:
            self.shard_maps.stop()
        if getattr(self, "cluster_tails", None) is not None:
            await self.cluster_tails.stop()
            await self.registry.stop()
        if getattr(self, "drains", None) is not None:
            self.adopter.stop()
            await self.drains.stop()
        if getattr(self, "backlogs", None) is not None:
            await self.backlogs.stop()
        if self.store is not None:
            await defer.maybeDeferred(self.store.stop)
        for pool in self._pools:
            try:
                await pool.disconnect()
            except Exception:
                pass
        self.load.stop()
        # The embedded Redis (a child service) stops last.
        await defer.maybeDeferred(super().stopService)


def _log_drop(reason: str, detail: str, count: int) -> None:
    log.warn("messages_dropped reason={reason!r} {detail}count={count} (the next such line within "
             "a minute waits and counts)", reason=reason, detail=f"token={detail!r} " if detail else "",
             count=count)


def exit_status_at_exit(status: int) -> None:
    """Make this process exit with status after everything else has run (twistd exits 0)."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)


def _default_api_url(description: str, port) -> str:
    host = port.getHost()
    interface = getattr(host, "host", "")
    if interface in ("", "0.0.0.0", "::"):
        # Bound to every interface: the host name is the best guess at a
        # public address, if it resolves at all; --api-url says it exactly.
        interface = _resolvable(socket.gethostname()) or "localhost"
    scheme = "https" if description_fields(description)[0] in ("ssl", "tls") else "http"
    if ":" in interface:
        interface = f"[{interface}]"
    return f"{scheme}://{interface}:{host.port}"


def _resolvable(name: str) -> str | None:
    """name if it resolves to an address, else None (once, at start: a blocking look-up is fine)."""
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        log.warn("api_url_host_unresolvable host={host!r}: session URLs name localhost instead; "
                 "set --api-url to the URL clients reach this node's API at", host=name)
        return None
    return name


def _sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
