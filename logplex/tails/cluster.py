"""The cluster: live tail traffic between nodes over Redis pub/sub, and the node registry.

A node publishes a channel's messages on the bus only while some other node
tails that channel, and a node subscribes only to the channels it tails:
nobody receives traffic nobody reads. Interest is announced in the config
Redis (a hash of node|channel with an expiry, refreshed while the tail
lives) and on the change feed, so a node that dies stops counting by itself.

Each batch on the bus names the incarnation of the channel it was routed
to, so a tail of a deleted channel never hears a new channel of its name,
even from a node that learnt of the change before this one did.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from logplex import __version__
from logplex.framing import decode_logplex1, encode_logplex1
from logplex.redis.subscription import Subscription
from logplex.redis.keys import RedisKeys
from logplex.settings import NodeSettings
from logplex.tails.session import TailRegistry

log = Logger()

INTEREST_TTL = 30.0
# How long published lines wait to go out together on the bus.
FLUSH_INTERVAL = 0.01
# A node is gone when it missed this many heartbeats.
MISSED_HEARTBEATS = 3


class ClusterTails:
    """The router's tail sink for a cluster: local tails, plus the bus for remote ones."""

    def __init__(self, local: TailRegistry, redis, address, node: str, reactor, metrics, timeout: float,
                 incarnation_of: Callable[[str], str | None] = lambda channel_id: None, *,
                 keys: RedisKeys) -> None:
        self.keys = keys
        self.timeout = timeout
        # The channel's incarnation in this node's config cache (None: not known).
        self.incarnation_of = incarnation_of
        self.local = local
        self.redis = redis  # one connection: publishes from a node stay in order
        self.node = node
        self.reactor = reactor
        self.metrics = metrics
        self.flush_interval = FLUSH_INTERVAL
        self.remote: dict[str, dict[str, float]] = {}  # channel -> {node: expiry}
        # (channel, incarnation it was routed to) -> lines for the bus
        self.pending: dict[tuple[str, str | None], list[bytes]] = {}
        self._flush_call = None
        self._prefix = node.encode() + b"\n"
        self.subscription = Subscription(address, self._on_message, self._on_connected, reactor)
        self._refresh = task.LoopingCall(self._announce_all)
        self._refresh.clock = reactor

    # -- the router's side (hot path) ----------------------------------------------
    def tailed(self, channel_ids) -> set[str]:
        """Those of these channels (a set or keys view) that have a tail here or on another node."""
        found = channel_ids & self.local.by_channel.keys()
        if self.remote:
            found |= channel_ids & self.remote.keys()
        return found

    def publish(self, channel_id: str, messages: list[bytes]) -> None:
        if channel_id in self.local.by_channel:
            self.local.publish(channel_id, messages)
        if channel_id in self.remote:
            key = (channel_id, self.incarnation_of(channel_id))
            queued = self.pending.get(key)
            if queued is None:
                self.pending[key] = list(messages)
            else:
                queued.extend(messages)
            if self._flush_call is None:
                self._flush_call = self.reactor.callLater(self.flush_interval, self._flush)

    def _flush(self) -> None:
        # One PUBLISH per channel per tick, whatever the number of messages.
        self._flush_call = None
        batches, self.pending = self.pending, {}
        for (channel_id, incarnation), messages in batches.items():
            if not self.subscription.connected:
                # The bus Redis is away: nobody could receive this. Dropped
                # and counted now, rather than queued without bound and sent
                # before the other nodes have subscribed again.
                self.metrics.inc("logplex_tail_bus_dropped_total", len(messages))
                continue
            # "node incarnation\n": a node of the previous version reads the
            # whole first line as a node name, which is never its own.
            prefix = self._prefix if incarnation is None else (
                self.node.encode() + b" " + incarnation.encode() + b"\n")
            payload = prefix + encode_logplex1(messages)
            d = self.redis.publish(self.keys.tail(channel_id), payload)
            d.addTimeout(self.timeout, self.reactor)
            d.addCallbacks(self._published, self._publish_failed,
                           callbackArgs=(channel_id, len(messages)),
                           errbackArgs=(channel_id, len(messages)))

    def _published(self, receivers, channel_id, count) -> None:
        if not int(receivers or 0) and channel_id in self.remote:
            # Another node said it tails the channel, yet nobody heard: it is
            # between a reconnect and its resubscription. Those lines are lost
            # to its tail: count them.
            self.metrics.inc("logplex_tail_bus_dropped_total", count)

    def _publish_failed(self, failure, channel_id, count):
        self.metrics.inc("logplex_tail_bus_dropped_total", count)
        log.warn("tail_bus_publish_failed channel={channel} error={e!r}", channel=channel_id,
                 e=failure.getErrorMessage())

    # -- the bus's side -------------------------------------------------------------------
    def _on_message(self, channel: bytes, payload: bytes) -> None:
        channel_id = self.keys.channel_of_tail(channel)
        if channel_id is None:
            return
        first, _, body = payload.partition(b"\n")
        sender, named, incarnation = first.partition(b" ")
        if sender == self.node.encode():
            return
        messages = decode_logplex1(body, 1 << 30)
        self.metrics.inc("logplex_tail_bus_received_total", len(messages))
        # Only the tails of the channel these lines were routed to (any tail
        # of the name when a node of the previous version sent them).
        self.local.publish(channel_id, messages, incarnation.decode() if named else None)

    def on_feed(self, message: bytes) -> None:
        """`tail +channel node` / `tail -channel node` from the change feed."""
        _, _, rest = message.partition(b" ")
        sign_channel, _, node = rest.partition(b" ")
        node = node.decode()
        if node == self.node or not sign_channel:
            return
        channel_id = sign_channel[1:].decode()
        if sign_channel[:1] == b"+":
            self.remote.setdefault(channel_id, {})[node] = self.reactor.seconds() + INTEREST_TTL
        else:
            self._forget(channel_id, node)

    def _forget(self, channel_id: str, node: str) -> None:
        nodes = self.remote.get(channel_id)
        if nodes is not None:
            nodes.pop(node, None)
            if not nodes:
                del self.remote[channel_id]

    def _on_connected(self) -> None:
        self.load_interest().addErrback(
            lambda f: log.warn("tail_interest_load_failed error={e!r}", e=f.getErrorMessage()))

    def load_interest(self) -> defer.Deferred:
        """Everyone's tail interest, from the config Redis (at start and after a reconnect)."""
        def loaded(entries):
            now = time.time()
            remote: dict[str, dict[str, float]] = {}
            for field, expiry in entries.items():
                node, channel_id = self.keys.interest_of(field)
                left = float(expiry) - now
                if node != self.node and left > 0:
                    remote.setdefault(channel_id, {})[node] = self.reactor.seconds() + left
            self.remote = remote

        return self.redis.hgetall(self.keys.tailing).addTimeout(self.timeout, self.reactor).addCallback(loaded)

    # -- this node's interest -----------------------------------------------------------------
    def first_tail(self, channel_id: str) -> None:
        """The local registry's first tail of a channel: hear the channel on the bus, and say so."""
        self.subscription.subscribe([self.keys.tail(channel_id)])
        self._announce(channel_id, True)

    def last_tail(self, channel_id: str) -> None:
        self.subscription.unsubscribe([self.keys.tail(channel_id)])
        self._announce(channel_id, False)

    def _announce(self, channel_id: str, on: bool):
        field = self.keys.tail_interest(self.node, channel_id)
        if on:
            d = self.redis.hset(self.keys.tailing, field, str(time.time() + INTEREST_TTL))
        else:
            d = self.redis.hdel(self.keys.tailing, field)
        sign = "+" if on else "-"
        d.addCallback(lambda _: self.redis.publish(self.keys.feed, f"tail {sign}{channel_id} {self.node}"))
        # txredisapi waits for a connection without limit; a stop must not.
        d.addTimeout(self.timeout, self.reactor)
        return d.addErrback(lambda f: log.warn("tail_interest_announce_failed error={e!r}", e=f.getErrorMessage()))

    def _announce_all(self):
        # Refresh our interest before it expires, and let stale remote
        # interest (a node that died without saying so) lapse.
        now = self.reactor.seconds()
        for channel_id, nodes in list(self.remote.items()):
            for node, expiry in list(nodes.items()):
                if expiry < now:
                    self._forget(channel_id, node)
        return defer.DeferredList(
            [self._announce(ch, True) for ch in list(self.local.by_channel)], consumeErrors=True)

    def start(self) -> None:
        self.subscription.start()
        self._refresh.start(INTEREST_TTL / 3, now=False)

    def stop(self) -> defer.Deferred:
        if self._refresh.running:
            self._refresh.stop()
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self._flush()
        withdrawn = [self._announce(ch, False) for ch in list(self.local.by_channel)]
        return defer.DeferredList(withdrawn, consumeErrors=True).addBoth(
            lambda _: self.subscription.stop())


class NodeRegistry:
    """This node's heartbeat in the config Redis, and the list of live nodes."""

    def __init__(self, redis, node: NodeSettings, reactor, timeout: float, *, keys: RedisKeys,
                 api_url: Callable[[], str] = lambda: "",
                 shard_map_version: Callable[[], int | None] = lambda: None) -> None:
        self.keys = keys
        self.timeout = timeout
        self.redis = redis
        self.node = node.name
        self.reactor = reactor
        self.api_url = api_url
        self.started = time.time()
        self.interval = node.heartbeat
        # The shard map version this node uses (None: not known yet), reported with each beat.
        self.shard_map_version = shard_map_version
        self._beat = task.LoopingCall(self.heartbeat)
        self._beat.clock = reactor

    def heartbeat(self):
        doc = json.dumps({"version": __version__, "started_at": self.started, "seen_at": time.time(),
                          "ttl": self.interval * MISSED_HEARTBEATS, "api_url": self.api_url(),
                          "pid": os.getpid(), "shard_map_version": self.shard_map_version()})
        d = self.redis.hset(self.keys.nodes, self.node, doc).addTimeout(self.timeout, self.reactor)
        return d.addErrback(lambda f: log.warn("node_heartbeat_failed error={e!r}", e=f.getErrorMessage()))

    def start(self) -> None:
        self._beat.start(self.interval, now=True)

    def stop(self) -> defer.Deferred:
        if self._beat.running:
            self._beat.stop()
        return self.redis.hdel(self.keys.nodes, self.node).addTimeout(self.timeout, self.reactor).addErrback(
            lambda _: None)

    async def live(self) -> list[dict]:
        """Nodes heard from within their own TTL; the dead are removed as they are found."""
        entries = await self.redis.hgetall(self.keys.nodes).addTimeout(self.timeout, self.reactor)
        now = time.time()
        out, dead = [], []
        for name, raw in entries.items():
            doc = json.loads(raw)
            if now - doc["seen_at"] > doc.get("ttl", 15.0):
                dead.append(name)
                continue
            out.append({"node": name.decode(), "version": doc["version"],
                        "uptime": round(now - doc["started_at"], 1), "api_url": doc.get("api_url", ""),
                        "pid": doc.get("pid"), "shard_map_version": doc.get("shard_map_version")})
        if dead:
            await self.redis.hdel(self.keys.nodes, dead).addTimeout(self.timeout, self.reactor)
        return sorted(out, key=lambda n: n["node"])
