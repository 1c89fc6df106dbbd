"""Issue #8, part A: a node's memory stays bounded under hostile clients, and other tenants keep
their latency.

Each test starts a node of its own (on a Redis of this module's), then runs three phases:

- warm (4 s): tenant B alone. A sender process writes PROBE_RATE messages a second over syslog
  TCP to channel B, each carrying its sequence number and send time, and the same process reads
  a tail of B and measures send -> line for every line. The node's VmRSS (/proc/<pid>/status)
  is sampled every 0.2 s; the baseline is the highest sample of this phase's last 2 s.
- hostile (HOSTILE_S): the hostile case runs against tenant A while B goes on as before.
- after (3 s): the hostile clients are gone; B goes on.

What is asserted, per case: the highest RSS of the hostile phase <= baseline + the case's
allowance, B's p99 latency in the hostile phase <= P99_BOUND_MS, and B lost no line. Figures
are printed (pytest -s) and written to tests/artifacts/bounded.json.

The allowances are derived from the node's options, not fitted to a run. Each is
SLACK_MIB (what the node's RSS moves with no hostile client: allocator arenas, Twisted and
HTTP bookkeeping for B's traffic, /metrics scrapes) plus what the defences let the hostile
client hold:

- a tail that never reads: per tail, --tail-buffer lines and one transport write buffer
  (Twisted pauses a producer past 64 KiB, TRANSPORT_BUFFER). Each held line counts twice its
  size plus LINE_OVERHEAD: the buffer churns (every new line pushes an old one out), and glibc
  keeps the freed 1 KiB lines as fragments between the live ones. Measured with 10 and 20 tails
  and --tail-buffer 256, 1024 and 4096: 1.9-2.0 KiB per held 1 KiB line, flat once full.
- a drain receiver that never answers: per drain, --drain-buffer messages in memory, one batch in
  flight and one spool chunk being written (--http-drain-target-bytes each, twice over for the
  request body being built), and TRANSPORT_BUFFER; the rest goes to the spool in Redis.
- 5,000 idle connections, senders trickling one byte a second: PER_CONNECTION bytes for each
  (the transport, the protocol, its framer and timers; measured: about 1.9 KiB); a trickler's
  started frame is cut after --frame-timeout and counted.

Without the defences the same load would hold, per tail or drain, everything tenant A sent in
the hostile phase (HOSTILE_RATE x HOSTILE_SIZE x HOSTILE_S, about 12 MiB), many times the
allowance.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import resource
import selectors
import socket
import threading
import time
from array import array

import pytest

from tests.harness.cluster import backlog, wait_until
from tests.harness.client import start_node, stop_node
from tests.harness.procs import REPO_ROOT, RedisServer

MIB = 1024 * 1024
KIB = 1024
ARTIFACT = os.path.join(REPO_ROOT, "tests", "artifacts", "bounded.json")

PROBE_RATE = 2000  # tenant B, messages a second
P99_BOUND_MS = 500.0
WARM_S, HOSTILE_S, AFTER_S = 4.0, 12.0, 3.0
HOSTILE_RATE, HOSTILE_SIZE = 1000, 1024  # tenant A's own traffic, where the case needs some

SLACK_MIB = 16.0
LINE_OVERHEAD = 100  # bytes object header, deque slot, allocator rounding
TRANSPORT_BUFFER = 64 * KIB
PER_CONNECTION = 4 * KIB

TS = "2024-05-06T07:08:09.123456+00:00"
PROBE_LINE = re.compile(rb"probe s=(\d+) t=(\d+\.\d+)\r?\n")
FORK = multiprocessing.get_context("fork")


# -- the node and what it uses -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def bounded_redis(tmp_path_factory):
    """A Redis of this module's own: the drain cases spool tens of MiB into it."""
    server = RedisServer(str(tmp_path_factory.mktemp("bounded-redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors():
    """5,000 connections are 5,000 descriptors here and 5,000 in the node, which inherits this limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 12_000 if hard == resource.RLIM_INFINITY else min(hard, 12_000)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def node_option(node, name: str, default):
    args = node.proc.extra_args
    return type(default)(args[args.index(name) + 1]) if name in args else default


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def metrics(node) -> dict[str, float]:
    """The node's /metrics as {name{labels}: value} and {name: sum over labels}."""
    answer = node.api("GET", "/metrics")
    assert answer.status == 200, answer
    out: dict[str, float] = {}
    for line in answer.body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
        name = key.partition("{")[0]
        if name != key:
            out[name] = out.get(name, 0.0) + float(value)
    return out


def syslog_frame(token: str, text: str, procid: str = "web.1") -> bytes:
    message = f"<134>1 {TS} host {token} {procid} - - {text}".encode()
    return b"%d %s" % (len(message), message)


class RssSampler:
    """The node's VmRSS every 0.2 s, in a thread, with wall-clock times."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), rss_bytes(self.pid)))
            except (OSError, AssertionError):
                return
            self._stop.wait(0.2)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in list(self.samples) if start <= t < end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- tenant B: load and a tail reading it, in a process of their own --------------------------------
def _probe_main(syslog_port, api_port, token, session_path, rate, stop, results):
    """Send `rate` msgs/s to B and read B's tail; at the end put the figures on `results`."""
    tail = socket.create_connection(("127.0.0.1", api_port), timeout=10)
    tail.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % session_path.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = tail.recv(65536)
        if not chunk:
            results.put({"error": f"the tail closed before its headers: {head!r}"})
            return
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        results.put({"error": f"the tail answered {status!r}"})
        return
    pending = head.split(b"\r\n\r\n", 1)[1]
    sent = [0]
    sender_error: list[str] = []
    done_sending = threading.Event()

    def send() -> None:
        try:
            with socket.create_connection(("127.0.0.1", syslog_port), timeout=10) as sock:
                start = time.monotonic()
                seq = 0
                while not stop.is_set():
                    due = int(rate * (time.monotonic() - start))
                    if due > seq:
                        stamp = "%.6f" % time.time()
                        sock.sendall(b"".join(syslog_frame(token, f"probe s={i} t={stamp}")
                                              for i in range(seq, due)))
                        seq = due
                    time.sleep(0.005)
                sent[0] = seq
        except Exception as e:  # reported with the figures
            sender_error.append(repr(e))
            sent[0] = seq
        finally:
            done_sending.set()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    received_at, latency_ms = array("d"), array("d")
    seen = bytearray()
    l11 = 0
    tail.settimeout(0.2)
    give_up = None
    while True:
        try:
            data = tail.recv(262144)
            if not data:
                break
        except TimeoutError:
            data = b""
        now = time.time()
        if data:
            pending += data
            cut = pending.rfind(b"\n") + 1
            complete, pending = pending[:cut], pending[cut:]
            l11 += complete.count(b"Error L11")
            for s, t in PROBE_LINE.findall(complete):
                s = int(s)
                if s >= len(seen):
                    seen.extend(bytes(s + 1 - len(seen) + 4096))
                seen[s] = 1
                received_at.append(now)
                latency_ms.append((now - float(t)) * 1000.0)
        if done_sending.is_set():
            if give_up is None:
                give_up = time.monotonic() + 5.0
            if sum(seen[: sent[0]]) >= sent[0] or time.monotonic() > give_up:
                break
    tail.close()
    thread.join(5)
    results.put({
        "sent": sent[0], "received": len(latency_ms), "unique": sum(seen[: sent[0]]),
        "l11": l11, "received_at": received_at, "latency_ms": latency_ms,
        "sender_error": sender_error,
    })


class Probe:
    """Tenant B: PROBE_RATE msgs/s into channel B and a tail of it that measures latency."""

    def __init__(self, node, rate: int = PROBE_RATE) -> None:
        self.channel, tokens = node.channel("app")
        url = node.session(self.channel, tail=True, num=0)
        path = "/sessions/" + url.rsplit("/sessions/", 1)[1]
        self.stop_event = FORK.Event()
        self.results = FORK.Queue()
        self.process = FORK.Process(target=_probe_main, daemon=True, args=(
            node.syslog_port, node.api_port, tokens["app"], path, rate, self.stop_event, self.results))
        self.process.start()
        self.figures: dict | None = None

    def finish(self) -> dict:
        self.stop_event.set()
        self.figures = self.results.get(timeout=30)
        self.process.join(10)
        assert "error" not in self.figures, self.figures["error"]
        return self.figures

    def latency(self, start: float, end: float) -> dict:
        """p50 / p99 / max of the lines received in [start, end)."""
        f = self.figures
        values = sorted(ms for at, ms in zip(f["received_at"], f["latency_ms"]) if start <= at < end)
        if not values:
            return {"lines": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

        def q(p):
            return round(values[min(len(values) - 1, int(p * len(values)))], 1)

        return {"lines": len(values), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(values[-1], 1)}


# -- tenant A's own traffic ---------------------------------------------------------------------------
def _flood_main(syslog_port, token, rate, size, stop, results):
    text = "x" * max(1, size - len(syslog_frame(token, "")))
    frame = syslog_frame(token, text)
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", syslog_port), timeout=30) as sock:
            start = time.monotonic()
            while not stop.is_set():
                due = int(rate * (time.monotonic() - start))
                if due > sent:
                    sock.sendall(frame * (due - sent))
                    sent = due
                time.sleep(0.005)
        results.put({"sent": sent, "frame_bytes": len(frame)})
    except Exception as e:
        results.put({"sent": sent, "error": repr(e)})


class Flood:
    """HOSTILE_RATE messages a second of HOSTILE_SIZE bytes to a channel, in a process."""

    def __init__(self, node, token: str, rate: int = HOSTILE_RATE, size: int = HOSTILE_SIZE) -> None:
        self.stop_event = FORK.Event()
        self.results = FORK.Queue()
        self.process = FORK.Process(target=_flood_main, daemon=True, args=(
            node.syslog_port, token, rate, size, self.stop_event, self.results))
        self.process.start()

    def finish(self) -> dict:
        self.stop_event.set()
        figures = self.results.get(timeout=30)
        self.process.join(10)
        assert "error" not in figures, figures
        return figures


# -- receivers that misbehave --------------------------------------------------------------------------
class BlackHole:
    """A TCP receiver on 127.0.0.1 that accepts every connection and never answers.

    read=True reads and discards what arrives (an HTTP server that takes the request and never
    answers); read=False never reads (a syslog receiver that stopped reading), with a small
    receive buffer so the sender's side fills soon.
    """

    def __init__(self, read: bool) -> None:
        self.read = read
        self.listener = socket.socket()
        if not read:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.bytes_read = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                if key.fileobj is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.accepted.append(conn)
                    if self.read:
                        self._selector.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = key.fileobj.recv(262144)
                except OSError:
                    data = b""
                if data:
                    self.bytes_read += len(data)
                else:
                    self._selector.unregister(key.fileobj)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.listener.close()
        self._selector.close()


def connect_many(port: int, n: int) -> list[socket.socket]:
    """n connections, 25 every 10 ms: the node listens with Twisted's default backlog of 50, and a
    faster burst fills its accept queue, so the kernel drops SYNs and clients retry after 1 s."""
    socks = []
    try:
        for i in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            if i % 25 == 24:
                time.sleep(0.01)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# -- one case ------------------------------------------------------------------------------------------
def record(case: str, figures: dict) -> None:
    os.makedirs(os.path.dirname(ARTIFACT), exist_ok=True)
    try:
        with open(ARTIFACT) as f:
            everything = json.load(f)
    except (OSError, ValueError):
        everything = {}
    everything[case] = figures
    with open(ARTIFACT + ".tmp", "w") as f:
        json.dump(everything, f, indent=2, sort_keys=True)
    os.replace(ARTIFACT + ".tmp", ARTIFACT)


def run_case(node, case: str, allowance_mib: float, derivation: str, start_hostile, stop_hostile) -> dict:
    """Warm, hostile, after; returns the figures (printed and recorded) for the caller's asserts."""
    pid = node.proc.pid
    probe = Probe(node)  # forked before this process starts the sampler's thread
    sampler = RssSampler(pid)
    try:
        t0 = time.time()
        time.sleep(WARM_S)
        t1 = time.time()
        hostile = start_hostile()
        time.sleep(max(0.0, t1 + HOSTILE_S - time.time()))
        during_metrics = metrics(node)
        t2 = time.time()
        extra = stop_hostile(hostile) or {}
        time.sleep(AFTER_S)
        t3 = time.time()
    finally:
        probe_figures = probe.finish()
        sampler.stop()
    baseline = max(sampler.between(t1 - 2.0, t1))
    during = sampler.between(t1, t2)
    after = sampler.between(t2 + 1.0, t3)
    timeline = {}
    for t, rss in sampler.samples:
        second = int(t - t0)
        timeline[second] = max(timeline.get(second, 0), rss)
    figures = {
        "case": case,
        "phases_s": {"warm": [0, round(t1 - t0, 1)], "hostile": [round(t1 - t0, 1), round(t2 - t0, 1)],
                     "after": [round(t2 - t0, 1), round(t3 - t0, 1)]},
        "rss_timeline_mib": [round(timeline[k] / MIB, 1) for k in sorted(timeline)],
        "node_options": node.proc.extra_args,
        "rss_mib": {
            "baseline": round(baseline / MIB, 1),
            "hostile_max": round(max(during) / MIB, 1),
            "growth": round((max(during) - baseline) / MIB, 1),
            "after": round(after[-1] / MIB, 1) if after else None,
            "allowance": round(allowance_mib, 1),
            "bound": round(baseline / MIB + allowance_mib, 1),
        },
        "allowance_derivation": derivation,
        "tenant_b": {
            "rate": PROBE_RATE, "sent": probe_figures["sent"], "unique_on_tail": probe_figures["unique"],
            "lost": probe_figures["sent"] - probe_figures["unique"], "l11_lines": probe_figures["l11"],
            "warm": probe.latency(t0 + 1.0, t1), "hostile": probe.latency(t1, t2),
            "after": probe.latency(t2, t3), "sender_error": probe_figures["sender_error"],
        },
        "hostile_metrics": {k: v for k, v in during_metrics.items() if k.startswith((
            "logplex_tail_", "logplex_drain_", "logplex_active_", "logplex_connections_",
            "logplex_syslog_timeouts", "logplex_partial_"))},
        **extra,
    }
    b = figures["tenant_b"]
    print(f"\n[bounded] {case}: RSS baseline {figures['rss_mib']['baseline']} MiB, hostile max "
          f"{figures['rss_mib']['hostile_max']} MiB (growth {figures['rss_mib']['growth']}, allowance "
          f"{figures['rss_mib']['allowance']}), after {figures['rss_mib']['after']} MiB; "
          f"B p99 warm/hostile/after {b['warm']['p99_ms']}/{b['hostile']['p99_ms']}/{b['after']['p99_ms']} ms, "
          f"B lost {b['lost']} of {b['sent']}; {json.dumps(extra)}")
    record(case, figures)
    return figures


def assert_bounded(figures: dict) -> None:
    rss, b = figures["rss_mib"], figures["tenant_b"]
    assert not b["sender_error"], b["sender_error"]
    assert b["lost"] == 0 and b["l11_lines"] == 0, f"tenant B lost lines: {b}"
    assert b["hostile"]["lines"] > PROBE_RATE * HOSTILE_S * 0.8, f"tenant B's tail stalled: {b}"
    assert b["hostile"]["p99_ms"] <= P99_BOUND_MS, f"tenant B's p99 while hostile: {b}"
    assert rss["hostile_max"] <= rss["bound"], (
        f"RSS {rss['hostile_max']} MiB > bound {rss['bound']} MiB ({figures['allowance_derivation']})")


def new_node(tmp_path_factory, redis, *args):
    return start_node(tmp_path_factory, redis, *args)


# -- the cases -----------------------------------------------------------------------------------------
N_TAILS = 10


def test_tails_that_never_read(tmp_path_factory, bounded_redis):
    node = new_node(tmp_path_factory, bounded_redis)
    try:
        channel, tokens = node.channel("app")
        tail_buffer = node_option(node, "--tail-buffer", 1024)
        line = 2 * (len(syslog_frame(tokens["app"], "x" * (HOSTILE_SIZE - 120))) + LINE_OVERHEAD)
        per_tail = tail_buffer * line + TRANSPORT_BUFFER
        allowance = SLACK_MIB + N_TAILS * per_tail / MIB
        derivation = (f"{SLACK_MIB} MiB slack + {N_TAILS} tails x ({tail_buffer} lines x 2 x "
                      f"{line // 2} B + {TRANSPORT_BUFFER} B transport buffer)")

        def start():
            socks = []
            for _ in range(N_TAILS):
                url = node.session(channel, tail=True, num=0)
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", node.api_port))
                path = "/sessions/" + url.rsplit("/sessions/", 1)[1]
                s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
                socks.append(s)
            return socks, Flood(node, tokens["app"])

        def stop(hostile):
            socks, flood = hostile
            sent = flood.finish()
            # One of them reads at last: what the node kept for it, then the L11 notice.
            first = socks[0]
            first.settimeout(2)
            data = b""
            try:
                while len(data) < 8 * MIB and b"Error L11" not in data:
                    chunk = first.recv(262144)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                pass
            for s in socks:
                s.close()
            return {"tenant_a": sent, "a_reader_got_l11": b"Error L11" in data}

        figures = run_case(node, "tail_never_reads", allowance, derivation, start, stop)
        assert figures["a_reader_got_l11"], "the slow tail was never told what it lost"
        assert figures["hostile_metrics"].get("logplex_tail_dropped_total", 0) > 0
        assert_bounded(figures)
    finally:
        stop_node(node)


N_DRAINS = 6  # --max-drains


def drain_case(tmp_path_factory, redis, kind: str) -> dict:
    node = new_node(tmp_path_factory, redis, "--allow-private-drains")
    hole = BlackHole(read=(kind == "http"))
    try:
        channel, tokens = node.channel("app")
        buffer = node_option(node, "--drain-buffer", 1024)
        target = node_option(node, "--http-drain-target-bytes", 100 * KIB) if kind == "http" \
            else node_option(node, "--tcp-drain-target-bytes", 4 * KIB)
        message = HOSTILE_SIZE + LINE_OVERHEAD
        per_drain = buffer * message + 4 * target + TRANSPORT_BUFFER
        allowance = SLACK_MIB + N_DRAINS * per_drain / MIB
        derivation = (f"{SLACK_MIB} MiB slack + {N_DRAINS} drains x ({buffer} messages x {message} B "
                      f"+ 4 x {target} B batches + {TRANSPORT_BUFFER} B transport buffer)")
        ids = []
        for i in range(N_DRAINS):
            url = (f"http://127.0.0.1:{hole.port}/logs?n={i}" if kind == "http"
                   else f"syslog://127.0.0.1:{hole.port}/?n={i}")
            answer = node.api("POST", f"/v3/channels/{channel}/drains", {"url": url})
            assert answer.status == 201, answer
            ids.append(answer.json()["id"])

        def start():
            return Flood(node, tokens["app"])

        def stop(flood):
            sent = flood.finish()
            states = [node.api("GET", f"/v3/channels/{channel}/drains/{i}").json().get("state") for i in ids]
            for i in ids:  # frees the spools
                node.api("DELETE", f"/v3/channels/{channel}/drains/{i}")
            return {"tenant_a": sent, "drains": len(ids), "drain_states": states,
                    "receiver_connections": len(hole.accepted), "receiver_bytes_read": hole.bytes_read}

        figures = run_case(node, f"drain_{kind}_never_answers", allowance, derivation, start, stop)
        return figures
    finally:
        hole.close()
        stop_node(node)


def test_http_drain_receiver_that_never_answers(tmp_path_factory, bounded_redis):
    figures = drain_case(tmp_path_factory, bounded_redis, "http")
    assert figures["receiver_connections"] >= 1
    # What the endpoint did not take went to the spool (in Redis), not into the node's memory.
    assert all(s and s["spool_depth"] > 0 for s in figures["drain_states"]), figures["drain_states"]
    assert_bounded(figures)


def test_syslog_drain_receiver_that_never_reads(tmp_path_factory, bounded_redis):
    figures = drain_case(tmp_path_factory, bounded_redis, "syslog")
    assert figures["receiver_connections"] >= 1
    assert_bounded(figures)


N_IDLE = 5000


def test_5000_idle_connections(tmp_path_factory, bounded_redis):
    node = new_node(tmp_path_factory, bounded_redis, "--max-connections", str(N_IDLE + 100))
    allowance = SLACK_MIB + N_IDLE * PER_CONNECTION / MIB
    derivation = f"{SLACK_MIB} MiB slack + {N_IDLE} connections x {PER_CONNECTION} B"
    try:
        def start():
            began = time.monotonic()
            socks = connect_many(node.syslog_port, N_IDLE)
            return socks, time.monotonic() - began

        def stop(hostile):
            socks, took = hostile
            active = metrics(node).get("logplex_active_connections")
            for s in socks:
                s.close()
            return {"idle_connections": len(socks), "connect_s": round(took, 2),
                    "active_connections_at_end": active}

        figures = run_case(node, "idle_connections_5000", allowance, derivation, start, stop)
        # All 5,000 (and B's sender) were held open by the node for the whole phase.
        assert figures["active_connections_at_end"] == N_IDLE + 1, figures
        assert figures["hostile_metrics"].get("logplex_connections_refused_total", 0) == 0
        assert_bounded(figures)
    finally:
        stop_node(node)


N_TRICKLE = 1000
FRAME_TIMEOUT = 4


def test_senders_that_send_one_byte_a_second(tmp_path_factory, bounded_redis):
    node = new_node(tmp_path_factory, bounded_redis, "--frame-timeout", str(FRAME_TIMEOUT))
    allowance = SLACK_MIB + N_TRICKLE * PER_CONNECTION / MIB
    derivation = f"{SLACK_MIB} MiB slack + {N_TRICKLE} connections x {PER_CONNECTION} B"
    try:
        channel, tokens = node.channel("app")
        frame = syslog_frame(tokens["app"], "t" * 400)

        def start():
            socks = connect_many(node.syslog_port, N_TRICKLE)
            stop_event = threading.Event()
            state = {"bytes": 0, "cut": 0, "cut_after": []}
            began = time.monotonic()

            def trickle():
                alive = list(socks)
                position = 0
                while not stop_event.is_set() and alive and position < len(frame):
                    for s in list(alive):
                        try:
                            s.sendall(frame[position:position + 1])
                            state["bytes"] += 1
                        except OSError:
                            alive.remove(s)
                            state["cut"] += 1
                            state["cut_after"].append(time.monotonic() - began)
                    position += 1
                    stop_event.wait(1.0)

            thread = threading.Thread(target=trickle, daemon=True)
            thread.start()
            return socks, stop_event, thread, state

        def stop(hostile):
            socks, stop_event, thread, state = hostile
            stop_event.set()
            thread.join(10)
            closed = 0
            for s in socks:
                s.settimeout(0)
                try:
                    closed += s.recv(1) == b""
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed += 1
                s.close()
            m = metrics(node)
            cut = sorted(state["cut_after"])
            return {"tricklers": len(socks), "bytes_trickled": state["bytes"],
                    "closed_by_node": closed,
                    "seen_cut_after_s": [round(cut[0], 1), round(cut[len(cut) // 2], 1), round(cut[-1], 1)]
                    if cut else None,
                    "frame_timeouts": m.get('logplex_syslog_timeouts_total{reason="frame"}', 0),
                    "partial_frames_dropped": m.get("logplex_partial_frames_dropped_total", 0)}

        figures = run_case(node, "one_byte_a_second", allowance, derivation, start, stop)
        # Each started frame was cut after --frame-timeout and counted; none was routed.
        assert figures["closed_by_node"] == N_TRICKLE, figures
        assert figures["frame_timeouts"] == N_TRICKLE, figures
        assert_bounded(figures)
    finally:
        stop_node(node)


def test_a_started_frame_is_cut_frame_timeout_after_its_first_byte(tmp_path_factory, bounded_redis):
    """README: --frame-timeout is the seconds "a started syslog frame has to arrive"."""
    timeout = 3.0
    node = new_node(tmp_path_factory, bounded_redis, "--frame-timeout", str(timeout))
    try:
        channel, tokens = node.channel("app")
        count, _, body = syslog_frame(tokens["app"], "late").partition(b" ")
        with socket.create_connection(("127.0.0.1", node.syslog_port), timeout=10) as sock:
            began = time.monotonic()
            sock.sendall(count)  # the frame has started
            time.sleep(2.0)
            sock.sendall(b" ")  # its count is whole; no byte of its body yet
            time.sleep(0.5)
            sent, closed_after = 0, None
            sock.settimeout(0.5)
            while time.monotonic() - began < 10 and closed_after is None:
                try:
                    sock.sendall(body[sent:sent + 1])
                    sent += 1
                    if sock.recv(1) == b"":
                        closed_after = time.monotonic() - began
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - began
        print(f"\n[bounded] frame started at 0 s was cut after {closed_after} s (--frame-timeout {timeout})")
        assert closed_after is not None and closed_after <= timeout + 1.0, closed_after
    finally:
        stop_node(node)


def test_a_steady_sender_whose_reads_end_mid_frame_is_never_cut(tmp_path_factory, bounded_redis):
    """The frame deadline belongs to one frame: a sender whose writes always end
    inside a frame, for several times --frame-timeout, loses nothing."""
    timeout = 1.0
    node = new_node(tmp_path_factory, bounded_redis, "--frame-timeout", str(timeout))
    try:
        channel, tokens = node.channel("app")
        texts = [f"steady {i}" for i in range(60)]
        stream = b"".join(syslog_frame(tokens["app"], t) for t in texts)
        step = len(stream) // len(texts)
        with socket.create_connection(("127.0.0.1", node.syslog_port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            began = time.monotonic()
            # Writes of 1.5 frames, 0.1 s apart for 4 s: every read
            # ends mid-frame, and some frame is always pending.
            for start in range(0, len(stream), step * 3 // 2):
                sock.sendall(stream[start:start + step * 3 // 2])
                time.sleep(0.1)  # the sender's pace, not a wait for the node
            took = time.monotonic() - began
        assert took > 3 * timeout, took
        lines = wait_until(lambda: backlog(node, channel), lambda got: len(got) >= len(texts), 10,
                           "every steady line in the backlog")
        assert [line.rstrip().rsplit(b" ", 1)[-1] for line in lines] == [t.split()[-1].encode() for t in texts]
        assert metrics(node).get('logplex_syslog_timeouts_total{reason="frame"}', 0) == 0
    finally:
        stop_node(node)
