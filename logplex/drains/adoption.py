"""Spool adoption: a live node delivers the spools a departed node left behind, once, in order.

A node records in the config Redis, at its first spool write for a drain,
that it spools (``spoolers``) and for which drains (``spooled:<node>``).
Every few seconds each node compares those names with the registry; a name
whose heartbeat stopped more than --spool-adopt-after ago (or that left the
registry as long ago) is departed. One live node takes a lease on it (SET NX
PX, renewed between drains) and moves each of its spools, atomically and in
order, to the tail of its own spool of that drain: the departed spool is then
gone, so neither a returning node nor a second adopter can deliver it again.
A node that starts waits while a lease on its own name is held, after its
first heartbeat: either the adopter sees that heartbeat and backs off, or the
starting node sees the lease and waits until the moves are done.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua

log = Logger()

# Renew and release a lease only while this node holds it.
_RENEW = lua("logplex.drains", "adoption_renew")
_RELEASE = lua("logplex.drains", "adoption_release")


# -- sans-IO: which nodes are departed -------------------------------------------------------
def is_live(doc: dict | None, now: float) -> bool:
    """Whether a registry entry is a heartbeat heard within its own TTL."""
    return doc is not None and now - float(doc["seen_at"]) <= float(doc.get("ttl", 15.0))


def departed(spoolers: set[str], registry: dict[str, dict], me: str, now: float,
             absent_since: dict[str, float], adopt_after: float) -> list[str]:
    """The spooling nodes gone from the registry for longer than adopt_after, oldest name first.

    A node's absence starts when its last heartbeat's TTL ran out; for a node
    with no entry at all (it stopped, or a reader removed its stale entry),
    when this node first noticed (absent_since, updated here).
    """
    for name in list(absent_since):
        if name not in spoolers:
            del absent_since[name]
    out = []
    for name in sorted(spoolers):
        if name == me:
            continue
        doc = registry.get(name)
        if is_live(doc, now):
            absent_since.pop(name, None)
            continue
        if doc is not None:
            gone_at = float(doc["seen_at"]) + float(doc.get("ttl", 15.0))
        else:
            gone_at = absent_since.setdefault(name, now)
        if now - gone_at >= adopt_after:
            out.append(name)
    return out


def lease_ms(redis_timeout: float) -> int:
    """How long a lease lives unrenewed: a move and a renewal take two round trips at most.

    Short, because a node that starts waits while a lease on its name is held
    (at most this long, should the adopter die holding it).
    """
    return int(max(5.0, 4 * redis_timeout) * 1000)


# -- the Twisted part ------------------------------------------------------------------------------
class SpoolAdopter:
    """This node's side of adoption: records its spools, adopts departed nodes', waits on its own lease."""

    def __init__(self, redis, supervisor, registry, node: str, reactor, metrics, adopt_after: float,
                 timeout: float, *, keys: RedisKeys,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis  # the config Redis
        self.supervisor = supervisor
        self.registry = registry
        self.node = node
        self.reactor = reactor
        self.metrics = metrics
        self.adopt_after = adopt_after
        self.timeout = timeout
        self.keys = keys
        self.clock = clock
        self.lease_ms = lease_ms(timeout)
        self.absent_since: dict[str, float] = {}
        self._loop = task.LoopingCall(self._round)
        self._loop.clock = reactor
        self._busy = False

    def _bounded(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.timeout, self.reactor)

    # -- recording -----------------------------------------------------------------------------
    def record(self, drain_id: int) -> defer.Deferred:
        """This node spools for drain_id (called at its first spool write)."""
        d = self._bounded(self.redis.sadd(self.keys.spooled_drains(self.node), str(drain_id)))
        return d.addCallback(lambda _: self._bounded(self.redis.sadd(self.keys.spoolers, self.node)))

    # -- a starting node ------------------------------------------------------------------------
    async def wait_own_lease(self) -> None:
        """After a heartbeat, wait (at most one lease) while another node adopts this node's spools."""
        await self.registry.heartbeat()
        deadline = self.reactor.seconds() + self.lease_ms / 1000 + self.timeout
        told = False
        while self.reactor.seconds() < deadline:
            try:
                holder = await self._bounded(self.redis.get(self.keys.adoption_lease(self.node)))
            except Exception as e:  # noqa: BLE001 - the config Redis away: nothing to wait for here
                log.warn("spool_adoption_check_failed error={e!r}", e=str(e))
                return
            if holder is None:
                return
            if not told:
                told = True
                log.info("spool_adoption_wait adopter={adopter}: another node is taking over this "
                         "node's spools; the drains start once it is done", adopter=holder.decode())
            await task.deferLater(self.reactor, 0.2, lambda: None)

    # -- adopting ---------------------------------------------------------------------------------
    def start(self) -> None:
        interval = max(0.5, min(self.adopt_after / 2, 10.0))
        self._loop.start(interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _round(self) -> defer.Deferred:
        if self._busy:
            return defer.succeed(None)
        self._busy = True
        d = defer.ensureDeferred(self.adopt_departed())

        def done(result):
            self._busy = False
            return None

        d.addErrback(lambda f: log.warn("spool_adoption_failed error={e!r}", e=f.getErrorMessage()))
        return d.addBoth(done)

    async def adopt_departed(self) -> int:
        """One round: adopt the spools of every departed node this node can get a lease on."""
        spoolers = {n.decode() for n in await self._bounded(self.redis.smembers(self.keys.spoolers))}
        if not spoolers - {self.node}:
            return 0
        entries = await self._bounded(self.redis.hgetall(self.keys.nodes))
        registry = {name.decode(): json.loads(raw) for name, raw in entries.items()}
        total = 0
        for name in departed(spoolers, registry, self.node, self.clock(), self.absent_since,
                             self.adopt_after):
            total += await self.adopt(name)
        return total

    async def adopt(self, departed_node: str) -> int:
        """Adopt one departed node's spools under a lease; the messages adopted."""
        lease = self.keys.adoption_lease(departed_node)
        got = await self._bounded(self.redis.set(lease, self.node, pexpire=self.lease_ms,
                                                 only_if_not_exists=True))
        if not got:
            return 0  # another node is at it
        total = 0
        try:
            # After the lease: a node that came back heartbeat before looking at it.
            raw = await self._bounded(self.redis.hget(self.keys.nodes, departed_node))
            if raw is not None and is_live(json.loads(raw), self.clock()):
                self.absent_since.pop(departed_node, None)
                return 0
            drains_key = self.keys.spooled_drains(departed_node)
            drain_ids = sorted(int(x) for x in await self._bounded(self.redis.smembers(drains_key)))
            done = []
            for drain_id in drain_ids:
                worker = self.supervisor.workers.get(drain_id)
                if worker is None or worker.spool is None:
                    continue  # not a drain this node runs (yet): left for a later round
                renewed = await self._bounded(self.redis.eval(_RENEW, [lease], [self.node, self.lease_ms]))
                if not int(renewed or 0):
                    log.warn("spool_adoption_lease_lost departed={node}", node=departed_node)
                    break
                _chunks, messages, _dchunks, dropped = await self.supervisor.adopt_spool(worker, departed_node)
                done.append(str(drain_id))
                if messages:
                    total += messages
                    self.metrics.inc("logplex_spool_adopted_total", messages)
                    log.info("spool_adopted departed={node} drain={drain} messages={n} dropped={dropped}",
                             node=departed_node, drain=drain_id, n=messages, dropped=dropped)
            if done:
                await self._bounded(self.redis.srem(drains_key, done))
            if not await self._bounded(self.redis.scard(drains_key)):
                await self._bounded(self.redis.srem(self.keys.spoolers, departed_node))
                self.absent_since.pop(departed_node, None)
        finally:
            await self._bounded(self.redis.eval(_RELEASE, [lease], [self.node]))
        return total
