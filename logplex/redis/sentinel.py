"""Sentinel: which node is a service's primary, asked of the sentinels and followed through failovers.

txredisapi's `Sentinel` is not used: it keeps one connection per sentinel with
the same TLS options for every host (no per-host name check) and stops on a
failed AUTH, its primary's endpoint connects without TLS, it waits 10 s for a
primary before giving up, and its ROLE check compares the reply with a str, so
with `charset=None` (our bytes) every primary looks like a replica.
`_PrimaryWatch` asks the sentinels (TLS and `sentinel_password` as the URL
says) over short-lived connections, reusing txredisapi's parsing of
`SENTINEL MASTERS`, and follows their failover events over a subscription made
with txredisapi's `SubscriberProtocol`.
"""

from __future__ import annotations

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from logplex.redis.address import RedisAddress, hostport
from logplex.redis.handshake import LazyTLSEndpoint, SubscriberProtocol, configure_factory, host_endpoint
from logplex.redis.keys import SENTINEL_PROMOTING, SENTINEL_SWITCHED
from logplex.redis.password import RedisSecrets

log = Logger()


class _SentinelQuery(txredisapi.RedisProtocol):
    """One short conversation with a sentinel: txredisapi parses SENTINEL MASTERS (str values)."""

    def __init__(self) -> None:
        super().__init__(charset="utf-8", convertNumbers=False)
        self.ready: defer.Deferred = defer.Deferred()

    def connectionMade(self):
        self.connected = 1
        self.ready.callback(self)


class _SwitchListener(SubscriberProtocol):
    """A subscriber to a sentinel's failover events: a replica being promoted, a new primary."""

    def connectionMade(self):
        d = super().connectionMade()
        subscribed = self.whenConnected().addCallback(
            lambda p: p.subscribe([SENTINEL_PROMOTING, SENTINEL_SWITCHED]))
        subscribed.addErrback(
            lambda f: log.warn("redis_sentinel_subscribe_failed error={e}", e=f.getErrorMessage()))
        return d

    def messageReceived(self, pattern, channel, message):
        if channel == SENTINEL_PROMOTING:
            self.factory.watch.promoting(message)
        elif channel == SENTINEL_SWITCHED:
            self.factory.watch.switched(message)


class _SwitchFactory(txredisapi.RedisFactory):
    protocol = _SwitchListener


class _PrimaryWatch:
    """Which node is the primary of one Sentinel service, for every pool of it in this process.

    The sentinels are asked at every connection attempt, every second, and
    when one announces +switch-master; every sentinel is asked and the answer
    with the highest config epoch wins, since one that has not heard of a
    failover yet still names the old primary. Asking at connection attempts
    alone is not enough: a primary demoted while still running (SENTINEL
    FAILOVER) goes on taking writes until the sentinels reconfigure it,
    seconds later, and all of those are lost when it resyncs from the new
    one. So the pools leave it as soon as a sentinel starts promoting a
    replica (+failover-state-send-slaveof-noone).
    """

    interval = 1.0
    # After the first answer, how long the other sentinels have to give theirs.
    grace = 0.3
    # How long a replica being promoted is taken for the primary before the
    # sentinels confirm it (+switch-master); past it, a failover that was
    # aborted leaves the pools to the sentinels' answer again.
    promotion_wait = 10.0

    def __init__(self, reactor, address: RedisAddress, timeout: float) -> None:
        from twisted.internet.task import LoopingCall

        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.endpoints: list[SentinelEndpoint] = []
        # A poll that fails unexpectedly must not end the polling.
        self._loop = LoopingCall(lambda: defer.ensureDeferred(self._poll()).addErrback(
            lambda f: log.failure("redis_sentinel_poll_failed", f)))
        self._loop.clock = reactor
        self._polling = False
        self._again = False
        self._listeners: list[_SwitchFactory] = []
        self._promoting: tuple[tuple[str, int], float] | None = None

    def add(self, endpoint: SentinelEndpoint) -> None:
        self.endpoints.append(endpoint)
        if not self._loop.running:
            self._loop.start(self.interval, now=False)
            self._listen()

    def _listen(self) -> None:
        a = self.address
        secrets = RedisSecrets(metrics=a.secrets.metrics, clock=self.reactor) if a.secrets else None
        for host, port in a.sentinels:
            factory = _SwitchFactory(None, None, 1, isLazy=True, charset=None, convertNumbers=False)
            factory.watch = self
            sentinel = RedisAddress(host=host, port=port, password=a.sentinel_password, tls=a.tls,
                                    verify=a.verify, ca_certs=a.ca_certs, certfile=a.certfile,
                                    keyfile=a.keyfile, secrets=secrets)
            configure_factory(factory, sentinel, self.reactor, self.timeout)
            factory.startConnecting(LazyTLSEndpoint(self.reactor, sentinel, self.timeout))
            self._listeners.append(factory)

    def promoting(self, message: bytes) -> None:
        """The replica a sentinel is promoting: leave the old primary now.

        From here the old primary still takes writes, but its replica no longer
        copies them: whatever it takes until the sentinels reconfigure it is
        lost. The pools' writes wait in their queues for the new primary instead
        (its ROLE says replica until the promotion is done, so they retry).
        """
        # "slave <ip>:<port> <ip> <port> @ <service> <old ip> <old port>"
        parts = message.decode("utf-8", "replace").split()
        try:
            at = parts.index("@")
            service, new = parts[at + 1], (parts[2], int(parts[3]))
        except (ValueError, IndexError):
            return
        if service != self.address.service:
            return
        log.info("redis_sentinel_promoting address={address} new={new} action=leaving_old_primary",
                 address=self.address.describe(), new=hostport(*new))
        self._promoting = (new, self.reactor.seconds() + self.promotion_wait)
        for endpoint in self.endpoints:
            endpoint.primary_is(new)

    def switched(self, message: bytes) -> None:
        # "<service> <old ip> <old port> <new ip> <new port>"
        if message.split(b" ", 1)[0].decode("utf-8", "replace") != self.address.service:
            return
        self._promoting = None  # the sentinels' answer is the truth again
        log.info("redis_sentinel_switch address={address} announced={announced}",
                 address=self.address.describe(), announced=message.decode("utf-8", "replace"))
        self.poll_now()

    def poll_now(self) -> None:
        if self._polling:
            self._again = True  # the poll under way may have asked before the switch
            return
        defer.ensureDeferred(self._poll()).addErrback(lambda f: log.failure("redis_sentinel_poll_failed", f))

    async def _poll(self) -> None:
        # Pools that were disconnected leave; the last one out stops the poll.
        self.endpoints = [e for e in self.endpoints if not e.factory.stopped]
        if not self.endpoints:
            self._loop.stop()
            _WATCHES.pop(self.address, None)
            for listener in self._listeners:
                listener.disconnect()
            return
        if self._polling or not any(e.factory.pool for e in self.endpoints):
            return  # reconnecting pools ask for themselves
        self._polling = True
        try:
            primary = await self.discover()
        except Exception:
            return  # said by the next connection attempt, if it matters
        finally:
            self._polling = False
            if self._again:
                self._again = False
                self.reactor.callLater(0, self.poll_now)
        for endpoint in self.endpoints:
            endpoint.primary_is(primary)

    async def _ask(self, host: str, port: int) -> tuple[int, tuple[str, int]] | None:
        address, timeout = self.address, self.timeout
        endpoint = host_endpoint(self.reactor, address, host, port, timeout)
        factory = Factory.forProtocol(_SentinelQuery)
        factory.noisy = False  # one per question: no start/stop lines
        conn = await endpoint.connect(factory).addTimeout(timeout, self.reactor)
        try:
            await conn.ready
            if address.sentinel_password:
                await conn.execute_command("AUTH", address.sentinel_password).addTimeout(timeout, self.reactor)
            masters = await conn.sentinel_masters().addTimeout(timeout, self.reactor)
        finally:
            conn.transport.loseConnection()
        state = masters.get(address.service)
        if not state or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
            return None
        return int(state.get("config-epoch") or 0), (state["ip"], int(state["port"]))

    async def discover(self) -> tuple[str, int]:
        if self._promoting is not None:
            new, until = self._promoting
            if self.reactor.seconds() < until:
                return new
            self._promoting = None
        answers: list[tuple[int, tuple[str, int]]] = []
        errors: list[str] = []
        settled: defer.Deferred = defer.Deferred()
        pending = len(self.address.sentinels)

        def done(result, where: str) -> None:
            nonlocal pending
            pending -= 1
            if isinstance(result, tuple):
                answers.append(result)
                if len(answers) == 1 and pending:
                    self.reactor.callLater(self.grace, lambda: settled.called or settled.callback(None))
            else:
                reason = result.getErrorMessage() if result is not None else "no healthy primary"
                errors.append(f"{where}: {reason}")
            if not pending and not settled.called:
                settled.callback(None)

        for host, port in self.address.sentinels:
            d = defer.ensureDeferred(self._ask(host, port))
            d.addBoth(done, hostport(host, port))
        await settled
        if not answers:
            raise txredisapi.MasterNotFoundError(
                f"no sentinel named a healthy primary of {self.address.service!r} ({'; '.join(errors)})")
        return max(answers)[1]


_WATCHES: dict[RedisAddress, _PrimaryWatch] = {}


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """Connects a pool to the primary the sentinels name, asking them before every attempt."""

    def __init__(self, reactor, address: RedisAddress, factory, timeout: float) -> None:
        self.address = address
        self.factory = factory
        self.timeout = timeout
        self.reactor = reactor
        self.primary: tuple[str, int] | None = None
        # One poll per sentinel service in this process, whatever the number of pools.
        watch = _WATCHES.get(address)
        if watch is None:
            watch = _WATCHES[address] = _PrimaryWatch(reactor, address, timeout)
        self.watch = watch
        watch.add(self)

    def primary_is(self, primary: tuple[str, int]) -> None:
        if self.primary is None or primary == self.primary:
            return
        log.info("redis_primary_changed address={address} old={old} new={new} action=reconnecting",
                 address=self.address.describe(), old=hostport(*self.primary), new=hostport(*primary))
        self.primary = primary
        # Each connection reconnects through connect(), which asks again.
        for conn in list(self.factory.pool):
            conn.transport.loseConnection()

    def connect(self, protocolFactory):
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, protocolFactory):
        try:
            primary = await self.watch.discover()
        except txredisapi.MasterNotFoundError as e:
            log.warn("redis_sentinel_no_primary address={address} reason={reason}",
                     address=self.address.describe(), reason=str(e))
            raise
        self.primary_is(primary)
        self.primary = primary
        return await host_endpoint(self.reactor, self.address, *primary, self.timeout).connect(protocolFactory)
