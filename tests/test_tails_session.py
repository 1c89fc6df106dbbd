"""Tail filters, bounded tail buffers and the L11 line."""

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from logplex.metrics import Metrics
from logplex.model import SessionSpec
from logplex.settings import TailSettings
from logplex.tails.session import WRITE_BYTES, TailBuffer, TailFilter, TailRegistry, TailSession, l11_line


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
    buf = TailBuffer(size=3, max_bytes=TailSettings().buffer_bytes, clock=lambda: now[0])
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
    tail = TailSession(spec, written.append, metrics, TailSettings(buffer=buffer_size), clock=lambda: 0.0)
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


# -- bounded in bytes --------------------------------------------------------------------------

def test_buffer_is_bounded_in_bytes_as_well_as_lines():
    buf = TailBuffer(size=100, clock=lambda: 5.0, max_bytes=350)
    assert buf.put([b"a" * 99 + b"\n"] * 3) == 0
    assert buf.put([b"b" * 99 + b"\n", b"c" * 99 + b"\n"]) == 2
    assert (len(buf.lines), buf.bytes) == (3, 300)
    assert buf.take() == l11_line(2, 5.0, 5.0) + b"a" * 99 + b"\n" + b"b" * 99 + b"\n" + b"c" * 99 + b"\n"
    assert buf.bytes == 0


def test_a_line_larger_than_the_byte_bound_is_dropped_and_counted():
    buf = TailBuffer(size=100, clock=lambda: 0.0, max_bytes=10)
    assert buf.put([b"short\n", b"far too long for it\n"]) == 2
    assert buf.lines == deque() and buf.bytes == 0 and buf.dropped == 2


def test_take_with_a_limit_leaves_the_rest_for_later():
    buf = TailBuffer(size=100, clock=lambda: 0.0, max_bytes=1000)
    buf.put([b"%d\n" % n * 10 for n in range(5)])  # 20 bytes each
    assert buf.take(30) == b"0\n" * 10 + b"1\n" * 10
    assert buf.bytes == 60
    assert buf.take(1) == b"2\n" * 10  # always at least one line
    assert buf.take() == b"3\n" * 10 + b"4\n" * 10


def test_lines_held_during_the_backlog_read_are_bounded_in_bytes():
    spec = SessionSpec(id="s", channel_id="app1", tail=True)
    written = []
    metrics = Metrics()
    tail = TailSession(spec, written.append, metrics, TailSettings(buffer=1024, buffer_bytes=300), clock=lambda: 0.0)
    held = [msg("app", "web.1", "%03d" % n + "x" * 40) for n in range(10)]  # 92 bytes each
    tail.deliver(held)
    assert metrics.get("logplex_tail_dropped_total") == 7
    tail.go_live([])
    assert written == [l11_line(7, 0.0, 0.0) + b"".join(line("app", "web.1", "%03d" % n + "x" * 40)
                                                        for n in (7, 8, 9))]


class PausingConsumer:
    """A response's transport as Twisted's are: past 64 KiB waiting it pauses its
    producer (on every write), and resumes it once a read has emptied it."""

    LIMIT = 64 * 1024

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.highest = 0
        self.received = b""
        self.producer = None

    def write(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.highest = max(self.highest, self.pending_bytes)
        if self.pending_bytes > self.LIMIT and self.producer is not None:
            self.producer.pauseProducing()

    def read(self) -> None:
        """The reader takes everything waiting; the producer is asked for more."""
        self.received += b"".join(self.pending)
        self.pending, self.pending_bytes = [], 0
        self.producer.resumeProducing()


def reading_session(buffer_size=1024, buffer_bytes=1024 * 1024):
    consumer = PausingConsumer()
    metrics = Metrics()
    spec = SessionSpec(id="s", channel_id="app1", tail=True)
    tail = TailSession(spec, consumer.write, metrics, TailSettings(buffer=buffer_size, buffer_bytes=buffer_bytes),
                       clock=lambda: 0.0)
    consumer.producer = tail
    tail.go_live([])
    return tail, consumer, metrics


def test_a_tail_that_never_reads_holds_its_byte_bound_and_a_write_past_the_transports():
    tail, consumer, metrics = reading_session()
    big = "x" * (60 * 1024)
    for n in range(400):  # 24 MiB, one message a batch
        tail.deliver([msg("app", "web.1", "%03d %s" % (n, big))])
    tail.deliver(  # and 24 MiB more in one batch
        [msg("app", "web.1", "%03d %s" % (n, big)) for n in range(400, 800)])
    assert consumer.highest <= PausingConsumer.LIMIT + WRITE_BYTES + 61 * 1024
    assert tail.buffer.bytes <= 1024 * 1024
    kept = len(tail.buffer.lines)
    sent = metrics.get("logplex_tail_lines_total")
    dropped = metrics.get("logplex_tail_dropped_total")
    assert kept == 17 and sent + kept + dropped == 800
    while tail.buffer.lines or tail.buffer.dropped:
        consumer.read()
    consumer.read()
    assert consumer.highest <= PausingConsumer.LIMIT + WRITE_BYTES + 61 * 1024
    lines = consumer.received.split(b"\n")[:-1]
    notices = [n for n, l in enumerate(lines) if b"Error L11" in l]
    # What went before the pause, the L11 line with what was lost, then the newest lines.
    assert notices == [sent] and b"dropped %d messages" % dropped in lines[sent]
    numbers = [int(l.split(b": ", 1)[1][:3]) for n, l in enumerate(lines) if n != sent]
    assert numbers == list(range(sent)) + list(range(800 - kept, 800))
    assert metrics.get("logplex_tail_l11_total") == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 70_000), max_size=30), st.booleans()), max_size=30),
       st.integers(1, 64), st.integers(1, 300_000))
def test_every_line_is_sent_once_in_order_or_counted_and_memory_stays_bounded(steps, size, max_bytes):
    """Any batches of any sizes, a reader that reads now and then: the transport never
    holds more than its limit and a write, the buffer never more than its bounds, and
    every line is either received, in order, or counted as dropped."""
    tail, consumer, metrics = reading_session(size, max_bytes)
    fed = 0
    for lengths, reads in steps:
        tail.deliver([msg("app", "web.1", "%06d %s" % (fed + i, "y" * n)) for i, n in enumerate(lengths)])
        fed += len(lengths)
        assert consumer.pending_bytes <= PausingConsumer.LIMIT + WRITE_BYTES + 70_100
        assert len(tail.buffer.lines) <= size and tail.buffer.bytes <= max_bytes
        if reads:
            consumer.read()
    while tail.buffer.lines or tail.buffer.dropped:
        consumer.read()
    consumer.read()
    numbers = [int(l.split(b": ", 1)[1][:6]) for l in consumer.received.split(b"\n")[:-1]
               if b"Error L11" not in l]
    assert numbers == sorted(set(numbers))
    assert len(numbers) + metrics.get("logplex_tail_dropped_total") == fed
    assert metrics.get("logplex_tail_lines_total") == len(numbers)


def test_ending_a_channel_ends_the_tails_of_its_old_incarnations_only():
    from logplex.model import Channel

    metrics = Metrics()
    ended, last = [], []
    registry = TailRegistry(metrics, on_last_tail=last.append)
    first, successor = Channel.new("app1"), Channel.new("app1")
    old = TailSession(SessionSpec(id="old", channel_id="app1", incarnation=first.incarnation), [].append, metrics,
                      TailSettings())
    new = TailSession(SessionSpec(id="new", channel_id="app1", incarnation=successor.incarnation), [].append,
                      metrics, TailSettings())
    registry.add(old, lambda: ended.append("old"))
    registry.add(new, lambda: ended.append("new"))
    assert registry.end_channel("app1", successor) == 1
    assert ended == ["old"] and registry.by_channel == {"app1": {new}} and last == []
    # Deleted: every tail of the name ends, and the channel is no longer heard.
    assert registry.end_channel("app1", None) == 1
    assert ended == ["old", "new"] and not registry.has_tails("app1") and last == ["app1"]
    assert metrics.get("logplex_tails_ended_total") == 2
    assert registry.end_channel("app1", None) == 0


def test_lines_naming_an_incarnation_reach_only_its_tails():
    registry = TailRegistry(Metrics())
    written = {}
    for name in ("a", "b", ""):
        tail = TailSession(SessionSpec(id=name, channel_id="app1", incarnation=name),
                           written.setdefault(name, []).append, Metrics(), TailSettings())
        tail.go_live([])
        registry.add(tail)
    registry.publish("app1", [msg("app", "web.1", "to a")], "a")
    registry.publish("app1", [msg("app", "web.1", "to all")])
    assert written == {"a": [line("app", "web.1", "to a"), line("app", "web.1", "to all")],
                       "b": [line("app", "web.1", "to all")], "": [line("app", "web.1", "to all")]}
