"""What /healthcheck says: the node's phase and each Redis dependency's state, known without a round trip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import attrs
from twisted.internet import defer

# The node's phases, as /healthcheck's "status" names them.
NORMAL = "normal"
DEGRADED = "degraded"  # serving, but a Redis dependency is down
BOOTING = "booting"
STOPPING = "stopping"
INGRESS_OFF = "ingress off"

UP = "up"
DOWN = "down"

# The log input answers in the words logplex's log input used.
_WORDS = {NORMAL: b"OK", DEGRADED: b"OK", BOOTING: b"SYSTEM BOOTING",
          STOPPING: b"STOPPING", INGRESS_OFF: b"INGRESS OFF"}


@attrs.frozen
class Health:
    """One answer of /healthcheck: the status and the state of the config Redis and of each shard."""

    status: str
    config_redis: str = DOWN
    shards: tuple[tuple[str, str], ...] = ()
    # "refused" while the node refuses what the config Redis holds (empty,
    # another cluster's, older) and routes from the config it holds.
    config: str = "current"

    @property
    def serving(self) -> bool:
        """Whether a load balancer should send this node logs: the node can route them.

        A Redis that is down does not stop routing (tails and drains go on,
        backlog writes are retried and, past their bound, counted as drops),
        and every node of a cluster shares the same Redis: taking them all
        out of the balancer for it would lose every line instead of some.
        """
        return self.status in (NORMAL, DEGRADED)

    @property
    def code(self) -> int:
        return 200 if self.serving else 503

    def document(self) -> dict:
        document = {"status": self.status, "config_redis": self.config_redis, "shards": dict(self.shards)}
        if self.config != "current":
            # Only then: the answer a monitor already parses does not change.
            document["config"] = self.config
        return document

    def words(self) -> bytes:
        """The log input's plain-text answer: OK, SYSTEM BOOTING, STOPPING or INGRESS OFF."""
        return _WORDS[self.status]


def assess(*, stopping: bool, ready: bool, ingress: bool, config_redis: bool | None,
           shards: Mapping[str, bool], config_refused: bool = False) -> Health:
    """The node's health from what it already knows: its phase and its pools' connections.

    config_redis is None before the node has a config Redis pool at all.
    A stopping node says so first (it will not come back), then a node
    that is not ready (config not loaded, listeners not all bound), then
    the admin shell's ingress switch. A node that refuses the config
    Redis's contents still routes (from its cache): degraded, not down.
    """
    config = UP if config_redis else DOWN
    shard_states = tuple(sorted((name, UP if up else DOWN) for name, up in shards.items()))
    if stopping:
        status = STOPPING
    elif not ready:
        status = BOOTING
    elif not ingress:
        status = INGRESS_OFF
    elif config == DOWN or config_refused or any(state == DOWN for _, state in shard_states):
        status = DEGRADED
    else:
        status = NORMAL
    return Health(status, config, shard_states, "refused" if config_refused else "current")


def pool_connected(pool) -> bool:
    """Whether a txredisapi pool holds at least one connection past its handshake (AUTH, SELECT).

    The pool adds a connection once its handshake is done and removes it
    when the connection is lost, so this is what the pool itself knows: no
    command is sent. A Redis that hangs without closing its connections
    shows as up until the connections time out.
    """
    factory = getattr(pool, "_factory", None)
    return bool(factory is not None and getattr(factory, "size", 0))


class NodeHealth:
    """A node's /healthcheck, from its router's ingress switch, its config and its Redis pools.

    The node flips `ready` once every listener is bound and `stopping` when it stops.
    """

    def __init__(self, router, store, config_pool, shard_pools: Mapping[str, object]) -> None:
        self.router = router
        self.store = store
        self.config_pool = config_pool
        self.shard_pools = shard_pools  # shard name -> pool, as the backlog writer holds them
        self.ready = False
        self.stopping = False

    def __call__(self) -> Health:
        """What /healthcheck answers, on the API and the log input: no Redis command is sent."""
        return assess(
            stopping=self.stopping,
            ready=self.ready and self.store.loaded,
            ingress=not self.router.deny_ingress,
            config_redis=pool_connected(self.config_pool),
            shards={name: pool_connected(pool) for name, pool in self.shard_pools.items()},
            config_refused=self.store.refused is not None,
        )


class BootWait:
    """Requests that reach a worker while it boots wait for the boot, for `hold` seconds at most.

    Under --workers every worker's socket is in the node's listeners from the
    start, and the kernel hands each new connection to any of them: a worker
    still loading its config would answer 503 SYSTEM BOOTING to a client whose
    last request, a moment ago, a sibling served. So such a request waits, and
    is answered as usual once the boot got far enough, or when the hold is
    up (a config Redis that does not answer still gets its 503). A single
    process (hold 0) answers at once: nobody else could serve the request.
    The node calls changed() after each step of its boot.
    """

    def __init__(self, clock, hold: float) -> None:
        self.clock = clock
        self.hold = hold
        self._waiting: list[tuple[Callable[[], bool], defer.Deferred, object]] = []

    def until(self, done: Callable[[], bool]) -> defer.Deferred:
        """Fires (with None, never failing) once done() is true, or after the hold."""
        if self.hold <= 0 or done():
            return defer.succeed(None)
        d = defer.Deferred()
        entry = (done, d, self.clock.callLater(self.hold, lambda: self._release(entry)))
        self._waiting.append(entry)
        return d

    async def health(self, health: Callable[[], Health]) -> Health:
        """What /healthcheck answers: booting only if the boot is not over within the hold."""
        if health().status == BOOTING:
            await self.until(lambda: health().status != BOOTING)
        return health()

    def changed(self) -> None:
        """The boot moved on: release the requests whose condition now holds."""
        for entry in [e for e in self._waiting if e[0]()]:
            entry[2].cancel()
            self._release(entry)

    def _release(self, entry) -> None:
        self._waiting.remove(entry)
        entry[1].callback(None)
