"""Drain fan-out micro-bench: many HTTP drains of one endpoint host, each with a few lines a second.

    python bench/drain_fanout.py [--drains 1000] [--rate 30000] [--seconds 10] [--size 200]

One process, a real reactor: a DrainSupervisor (the node's, with an
in-memory spool instead of Redis) runs --drains HTTP drains, each on its own
channel and its own URL path, all on one counting sink (bench/loadgen.py's
C sink, its own process). A pacer publishes --rate messages/s for --seconds,
spread round-robin over the channels as a router's fan-out would: every
10 ms each of rate/100 channels gets one line. This is issue 14's
production shape: 10,000 channels of 30 lines/s, one in ten drained.

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
        return self.ack(frame_id).addCallback(lambda _: self.head()).addCallback(lambda d: d.result)

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


def run(args) -> dict:
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
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
