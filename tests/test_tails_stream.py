"""Tests for logplex.tails.stream: the HTTP shell of a tail, on a DummyRequest (no sockets)."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.web.test.requesthelper import DummyRequest

from logplex.http.routing import HttpError
from logplex.metrics import Metrics
from logplex.model import SessionSpec
from logplex.settings import TailSettings
from logplex.tails.session import TailRegistry, TailSession
from logplex.tails.stream import BACKLOG_DOWN, TailStream

LINE = b"<134>1 2026-11-24T10:00:00+00:00 host app web.1 - - hello"


class Backlogs:
    def __init__(self, lines=(), fail: bool = False) -> None:
        self.lines, self.fail = list(lines), fail
        self.pending: defer.Deferred | None = None

    def recent(self, channel_id, num, max_bytes):
        if self.fail:
            return defer.fail(ConnectionError("shard down"))
        self.pending = defer.Deferred()
        return self.pending


class Request(DummyRequest):
    """A DummyRequest that takes a push producer as a transport does (DummyRequest's loops on it)."""

    producer = None

    def registerProducer(self, producer, streaming):
        assert streaming
        self.producer = producer


class World:
    def __init__(self, tail: bool = True) -> None:
        self.metrics = Metrics()
        self.registry = TailRegistry(self.metrics)
        self.request = Request([b""])
        self.gone_calls = 0
        self.tail = TailSession(SessionSpec("s", "app", tail=True), self.request.write, self.metrics,
                                TailSettings()) if tail else None
        self.stream = TailStream(self.request, self.registry, self.tail, on_gone=self.on_gone)

    def on_gone(self) -> None:
        self.gone_calls += 1
        self.stream.finish(b"the end\n")


def read(stream: TailStream, backlogs: Backlogs):
    results = []
    defer.ensureDeferred(stream.backlog(backlogs, "app", 10, 1 << 20)).addBoth(results.append)
    return results


def test_the_tail_is_registered_before_the_backlog_is_read_and_hears_what_comes_meanwhile():
    world = World()
    assert world.registry.has_tails("app")
    backlogs = Backlogs()
    results = read(world.stream, backlogs)
    world.registry.publish("app", [LINE])
    backlogs.pending.callback([])
    assert results == [[]]
    world.stream.start({b"content-type": b"text/plain"}, b"")
    world.stream.go_live([])
    assert world.stream.live and world.request.producer is world.tail
    assert b"hello" in b"".join(world.request.written)


def test_a_backlog_shard_that_does_not_answer_is_503_and_the_tail_is_dropped():
    world = World()
    (failure,) = read(world.stream, Backlogs(fail=True))
    assert isinstance(failure.value, HttpError) and failure.value.status == 503
    assert failure.value.message == BACKLOG_DOWN
    assert not world.registry.has_tails("app")


def test_a_client_gone_unregisters_the_tail_and_marks_the_stream_closed():
    world = World()
    world.request.finish()
    assert world.stream.closed and not world.registry.has_tails("app")


def test_a_channel_deleted_before_the_stream_is_live_is_only_noted():
    world = World()
    world.registry.end_channel("app", None)
    assert world.stream.gone and world.gone_calls == 0 and not world.request.finished


def test_a_channel_deleted_while_live_ends_the_answer_with_its_last_words():
    world = World()
    world.stream.start({}, b"")
    world.stream.go_live([])
    world.registry.end_channel("app", None)
    assert world.gone_calls == 1
    assert world.request.written[-1] == b"the end\n" and world.request.finished == 1


@pytest.mark.parametrize("last", [b"", b"bye\n"])
def test_a_read_without_a_tail_finishes_once(last):
    world = World(tail=False)
    world.stream.start({b"connection": b"close"}, b"backlog\n")
    world.stream.finish(last)
    world.stream.finish(b"again\n")
    assert world.request.responseCode == 200
    assert b"".join(world.request.written) == b"backlog\n" + last
    assert world.request.finished == 1
