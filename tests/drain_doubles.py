"""Doubles of a drain's transport and spool, on a Clock: what the drain tests share."""

from twisted.internet import defer

from logplex.drains.formats import decode_chunk
from logplex.drains.policy import Outcome


def msg(n):
    return b"<13>1 2026-11-24T10:00:00+00:00 host app web.1 - - line %06d" % n


class Endpoint:
    """A transport double whose answer the test sets; records what was sent."""

    def __init__(self):
        self.answer = Outcome.ok()
        self.sent = []  # (frame_id, messages, answer)
        self.stopped = 0

    def send(self, messages, frame_id):
        self.sent.append((frame_id, list(messages), self.answer))
        return defer.succeed(self.answer)

    def stop(self):
        self.stopped += 1
        return defer.succeed(None)

    def delivered(self):
        seen, out = set(), []
        for frame_id, messages, answer in self.sent:
            if answer.delivered and frame_id not in seen:
                seen.add(frame_id)
                out.extend(messages)
        return out


class MemorySpool:
    """The Redis spool's contract, in memory: ordered chunks, bounded by bytes."""

    def __init__(self, max_bytes=10**9):
        self.chunks = []
        self.max_bytes = max_bytes
        self.dropped = 0
        self.broken = False

    def _check(self):
        if self.broken:
            raise ConnectionError("spool Redis down")

    @property
    def bytes(self):
        return sum(map(len, self.chunks))

    def push(self, chunk, count, at_head=False, protect="", max_bytes=None):
        return defer.maybeDeferred(self._push, chunk, count, at_head, protect, max_bytes)

    def _push(self, chunk, count, at_head, protect, max_bytes):
        self._check()
        self.pushed_with = max_bytes
        bound = self.max_bytes if max_bytes is None else min(self.max_bytes, max_bytes)
        self.chunks.insert(0, chunk) if at_head else self.chunks.append(chunk)
        dropped = 0
        while self.bytes > bound and len(self.chunks) > 1:
            victim = 1 if protect and decode_chunk(self.chunks[0])[0] == protect else 0
            dropped += len(decode_chunk(self.chunks.pop(victim))[1])
        self.dropped += dropped
        return dropped

    def head(self):
        return defer.maybeDeferred(lambda: (self._check(), self.chunks[0] if self.chunks else None)[1])

    def ack(self, frame_id):
        def ack():
            self._check()
            if self.chunks and decode_chunk(self.chunks[0])[0] == frame_id:
                self.chunks.pop(0)
                return True
            return False
        return defer.maybeDeferred(ack)

    def ack_next(self, frame_id):
        return self.ack(frame_id).addCallback(lambda _: self.chunks[0] if self.chunks else None)

    def depth(self):
        return defer.succeed((len(self.chunks), sum(len(decode_chunk(c)[1]) for c in self.chunks)))

    def delete(self):
        self.chunks = []
        return defer.succeed(None)
