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

# Keeps a spool within its bound the way every write does: the oldest whole
# chunks of `list` go until `meta` counts at most `max` bytes (the last chunk
# always stays), except the chunk of frame id `protect` ('' if none), which is
# being delivered right now: dropping it would count its messages lost and
# deliver them both. Answers the messages and chunks dropped.
_TRIM = """
local function trim(list, meta, max, protect)
  local protected = '1 ' .. protect .. ' '
  local dropped, dropped_chunks = 0, 0
  while tonumber(redis.call('HGET', meta, 'bytes')) > max and redis.call('LLEN', list) > 1 do
    local head = redis.call('LPOP', list)
    if protect ~= '' and string.sub(head, 1, #protected) == protected then
      local victim = redis.call('LPOP', list)
      redis.call('LPUSH', list, head)
      head = victim
    end
    local n = tonumber(string.match(head, '^1 %S+ (%d+) '))
    redis.call('HINCRBY', meta, 'bytes', -#head)
    redis.call('HINCRBY', meta, 'messages', -n)
    dropped = dropped + n
    dropped_chunks = dropped_chunks + 1
  end
  return dropped, dropped_chunks
end
"""

# KEYS: list, meta. ARGV: chunk, message count, max bytes, '1' to push at the head,
# frame id of a chunk being delivered right now ('' if none): never dropped.
_PUSH = _TRIM + """
if ARGV[4] == '1' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('HINCRBY', KEYS[2], 'bytes', #ARGV[1])
redis.call('HINCRBY', KEYS[2], 'messages', tonumber(ARGV[2]))
local dropped = trim(KEYS[1], KEYS[2], tonumber(ARGV[3]), ARGV[5])
return {dropped, tonumber(redis.call('HGET', KEYS[2], 'bytes'))}
"""

# KEYS: list, meta. ARGV: frame id of the head chunk just delivered: removed
# only if it still is the head (a bound may have dropped it meanwhile).
_REMOVE_HEAD = """
local head = redis.call('LINDEX', KEYS[1], 0)
local removed = 0
if head and string.sub(head, 1, #ARGV[1] + 3) == '1 ' .. ARGV[1] .. ' ' then
  redis.call('LPOP', KEYS[1])
  redis.call('HINCRBY', KEYS[2], 'bytes', -#head)
  redis.call('HINCRBY', KEYS[2], 'messages', -tonumber(string.match(head, '^1 %S+ (%d+) ')))
  if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
  removed = 1
end
"""
_BYTES = "tonumber(redis.call('HGET', KEYS[2], 'bytes') or 0)"
_ACK = _REMOVE_HEAD + "return {removed, " + _BYTES + "}"
# The same, answering the next chunk: one round trip per batch while a spool drains.
_ACK_NEXT = _REMOVE_HEAD + "return {redis.call('LINDEX', KEYS[1], 0), " + _BYTES + "}"


# KEYS: a departed node's list and meta, this node's list and meta. ARGV: max
# bytes, frame id of a chunk being delivered right now ('' if none). Moves every
# chunk of the departed spool, in order, to the tail of this node's spool in one
# step (so a returning node finds nothing, and nothing is moved twice), then
# keeps this node's bound the way a push does: the oldest whole chunks go.
_ADOPT = _TRIM + """
local chunks, messages = 0, 0
while true do
  local chunk = redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT')
  if not chunk then break end
  local n = tonumber(string.match(chunk, '^1 %S+ (%d+) '))
  redis.call('HINCRBY', KEYS[4], 'bytes', #chunk)
  redis.call('HINCRBY', KEYS[4], 'messages', n)
  chunks = chunks + 1
  messages = messages + n
end
redis.call('DEL', KEYS[2])
local dropped, dropped_chunks = 0, 0
if chunks > 0 then
  dropped, dropped_chunks = trim(KEYS[3], KEYS[4], tonumber(ARGV[1]), ARGV[2])
end
return {chunks, messages, dropped_chunks, dropped, tonumber(redis.call('HGET', KEYS[4], 'bytes') or 0)}
"""


class Spool:
    """One drain's spool on one node, on the shard that holds its channel's backlog."""

    def __init__(self, redis, drain_id: int, node: str, reactor, max_bytes: int,
                 timeout: float = 5.0, *, keys: RedisKeys) -> None:
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
