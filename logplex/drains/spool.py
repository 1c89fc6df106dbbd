"""A drain's spool: batches that could not be delivered in time, kept in order in Redis.

One list per drain and node, bounded in bytes: the scripts keep the list and
its byte and message counts in step atomically, and a push over the bound
drops whole chunks from the head (the oldest) and says exactly how many
messages went, so the L10 count is exact. Every script also answers the
bytes the list holds afterwards, which is how a node keeps the sum of its
spools within --drain-spool-total-bytes.
"""

from __future__ import annotations

from twisted.internet import defer

from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua


def _spool_script(name: str) -> str:
    """A spool script (scripts/spool_<name>.lua) with the functions they share in front."""
    return lua("logplex.drains", "spool_lib") + lua("logplex.drains", "spool_" + name)


_PUSH = _spool_script("push")
_ACK = _spool_script("ack")
# The same, answering the next chunk: one round trip per batch while a spool drains.
_ACK_NEXT = _spool_script("ack_next")
# A departed node's spool, moved to the tail of this node's in one step.
_ADOPT = _spool_script("adopt")


class Spool:
    """One drain's spool on one node, on the shard that holds its channel's backlog."""

    def __init__(self, redis, drain_id: int, node: str, reactor, max_bytes: int,
                 timeout: float, *, keys: RedisKeys) -> None:
        self.redis = redis
        self.key = keys.spool(drain_id, node)
        self.meta = keys.spool_meta(self.key)
        self.reactor = reactor
        self.max_bytes = max_bytes
        self.timeout = timeout
        # What the list held after the last script this node ran on it.
        self.bytes = 0
        self.drain_id = drain_id
        self.node = node
        self.keys = keys
        # Called once, at the first write: the config Redis learns this node
        # spools for this drain (where an adopter looks if the node departs).
        self.on_first_write = None
        self._announced = False

    def _bounded(self, d: defer.Deferred) -> defer.Deferred:
        return d.addTimeout(self.timeout, self.reactor)

    def push(self, chunk: bytes, count: int, at_head: bool = False, protect: str = "",
             max_bytes: int | None = None) -> defer.Deferred:
        """Append a chunk (or put it back in front); fires with the messages dropped to fit.

        protect names a chunk (by frame id) that is being delivered: it is
        never dropped. max_bytes, when given, is a tighter bound than the
        spool's own (the node's total is nearly used up).
        """
        bound = self.max_bytes if max_bytes is None else min(self.max_bytes, max_bytes)
        self.announce()
        d = self.redis.eval(_PUSH, [self.key, self.meta],
                            [chunk, count, bound, "1" if at_head else "0", protect])
        return self._bounded(d).addCallback(self._counted)

    def announce(self) -> None:
        """Say once (through on_first_write) that this node spools for this drain."""
        if not self._announced and self.on_first_write is not None:
            self._announced = True

            def again(failure) -> None:
                # Not recorded: the next write tries again (unrecorded, this
                # spool could not be adopted if the node departed).
                self._announced = False

            d = defer.maybeDeferred(self.on_first_write, self.drain_id)
            d.addErrback(again)

    def adopt(self, departed: str, protect: str = "", max_bytes: int | None = None) -> defer.Deferred:
        """Move a departed node's spool of this drain to the tail of this one, atomically.

        Fires with (chunks, messages) moved and (chunks, messages) dropped
        from the head to keep the bound (the oldest go, as for a push).
        """
        bound = self.max_bytes if max_bytes is None else min(self.max_bytes, max_bytes)
        theirs = self.keys.spool(self.drain_id, departed)
        d = self.redis.eval(_ADOPT, [theirs, self.keys.spool_meta(theirs), self.key, self.meta],
                            [bound, protect])

        def moved(answer):
            chunks, messages, dropped_chunks, dropped, size = (int(x or 0) for x in answer)
            self.bytes = size
            if chunks:
                self.announce()
            return chunks, messages, dropped_chunks, dropped

        return self._bounded(d).addCallback(moved)

    def _counted(self, answer):
        first, size = answer
        self.bytes = int(size or 0)
        return first

    def head(self) -> defer.Deferred:
        return self._bounded(self.redis.lindex(self.key, 0))

    def ack(self, frame_id: str) -> defer.Deferred:
        d = self.redis.eval(_ACK, [self.key, self.meta], [frame_id])
        return self._bounded(d).addCallback(self._counted).addCallback(lambda n: int(n) == 1)

    def ack_next(self, frame_id: str) -> defer.Deferred:
        """Remove the delivered head chunk (if it still is the head); fires with the next, or None."""
        d = self.redis.eval(_ACK_NEXT, [self.key, self.meta], [frame_id])
        return self._bounded(d).addCallback(self._counted)

    def depth(self) -> defer.Deferred:
        """(chunks, messages) in the spool."""
        d = self._bounded(self.redis.llen(self.key))

        def with_messages(chunks):
            return self._bounded(self.redis.hmget(self.meta, ["messages", "bytes"])).addCallback(
                lambda counts: found(chunks, *counts))

        def found(chunks, messages, size):
            self.bytes = int(size or 0)
            return int(chunks), int(messages or 0)

        return d.addCallback(with_messages)

    def delete(self) -> defer.Deferred:
        self.bytes = 0
        return self._bounded(self.redis.delete([self.key, self.meta]))
