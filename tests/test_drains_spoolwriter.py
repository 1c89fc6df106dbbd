"""logplex.drains.spoolwriter: a drain's overflow goes to its spool in order, a chunk at a time, on a Clock."""

from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.drains.formats import decode_chunk
from logplex.drains.queue import Batch, DrainQueue
from logplex.drains.spoolwriter import SPILL_DELAY, SpoolWriter
from tests.drain_doubles import MemorySpool, msg

CHUNK = 10 * len(msg(0))


def make(failing=False, spool=None):
    clock = Clock()
    queue = DrainQueue(capacity=5, clock=clock.seconds)
    errors = []
    spool = spool if spool is not None else MemorySpool()
    writer = SpoolWriter(spool, queue, clock.seconds, clock, CHUNK, failing=lambda: failing,
                         protect=lambda: "", on_error=errors.append)
    return writer, queue, spool, clock, errors


def spooled(spool):
    return [decode_chunk(c)[1] for c in spool.chunks]


def test_a_full_chunk_of_overflow_goes_at_once_and_less_waits_while_the_endpoint_works():
    writer, queue, spool, clock, _ = make()
    queue.push([msg(n) for n in range(12)])  # 7 in overflow: less than a chunk
    writer.overflowed(holding=False)
    clock.advance(SPILL_DELAY)
    assert spool.chunks == [] and len(queue.overflow) == 7
    queue.push([msg(n) for n in range(12, 20)])  # 15 in overflow
    writer.overflowed(holding=False)
    assert spooled(spool) == [[msg(n) for n in range(10)]]
    assert (writer.chunks, writer.messages) == (1, 10)


def test_while_the_endpoint_fails_a_partial_chunk_goes_after_the_spill_delay():
    writer, queue, spool, clock, _ = make(failing=True)
    queue.push([msg(n) for n in range(8)])
    writer.overflowed(holding=False)
    assert spool.chunks == []
    clock.advance(SPILL_DELAY)
    assert spooled(spool) == [[msg(0), msg(1), msg(2)]]


def test_a_failed_write_puts_its_messages_back_in_front_and_a_later_try_keeps_the_order():
    spool = MemorySpool()
    spool.broken = True
    writer, queue, _, clock, errors = make(spool=spool)
    queue.push([msg(n) for n in range(25)])
    writer.overflowed(holding=False)
    assert errors == ["spool write failed: spool Redis down"] and queue.degraded
    assert queue.overflow == [msg(n) for n in range(20)] and (writer.chunks, writer.messages) == (0, 0)
    spool.broken = False
    clock.advance(SPILL_DELAY)
    assert spooled(spool) == [[msg(n) for n in range(10)], [msg(n) for n in range(10, 20)]]
    assert not queue.degraded


def test_operations_run_in_the_order_asked_even_after_one_fails():
    writer, _, _, _, _ = make()
    gate, seen = defer.Deferred(), []
    writer.run(lambda: gate)
    writer.run(lambda: seen.append("second") or defer.fail(ConnectionError("down"))).addErrback(
        lambda f: seen.append("second failed"))
    writer.run(seen.append, "third")
    assert seen == []
    gate.callback(None)
    assert seen == ["second", "second failed", "third"]


def test_a_stop_spools_the_batch_in_flight_in_front_under_its_frame_id_then_everything_held():
    writer, queue, spool, _, _ = make()
    queue.push([msg(n) for n in range(10, 14)])
    unsent = Batch([msg(n) for n in range(10)], "inflight")
    d = writer.stop(unsent)
    assert d.called and writer.stopped
    assert decode_chunk(spool.chunks[0])[0] == "inflight"
    assert spooled(spool) == [[msg(n) for n in range(10)], [msg(n) for n in range(10, 14)]]
    assert queue.pending == 0
