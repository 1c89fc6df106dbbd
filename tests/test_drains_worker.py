"""A drain worker on a Clock: batching, retries, spill and resume, exact L10 accounting."""

from twisted.internet import defer
from twisted.internet.task import Clock

from logplex.drains.formats import decode_chunk, encode_chunk
from logplex.drains.policy import Backoff, Outcome, Pace
from logplex.drains.worker import DrainState, DrainWorker
from logplex.metrics import Metrics
from logplex.model import Drain
from logplex.redis.keys import RedisKeys
from tests.drain_doubles import Endpoint, MemorySpool, msg

DRAIN = Drain(7, "app", "d.tok", "https://logs.example.com/")


def make(spool=None, clock=None, **kw):
    clock = clock or Clock()
    endpoint = Endpoint()
    spool = spool if spool is not None else MemorySpool()
    emitted = []
    options = dict(capacity=100, target_bytes=4000, linger=0.25,
                   backoff=Backoff(initial=0.5, cap=30, rand=lambda: 0.5))
    options.update(kw)
    worker = DrainWorker(DRAIN, endpoint, spool, clock, Metrics(),
                         emit=lambda ch, m: emitted.append((ch, m)), **options)
    worker.start()
    return worker, endpoint, spool, clock, emitted


def test_small_input_waits_for_the_linger_then_goes_as_one_batch():
    worker, endpoint, _, clock, _ = make()
    worker.push([msg(1), msg(2)])
    clock.advance(0.2)
    assert endpoint.sent == []
    clock.advance(0.05)
    assert [m for _, m, _ in endpoint.sent] == [[msg(1), msg(2)]]


def test_a_busy_drain_s_full_batches_do_not_stretch_the_shared_linger_of_its_last_lines():
    # 20 s of full batches, 40 POSTs a second against a pace budget of 10: counted, they
    # stretched the linger to its 5 s cap, and the last lines of the burst waited that long
    # (bench/peers.py saw 564 of them still queued 3 s after a run).
    clock = Clock()
    pace = Pace(0.25, budget=10, clock=clock.seconds)
    worker, endpoint, _, clock, _ = make(clock=clock, pace=pace)
    sent = 0
    for _ in range(800):
        worker.push([msg(n) for n in range(sent, sent + 70)])  # 70 x 58 bytes: a full batch
        sent += 70
        clock.advance(0.025)
    worker.push([msg(sent)])
    for _ in range(12):  # one more full batch, then what is left after one linger of 0.25 s
        clock.advance(0.05)
    assert endpoint.delivered() == [msg(n) for n in range(sent + 1)]
    assert pace.linger == 0.25


def test_a_full_batch_goes_at_once_and_batches_respect_the_target_size():
    worker, endpoint, _, clock, _ = make()
    worker.push([msg(n) for n in range(100)])  # 100 x 58 bytes > 4000
    clock.advance(0)
    assert len(endpoint.sent) >= 1
    clock.advance(1)
    assert endpoint.delivered() == [msg(n) for n in range(100)]
    assert all(sum(map(len, m)) <= 4000 for _, m, _ in endpoint.sent)
    assert worker.state()["delivered"] == 100


def test_a_60_second_outage_at_1000_per_second_loses_nothing_and_keeps_order():
    worker, endpoint, spool, clock, _ = make(capacity=1024, target_bytes=100 * 1024)
    endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    sent = 0
    for tick in range(600):  # 60 s, 100 messages every 0.1 s
        worker.push([msg(n) for n in range(sent, sent + 100)])
        sent += 100
        clock.advance(0.1)
    assert sent == 60_000
    assert spool.chunks, "the outage spilled to the spool"
    assert worker.state()["retried"] > 5
    endpoint.answer = Outcome.ok()
    for _ in range(200):
        clock.advance(0.5)
    delivered = endpoint.delivered()
    assert delivered == [msg(n) for n in range(60_000)]
    assert not any(b"Error L10" in m for m in delivered)
    assert spool.chunks == [] and worker.state()["spool_depth"] == 0
    # Every retry of a batch carried the same frame id and the same messages.
    by_frame = {}
    for frame_id, messages, _ in endpoint.sent:
        assert by_frame.setdefault(frame_id, messages) == messages


def test_a_spool_bound_drops_the_oldest_and_one_l10_says_exactly_how_many():
    spool = MemorySpool(max_bytes=20_000)
    worker, endpoint, _, clock, _ = make(spool=spool, capacity=50, target_bytes=2000)
    endpoint.answer = Outcome.retry_later("HTTP 503")
    for n in range(0, 2000, 20):
        worker.push([msg(i) for i in range(n, n + 20)])
        clock.advance(0.1)
    endpoint.answer = Outcome.ok()
    for _ in range(400):
        clock.advance(0.5)
    delivered = endpoint.delivered()
    l10s = [m for m in delivered if b"Error L10" in m]
    assert len(l10s) == 1
    assert spool.dropped > 0
    assert b"%d messages dropped since" % spool.dropped in l10s[0]
    lines = [m for m in delivered if b"Error L10" not in m]
    assert len(lines) + spool.dropped == 2000
    assert lines == sorted(lines)  # what survived is in order
    assert worker.state()["dropped"] == spool.dropped


def test_retry_after_is_honoured():
    worker, endpoint, _, clock, _ = make()
    endpoint.answer = Outcome.retry_later("HTTP 429", retry_after=7)
    worker.push([msg(1)])
    clock.advance(0.25)
    assert len(endpoint.sent) == 1
    endpoint.answer = Outcome.ok()
    clock.advance(6.9)
    assert len(endpoint.sent) == 1
    clock.advance(0.1)
    assert len(endpoint.sent) == 2 and endpoint.delivered() == [msg(1)]


def test_a_refused_batch_is_dropped_and_counted_and_delivery_goes_on():
    worker, endpoint, _, clock, _ = make()
    endpoint.answer = Outcome.rejected("HTTP 400 from the drain endpoint")
    worker.push([msg(1)])
    clock.advance(0.25)
    endpoint.answer = Outcome.ok()
    worker.push([msg(2)])
    clock.advance(0.25)
    l10, *rest = endpoint.delivered()
    assert rest == [msg(2)]
    # The receiver hears of the refused line in the next batch it takes, as from logplex.
    assert b"Error L10 (output buffer overflow): 1 messages dropped since " in l10
    state = worker.state()
    assert state["dropped"] == 1 and state["last_error"] == "HTTP 400 from the drain endpoint"


def test_a_refused_batch_that_carried_an_l10_owes_both_counts():
    worker, endpoint, _, clock, _ = make()
    worker.queue.count_lost(5, "spool full")
    endpoint.answer = Outcome.rejected("HTTP 413 from the drain endpoint")
    worker.push([msg(1), msg(2)])
    clock.advance(0.25)
    endpoint.answer = Outcome.ok()
    worker.push([msg(3)])
    clock.advance(0.25)
    l10, *rest = endpoint.delivered()
    assert rest == [msg(3)]
    assert b": 7 messages dropped since " in l10


def test_certificate_failures_are_told_to_the_channel_at_most_once_a_minute():
    worker, endpoint, _, clock, emitted = make()
    endpoint.answer = Outcome.retry_later("certificate verify failed", certificate_error=True)
    worker.push([msg(1)])
    for _ in range(20):
        clock.advance(5)
    assert len(emitted) == 2  # 100 s of failures: at 0 s and after 60 s
    channel, message = emitted[0]
    assert channel == "app"
    assert b"heroku logplex - - Error L14 (certificate validation): certificate verify failed" in message


def test_a_graceful_stop_spools_everything_and_a_new_worker_resumes_in_order():
    spool = MemorySpool()
    worker, endpoint, _, clock, _ = make(spool=spool)
    endpoint.answer = Outcome.retry_later("HTTP 503")
    worker.push([msg(n) for n in range(150)])
    clock.advance(1)
    worker.stop()
    assert endpoint.stopped == 1
    second, endpoint2, _, clock2, _ = make(spool=spool)
    for _ in range(20):
        clock2.advance(0.5)
    everything = endpoint.delivered() + endpoint2.delivered()
    assert everything == [msg(n) for n in range(150)]


def test_when_the_spool_is_down_memory_is_bounded_and_losses_reported():
    spool = MemorySpool()
    spool.broken = True
    worker, endpoint, _, clock, _ = make(spool=spool, capacity=10, target_bytes=600)
    endpoint.answer = Outcome.retry_later("HTTP 503")
    worker.push([msg(n) for n in range(500)])
    clock.advance(1)
    # capacity 10 in memory, at most 10 x capacity in overflow, one batch in flight
    assert worker.queue.pending <= 110
    spool.broken = False
    endpoint.answer = Outcome.ok()
    for _ in range(50):
        clock.advance(0.5)
    delivered = endpoint.delivered()
    l10 = [m for m in delivered if b"Error L10" in m]
    lines = [m for m in delivered if b"Error L10" not in m]
    assert len(l10) == 1
    assert b"%d messages dropped" % (500 - len(lines)) in l10[0]


def test_a_deleted_drain_frees_its_spool():
    spool = MemorySpool()
    worker, endpoint, _, clock, _ = make(spool=spool)
    endpoint.answer = Outcome.retry_later("HTTP 503")
    worker.push([msg(n) for n in range(500)])
    clock.advance(2)
    assert spool.chunks
    worker.discard()
    assert spool.chunks == []


def test_the_nodes_spool_budget_is_shared_and_a_drain_past_it_drops_only_its_own_oldest():
    from logplex.drains.supervisor import DrainSettings, DrainSupervisor

    class Store:
        drain_listeners: list = []

    class Backlogs:
        on_change: list = []

    clock = Clock()
    metrics = Metrics()
    budget = 20_000
    supervisor = DrainSupervisor(Store(), Backlogs(), metrics, clock, "node-1",
                                 DrainSettings(spool_total_bytes=budget), http_client=None,
                                 keys=RedisKeys("lp", 0))
    workers = {}
    for drain_id in (1, 2):
        endpoint = Endpoint()
        endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
        worker = DrainWorker(Drain(drain_id, f"app-{drain_id}", "d.tok", "https://logs.example.com/"),
                             endpoint, MemorySpool(), clock, metrics, capacity=10, target_bytes=4000,
                             backoff=Backoff(initial=0.5, cap=30, rand=lambda: 0.5))
        worker.spool_allowance = supervisor._allowance(worker)
        supervisor.workers[drain_id] = worker
        worker.start()
        workers[drain_id] = worker
    first, second = workers[1], workers[2]

    # The first drain's endpoint fails while 600 lines (~35 KB) arrive: it spools up to the budget.
    for n in range(0, 600, 50):
        first.push([msg(i) for i in range(n, n + 50)])
        clock.advance(1)
    held_by_first = list(first.spool.chunks)
    assert budget - 4500 < first.spool.bytes <= budget + 4500
    assert first.dropped > 0  # its own oldest, counted for its L10

    # The second drain fails too: only what the first leaves of the budget is its to use.
    for n in range(0, 300, 50):
        second.push([msg(i) for i in range(n, n + 50)])
        clock.advance(1)
    assert first.spool.chunks == held_by_first  # never another drain's lines
    assert len(second.spool.chunks) == 1 and second.dropped > 0
    assert second.spool.pushed_with == max(0, budget - first.spool.bytes)
    assert supervisor.spool_total() == first.spool.bytes + second.spool.bytes
    assert b"logplex_drain_spool_bytes %d" % supervisor.spool_total() in metrics.exposition()


def test_a_stored_udp_drain_is_refused_with_a_reason_never_sent_over_tcp():
    # Drains of syslog+udp:// were accepted once; the API refuses them now.
    from logplex.drains.supervisor import DrainSettings, DrainSupervisor

    class Store:
        drain_listeners: list = []

    class Backlogs:
        on_change: list = []

    clock = Clock()
    supervisor = DrainSupervisor(Store(), Backlogs(), Metrics(), clock, "node-1", DrainSettings(), http_client=None,
                                 keys=RedisKeys("lp", 0))
    transport = supervisor._transport(Drain(1, "app-1", "d.tok", "syslog+udp://logs.example.com:514"))
    worker = DrainWorker(Drain(1, "app-1", "d.tok", "syslog+udp://logs.example.com:514"), transport, MemorySpool(),
                         clock, Metrics(), capacity=10, target_bytes=4000)
    worker.push([msg(1)])
    clock.advance(1)
    state = worker.state()
    assert state["dropped"] == 1 and state["delivered"] == 0
    assert "syslog+udp:// drains are not supported; re-create the drain as syslog://" in state["last_error"]


def test_a_syslog_url_without_a_port_means_logplexs_default_ports():
    from logplex.drains.syslog import SyslogDrainTransport
    from logplex.settings import DrainSettings

    settings = DrainSettings()
    plain = SyslogDrainTransport(Drain(1, "app-1", "d.tok", "syslog://logs.example.com"), Clock(), settings)
    tls = SyslogDrainTransport(Drain(2, "app-1", "d.tok", "syslog+tls://logs.example.com"), Clock(), settings)
    given = SyslogDrainTransport(Drain(3, "app-1", "d.tok", "syslog://logs.example.com:1514"), Clock(), settings)
    assert (plain.port, tls.port, given.port) == (601, 6514, 1514)


def test_a_spool_batch_in_flight_is_counted_once_in_the_state():
    worker, endpoint, spool, clock, _ = make(capacity=10, target_bytes=600, chunk_bytes=600)
    endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    worker.push([msg(n) for n in range(50)])
    clock.advance(5)
    state = worker.state()
    assert worker.inflight is not None and worker.inflight.from_spool
    assert state["buffered"] + state["spool_depth"] == 50


class AnswersWhenTold(Endpoint):
    """An endpoint that keeps each batch until the test answers it (2xx)."""

    def __init__(self):
        super().__init__()
        self.waiting = []

    def send(self, messages, frame_id):
        self.sent.append((frame_id, list(messages), Outcome.ok()))
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    def answer_all(self):
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(Outcome.ok())


def test_batches_grow_to_the_max_while_the_queue_is_backed_up_and_return_to_the_target_when_idle():
    worker, _, _, clock, _ = make(capacity=1024, target_bytes=4000, max_bytes=16000)
    endpoint = worker.transport = AnswersWhenTold()
    sizes = lambda: [sum(map(len, m)) for _, m, _ in endpoint.sent]  # noqa: E731
    pushed = []
    # Each answer takes 0.1 s while 600 lines (about 35 KB) arrive in that time: backed up.
    for step in range(10):
        batch = [msg(n) for n in range(step * 600, (step + 1) * 600)]
        pushed += batch
        worker.push(batch)
        clock.advance(0.1)
        endpoint.answer_all()
    busy = sizes()
    assert busy[0] <= 4000 and busy[1] <= 8000, "it starts at the target and grows by doubling"
    assert max(busy) > 15000 and all(size <= 16000 for size in busy)
    # The backlog is sent out, then the drain idles: a few lines a linger.
    while worker.queue.pending or endpoint.waiting:
        clock.advance(0.25)
        endpoint.answer_all()
    for step in range(5):
        batch = [msg(n) for n in range(10**5 + step * 5, 10**5 + (step + 1) * 5)]
        pushed += batch
        worker.push(batch)
        clock.advance(0.25)
        endpoint.answer_all()
    # A burst after idling goes in target-sized batches again.
    count = len(endpoint.sent)
    burst = [msg(n) for n in range(2 * 10**5, 2 * 10**5 + 200)]
    pushed += burst
    worker.push(burst)
    clock.advance(0)
    assert 3500 < sizes()[count] <= 4000
    while worker.queue.pending or endpoint.waiting:
        clock.advance(0.25)
        endpoint.answer_all()
    assert endpoint.delivered() == pushed, "order kept, nothing lost or repeated"
    assert all(size <= 16000 for size in sizes())


def test_a_backed_up_http_drain_spools_chunks_of_its_largest_batch_and_sends_each_back_as_one():
    spool = MemorySpool()
    worker, endpoint, _, clock, _ = make(spool, capacity=100, target_bytes=4000, max_bytes=16000)
    endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    pushed = [msg(n) for n in range(2000)]
    for i in range(0, 2000, 100):
        worker.push(pushed[i:i + 100])
        clock.advance(0.1)
    chunk_bytes = [sum(map(len, decode_chunk(c)[1])) for c in spool.chunks]
    assert chunk_bytes and max(chunk_bytes) > 8000 and all(size <= 16000 for size in chunk_bytes)
    endpoint.answer = Outcome.ok()
    for _ in range(60):
        clock.advance(1)
    assert endpoint.delivered() == pushed
    from_spool = [sum(map(len, m)) for _, m, a in endpoint.sent if a.delivered]
    assert max(from_spool) > 8000 and all(size <= 16000 for size in from_spool)


def test_http_spool_chunks_are_the_largest_batch_unless_the_spool_is_too_small_for_them():
    from logplex.drains.supervisor import DrainSettings, http_chunk_bytes
    assert http_chunk_bytes(DrainSettings()) == DrainSettings().http_max_bytes
    # A chunk as large as the bound would be kept whole: the bound would hold nothing back.
    small = DrainSettings(spool_bytes=20000, http_target_bytes=2000)
    assert http_chunk_bytes(small) == 2000


# -- the life of a drain, in named states -----------------------------------------------------------
class SlowSpool(MemorySpool):
    """A spool whose reads wait until the test answers them."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def head(self):
        d = defer.Deferred()
        self.reads.append(d)
        return d

    def answer_read(self, fail=False):
        d = self.reads.pop(0)
        if fail:
            d.errback(ConnectionError("spool Redis down"))
        else:
            d.callback(self.chunks[0] if self.chunks else None)


def test_a_drain_idles_lingers_for_more_then_sends_and_idles_again():
    worker, endpoint, _, clock, _ = make()
    endpoint = worker.transport = AnswersWhenTold()
    assert worker.status is DrainState.IDLE
    worker.push([msg(1)])
    assert worker.status is DrainState.LINGERING
    clock.advance(0.25)
    assert worker.status is DrainState.SENDING and len(endpoint.waiting) == 1
    assert worker.state()["buffered"] == 1  # the batch in flight is still the drain's
    endpoint.answer_all()
    assert worker.status is DrainState.IDLE
    assert worker.state()["delivered"] == 1 and worker.state()["buffered"] == 0


def test_a_failing_endpoint_puts_the_drain_in_waiting_to_retry_and_its_state_says_why():
    worker, endpoint, _, clock, _ = make()
    endpoint.answer = Outcome.retry_later("HTTP 503 from the drain endpoint")
    worker.push([msg(1)])
    clock.advance(0.25)
    assert worker.status is DrainState.WAITING_TO_RETRY
    state = worker.state()
    assert (state["retried"], state["last_error"], state["buffered"], state["holding_senders"]) == (
        1, "HTTP 503 from the drain endpoint", 1, False)
    # The backoff's first step (0.25 s, and half of another 0.25 s of jitter): then the same batch again.
    endpoint.answer = Outcome.ok()
    clock.advance(0.37)
    assert worker.status is DrainState.WAITING_TO_RETRY and len(endpoint.sent) == 1
    clock.advance(0.01)
    assert worker.status is DrainState.IDLE and endpoint.delivered() == [msg(1)]
    assert endpoint.sent[0][0] == endpoint.sent[1][0]  # one frame id for both tries


def test_a_drain_with_a_spool_reads_it_first_and_a_failed_read_waits_to_retry():
    spool = SlowSpool()
    spool.chunks.append(encode_chunk([msg(1), msg(2)], "f1", 0.0))
    worker, endpoint, _, clock, _ = make(spool=spool)
    assert worker.state()["spool_depth"] == 2
    assert worker.status is DrainState.LINGERING  # due at once: the spool goes first
    clock.advance(0)
    assert worker.status is DrainState.READING_SPOOL
    worker.push([msg(3)])  # newer: it waits behind the spool
    spool.answer_read(fail=True)
    assert worker.status is DrainState.WAITING_TO_RETRY
    assert worker.state()["last_error"] == "spool read failed: spool Redis down"
    clock.advance(0.375)
    assert worker.status is DrainState.READING_SPOOL
    spool.answer_read()
    # The chunk went through; memory's line waits for its linger.
    assert endpoint.delivered() == [msg(1), msg(2)] and worker.status is DrainState.LINGERING
    clock.advance(0.25)
    assert endpoint.delivered() == [msg(1), msg(2), msg(3)] and worker.status is DrainState.IDLE
    assert worker.state()["spool_depth"] == 0


def test_a_stopping_drain_takes_nothing_more_and_is_stopped_once_its_memory_is_spooled():
    spool = MemorySpool()
    worker, endpoint, _, clock, _ = make(spool=spool)
    worker.push([msg(1)])
    assert worker.status is DrainState.LINGERING
    d = worker.stop()
    assert worker.status is DrainState.STOPPED and worker.stopped
    assert d.called and endpoint.stopped == 1
    worker.push([msg(2)])
    clock.advance(1)
    assert endpoint.sent == [] and worker.state()["buffered"] == 0
    assert [decode_chunk(c)[1] for c in spool.chunks] == [[msg(1)]]
    # Deleted afterwards: its spool goes too.
    worker.discard()
    assert worker.status is DrainState.STOPPED and spool.chunks == []


def test_every_state_is_reachable_and_no_move_leaves_the_table():
    from logplex.drains.worker import MOVES

    assert set(MOVES) == set(DrainState)
    reachable, todo = {DrainState.IDLE}, [DrainState.IDLE]
    while todo:
        for to in MOVES[todo.pop()] - reachable:
            reachable.add(to)
            todo.append(to)
    assert reachable == set(DrainState)
    worker, _, _, _, _ = make()
    try:
        worker._move(DrainState.WAITING_TO_RETRY)
    except AssertionError as e:
        assert "no move from idle to waiting to retry" in str(e)
    else:
        raise AssertionError("an idle drain cannot wait to retry: nothing failed")
