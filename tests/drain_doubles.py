"""Doubles of a drain's transport and spool, on a Clock: what the drain tests share."""

from twisted.internet import defer
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

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


# -- HTTP: the node's client and connections on StringTransports -------------------------------------
LINE = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - hello"
TIMEOUT = 5.0


class Connection:
    """One connection the drain made: what it wrote, and a way to answer."""

    def __init__(self, protocol, transport: StringTransport) -> None:
        self.protocol = protocol  # the drain's DrainConnection
        self.transport = transport
        self.lost = False

    def written(self) -> bytes:
        return self.transport.value()

    def headers(self) -> dict[bytes, bytes]:
        head = self.written().split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
        return {name.lower(): value.strip() for name, _, value in (h.partition(b":") for h in head)}

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.settle()

    def settle(self) -> None:
        """What the reactor would do after a read: a connection the drain dropped is lost."""
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionAborted()))

    def close(self) -> None:
        self.lost = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Wire:
    """Endpoints (as DrainEndpoints gives them) whose every connection is a StringTransport."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.transport = StringTransport  # what the next connection's transport is made by

    def endpoint(self, key):
        return self

    def connect(self, factory) -> defer.Deferred:
        protocol = factory.buildProtocol(None)
        transport = self.transport()
        protocol.makeConnection(transport)
        self.connections.append(Connection(protocol, transport))
        return defer.succeed(protocol)
