"""Drain fan-out micro-bench: many HTTP drains of one endpoint host, each with a few lines a second.

    python bench/drain_fanout.py [--drains 1000] [--rate 30000] [--seconds 10] [--size 200]

One process, a real reactor: a DrainSupervisor (the node's, with an
in-memory spool instead of Redis) runs --drains HTTP drains, each on its own
channel and its own URL path, all on one counting sink (bench/loadgen.py's
C sink, its own process). A pacer publishes --rate messages/s for --seconds,
spread round-robin over the channels as a router's fan-out would: every
10 ms each of rate/100 channels gets one line. This is issue 14's
production shape: 10,000 channels of 30 lines/s, one in ten drained.

With --calls, the run goes under cProfile (slower: its CPU figures are not
comparable) and also prints the Python calls made per POST, in all and by
function (the POST path's cost, counted exactly; the pacer's publishing is
not counted).

With --serial N, one drain's transport instead sends N POSTs of --batch
lines back to back (each when the last was answered) and the CPU per POST is
printed: the cost of the request path alone. --serial-floor does the same
with a bare Protocol that writes a prepared request and counts the answers:
the least any HTTP client on this reactor could cost.

Printed: CPU of this process per message delivered (the pacer included),
POSTs/s and connections the sink saw, reactor timers scheduled per second
(every callLater: linger, retry, the HTTP timeout, the connection pool's
idle timers), mean batch size, and delivery time (from the first publish to
the last delivery; its excess over --seconds is the backlog at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, task  # noqa: E402

from logplex.drains import supervisor as supervisor_module  # noqa: E402
from logplex.drains.http import make_client  # noqa: E402
from logplex.drains.supervisor import DrainSettings, DrainSupervisor  # noqa: E402
from logplex.metrics import Metrics  # noqa: E402
from logplex.model import Drain  # noqa: E402
from logplex.redis.keys import RedisKeys  # noqa: E402

TICK = 0.01  # the pacer's period: a router flushes about this often


class MemorySpool:
    """The spool's contract in memory (a bench must not measure Redis): ordered chunks."""

    def __init__(self, redis, drain_id, *args, **kwargs) -> None:
        self.redis = redis
        self.chunks: list[bytes] = []
        self.bytes = 0
        self.on_first_write = None

    def depth(self):
        return defer.succeed((0, 0))

    def push(self, chunk, count, at_head=False, protect="", max_bytes=None):
        self.chunks.insert(0, chunk) if at_head else self.chunks.append(chunk)
        self.bytes += len(chunk)
        return defer.succeed(0)

    def head(self):
        return defer.succeed(self.chunks[0] if self.chunks else None)

    def ack(self, frame_id):
        if self.chunks:
            self.bytes -= len(self.chunks.pop(0))
        return defer.succeed(True)

    def ack_next(self, frame_id):
        # The head's Deferred, returned from a callback, is chained: its bytes come next.
        return self.ack(frame_id).addCallback(lambda _: self.head())

    def delete(self):
        self.chunks, self.bytes = [], 0
        return defer.succeed(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sink(port: int, stats: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "loadgen.py"), "sink", "http",
                             "--port", str(port), "--stats", stats, "--interval", "0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60  # the first run compiles the sink
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("bench: the counting sink did not start")


def read_stats(path: str) -> dict:
    for _ in range(50):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def message(i: int, size: int) -> bytes:
    head = b"<13>1 2026-11-24T10:00:00.000000+00:00 host app web.1 - - line %09d " % i
    return head + b"x" * max(0, size - len(head))


def client_options(args) -> dict:
    """make_client's options the run asks for (and this version of it takes)."""
    if args.per_host is None:
        return {}
    return {"per_host": args.per_host}


def serial(args) -> dict:
    """N POSTs back to back through one HttpDrainTransport (or the bare floor): CPU per POST."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from logplex.drains.http import HttpDrainTransport

    port = free_port()
    stats_path = tempfile.mktemp(prefix="drain-serial-", suffix=".json")
    sink = start_sink(port, stats_path)
    lines = [message(i, args.size) for i in range(args.batch)]
    state = SimpleNamespace(left=args.serial, cpu=0.0, wall=0.0)

    def finish() -> None:
        state.cpu = time.process_time() - state.cpu
        state.wall = time.perf_counter() - state.wall
        reactor.stop()

    if args.serial_floor:
        from logplex.drains.formats import http_body
        body, count = http_body(lines)
        request = (b"POST /d/0 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/logplex-1\r\n"
                   b"Logplex-Msg-Count: %d\r\nContent-Length: %d\r\n\r\n" % (port, count, len(body))) + body

        class Floor(Protocol):
            def connectionMade(self) -> None:
                state.cpu, state.wall = time.process_time(), time.perf_counter()
                self.transport.write(request)

            def dataReceived(self, data: bytes) -> None:
                # One answer per read is what a keep-up sink sends (each is one small segment).
                state.left -= data.count(b"HTTP/1.1 ")
                if state.left <= 0:
                    finish()
                else:
                    self.transport.write(request)

        reactor.callWhenRunning(lambda: connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Floor()))
    else:
        transport = HttpDrainTransport(Drain(1, "ch-0", "d.0", f"http://127.0.0.1:{port}/d/0"),
                                       make_client(reactor), reactor)

        def one(outcome=None) -> None:
            if outcome is not None and not outcome.delivered:
                raise SystemExit(f"bench: a POST failed: {outcome.error}")
            if state.left == 0:
                finish()
                return
            state.left -= 1
            transport.send(lines, "frame").addCallback(one)

        def begin() -> None:
            # The first POST opens the connection; the count starts after it.
            def started(outcome) -> None:
                state.cpu, state.wall = time.process_time(), time.perf_counter()
                one(outcome)
            transport.send(lines, "frame").addCallback(started)

        reactor.callWhenRunning(begin)
    try:
        reactor.run()
    finally:
        sink.terminate()
        sink.wait()
        os.unlink(stats_path) if os.path.exists(stats_path) else None
    return dict(mode="floor" if args.serial_floor else "HttpDrainTransport", posts=args.serial,
                lines_per_post=args.batch, cpu_us_per_post=round(state.cpu / args.serial * 1e6, 1),
                wall_us_per_post=round(state.wall / args.serial * 1e6, 1), requests=args.serial)


def run(args, profile=None) -> dict:
    from twisted.internet import reactor

    timers = [0]
    real_call_later = reactor.callLater

    def counting_call_later(delay, f, *a, **kw):
        timers[0] += 1
        return real_call_later(delay, f, *a, **kw)

    port = free_port()
    stats_path = tempfile.mktemp(prefix="drain-fanout-", suffix=".json")
    sink = start_sink(port, stats_path)
    supervisor_module.Spool = MemorySpool
    drains = {f"ch-{i}": {i + 1: Drain(i + 1, f"ch-{i}", f"d.{i}", f"http://127.0.0.1:{port}/d/{i}")}
              for i in range(args.drains)}
    store = SimpleNamespace(cache=SimpleNamespace(channel_drains=drains), drain_listeners=[],
                            tombstone_listeners=[], tombstones=set())
    backlogs = SimpleNamespace(on_change=[], pool_for=lambda channel_id: None)
    settings = DrainSettings(pushback=0.0)
    reactor.callLater = counting_call_later
    supervisor = DrainSupervisor(store, backlogs, Metrics(), reactor, "bench", settings,
                                 make_client(reactor, **client_options(args)), keys=RedisKeys("lp", 0))
    supervisor.start()
    channels = list(drains)
    body = [message(i, args.size) for i in range(1000)]
    total = int(args.rate * args.seconds)
    state = SimpleNamespace(sent=0, start=None, cpu=None, pushed_at=None, done_at=None, ticks=0)
    result: dict = {}

    def delivered() -> int:
        return sum(w.delivered for w in supervisor.workers.values())

    def pace() -> None:
        now = time.perf_counter()
        if state.start is None:
            state.start, state.cpu = now, time.process_time()
        state.ticks += 1
        due = min(total, int(args.rate * (now - state.start + TICK))) - state.sent
        n = len(channels)
        publish = supervisor.publish
        for k in range(state.sent, state.sent + due):
            publish(channels[k % n], [body[k % 1000]])
        state.sent += due
        if state.sent >= total and state.pushed_at is None:
            state.pushed_at = now
            pacer.stop()
            watch.start(0.01)

    def check() -> None:
        if delivered() >= total:
            state.done_at = time.perf_counter()
            finish()
        elif time.perf_counter() - state.pushed_at > args.grace:
            finish()

    def finish() -> None:
        watch.stop()
        cpu = time.process_time() - state.cpu
        end = state.done_at or time.perf_counter()
        got = delivered()
        elapsed = end - state.start
        result.update(
            drains=args.drains, per_host=args.per_host, offered_per_s=args.rate, seconds=args.seconds, messages=total,
            delivered=got, delivery_s=round(elapsed, 2) if state.done_at else None,
            cpu_us_per_msg=round(cpu / max(got, 1) * 1e6, 1), cpu_s=round(cpu, 2),
            elapsed=elapsed, timers_per_s=round(timers[0] / elapsed),
        )
        supervisor.stop().addBoth(lambda _: reactor.stop())

    if profile is not None:
        # The pacer's publishing (one call per line) is left out of the count: what is
        # counted is the drains' own work, which is per POST.
        unprofiled = pace

        def pace() -> None:
            profile.disable()
            try:
                unprofiled()
            finally:
                profile.enable()

    pacer = task.LoopingCall(pace)
    watch = task.LoopingCall(check)
    pacer.clock = watch.clock = SimpleNamespace(callLater=real_call_later, seconds=reactor.seconds)
    reactor.callWhenRunning(lambda: pacer.start(TICK))
    try:
        reactor.run()
    finally:
        sink.terminate()
        sink.wait()
        stats = read_stats(stats_path)  # its final counts, written as it exits
        os.unlink(stats_path) if os.path.exists(stats_path) else None
    elapsed = result.pop("elapsed")
    requests = stats.get("requests", 0)
    result.update(requests=requests, requests_per_s=round(requests / elapsed),
                  msgs_per_request=round(stats.get("messages", 0) / max(requests, 1), 1),
                  connections=stats.get("connections"))
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drains", type=int, default=1000)
    p.add_argument("--rate", type=float, default=30000, help="messages/s offered, over all drains")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--size", type=int, default=200, help="bytes per message")
    p.add_argument("--per-host", type=int, default=None,
                   help="connections per endpoint host (default: logplex.drains.http.HOST_CONNECTIONS)")
    p.add_argument("--grace", type=float, default=60, help="seconds to wait for delivery after the last publish")
    p.add_argument("--calls", action="store_true", help="count Python calls per POST under cProfile")
    p.add_argument("--serial", type=int, default=0, help="send this many POSTs back to back instead")
    p.add_argument("--batch", type=int, default=1, help="lines per POST with --serial")
    p.add_argument("--serial-floor", action="store_true", help="--serial with a bare Protocol, not the drain")
    args = p.parse_args(argv)
    go = serial if args.serial else run
    if not args.calls:
        result = go(args)
    else:
        import cProfile
        import pstats
        profile = cProfile.Profile()
        result = profile.runcall(go, args, profile) if go is run else profile.runcall(go, args)
        stats = pstats.Stats(profile).stats
        requests = max(result["requests"], 1)
        result["calls_per_request"] = round(sum(s[1] for s in stats.values()) / requests)
        by_function = sorted(((s[1] / requests, f"{f[2]} ({os.path.basename(f[0])})") for f, s in stats.items()),
                             reverse=True)
        result["top_calls_per_request"] = {name: round(n, 1) for n, name in by_function[:25]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
