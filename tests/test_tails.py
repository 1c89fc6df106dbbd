"""Tail filters, bounded tail buffers and the L11 line."""

from logplex.metrics import Metrics
from logplex.model import SessionSpec
from logplex.tails import TailBuffer, TailFilter, TailRegistry, TailSession, l11_line


def msg(name, procid, text):
    return f"<13>1 2026-11-24T10:00:00+00:00 host {name} {procid} - - {text}".encode()


def line(name, procid, text):
    return f"2026-11-24T10:00:00+00:00 {name}[{procid}]: {text}\n".encode()


def test_filters_by_ps_prefix_and_exact_source():
    messages = [msg("app", "web.1", "a"), msg("app", "worker.1", "b"),
                msg("router", "web.2", "c"), msg("app", "web", "d"), msg("app", "webx.1", "e")]
    assert TailFilter("web", None).lines(messages) == [
        line("app", "web.1", "a"), line("router", "web.2", "c"), line("app", "web", "d")]
    assert TailFilter(None, "router").lines(messages) == [line("router", "web.2", "c")]
    assert TailFilter("web", "app").lines(messages) == [line("app", "web.1", "a"), line("app", "web", "d")]
    assert len(TailFilter(None, None).lines(messages)) == 5


def test_buffer_keeps_the_newest_lines_and_reports_the_loss_once():
    now = [1000.0]
    buf = TailBuffer(size=3, clock=lambda: now[0])
    assert buf.put([b"1\n", b"2\n"]) == 0
    now[0] = 1001.0
    assert buf.put([b"3\n", b"4\n", b"5\n"]) == 2
    now[0] = 1002.0
    assert buf.take() == l11_line(2, 1001.0, 1002.0) + b"3\n4\n5\n"
    assert buf.take() == b""
    assert buf.dropped_total == 2


def test_l11_wording():
    assert l11_line(7, 0.0, 60.0) == (
        b"1970-01-01T00:01:00.000000+00:00 logplex[1]: Error L11 (Tail buffer overflow) -> "
        b"This tail session dropped 7 messages since 1970-01-01T00:00:00.000000+00:00.\n")


def session(buffer_size=1024):
    written = []
    spec = SessionSpec(id="s", channel_id="app1", tail=True)
    metrics = Metrics()
    tail = TailSession(spec, written.append, metrics, buffer_size, clock=lambda: 0.0)
    return tail, written, metrics


def test_a_session_holds_live_lines_until_the_backlog_is_out_without_duplicates():
    tail, written, _ = session()
    tail.deliver([msg("app", "web.1", "in backlog too"), msg("app", "web.1", "new")])
    assert written == []
    tail.go_live([msg("app", "web.1", "old"), msg("app", "web.1", "in backlog too")])
    assert written == [line("app", "web.1", "new")]
    tail.deliver([msg("app", "web.1", "live")])
    assert written[-1] == line("app", "web.1", "live")


def test_a_paused_tail_buffers_then_drops_with_l11():
    tail, written, metrics = session(buffer_size=2)
    tail.go_live([])
    tail.pauseProducing()
    tail.deliver([msg("app", "web.1", str(n)) for n in range(5)])
    assert written == []
    tail.resumeProducing()
    assert written == [l11_line(3, 0.0, 0.0) + line("app", "web.1", "3") + line("app", "web.1", "4")]
    assert metrics.get("logplex_tail_dropped_total") == 3


def test_registry_fans_out_per_channel():
    registry = TailRegistry(Metrics())
    a, wa, _ = session()
    a.go_live([])
    registry.add(a)
    assert registry.has_tails("app1") and not registry.has_tails("app2")
    registry.publish("app1", [msg("app", "web.1", "x")])
    registry.publish("app2", [msg("app", "web.1", "y")])
    assert wa == [line("app", "web.1", "x")]
    registry.remove(a)
    assert not registry.has_tails("app1")
