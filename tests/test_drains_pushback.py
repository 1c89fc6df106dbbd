"""logplex.drains.pushback: when a drain may hold its senders, and letting them go."""

from twisted.internet.task import Clock

from logplex.drains.pushback import PushbackGate


def test_only_a_quick_endpoint_with_pushback_on_may_hold_senders():
    clock = Clock()
    assert not PushbackGate(0.0, clock.seconds).quick(in_flight=False)
    gate = PushbackGate(0.1, clock.seconds)
    assert gate.quick(in_flight=False)
    gate.sent()
    clock.advance(0.05)
    assert gate.quick(in_flight=True)
    clock.advance(0.05)
    assert not gate.quick(in_flight=True), "the batch in flight is late: the endpoint is slow"
    gate.answered()
    assert gate.last_rtt == 0.1 and not gate.quick(in_flight=False)
    gate.sent()
    clock.advance(0.01)
    gate.answered()
    assert gate.quick(in_flight=False)


def test_held_senders_go_on_at_release_and_one_that_gave_up_is_forgotten():
    gate = PushbackGate(0.1, Clock().seconds)
    first, second = gate.wait(), gate.wait()
    assert gate.holding_anyone
    gate.forget(second)
    gate.forget(second)  # twice is harmless
    gate.release()
    assert first.called and not second.called and not gate.holding_anyone
