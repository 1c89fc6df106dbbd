"""Config load benchmark: how long a node takes to load N channels, and how long it stalls its reactor.

Starts its own redis-server (no persistence, free loopback port, temp dir),
fills it with N channels written the way ConfigStore's scripts write them
(one token each, a drain on one in ten), then runs ConfigFeed.load() in this
process on the real reactor: once on an empty cache (a boot) and once more
with everything cached (the reload every feed reconnect does), then once more
after --changed channels were made again behind its back. For each it
prints the wall time, this process's CPU time, and the reactor's longest
stall: how late a timer due every few milliseconds ran at worst, which is how
long ingest on the same reactor would have waited (on a busy machine this
includes time the process waited for a core), and the most CPU time a single
reactor iteration took (which it does not).

    /work/venv/bin/python bench/config_load.py                  # 100,000 channels
    /work/venv/bin/python bench/config_load.py --channels 10000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor, task  # noqa: E402

from logplex.model import Channel, Drain, Token, new_drain_token, new_token_id  # noqa: E402
from logplex.config.feed import ConfigFeed  # noqa: E402
from logplex.redis.address import parse_redis_url  # noqa: E402
from logplex.redis.connection import connect  # noqa: E402
from logplex.redis.keys import RedisKeys  # noqa: E402
from logplex.settings import NodeSettings  # noqa: E402
from tests.harness.procs import RedisServer  # noqa: E402

# How many field/value pairs one HSET (or members one SADD) carries while filling.
BATCH = 1000


def resp(*args: bytes | str) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Filler:
    """A raw pipelined connection: commands are written in bulk and their replies counted off."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.out: list[bytes] = []
        self.pending = 0

    def command(self, *args) -> None:
        self.out.append(resp(*args))
        self.pending += 1
        if len(self.out) >= 200:
            self.flush()

    def flush(self) -> None:
        self.sock.sendall(b"".join(self.out))
        self.out = []
        # Every reply here is one line (+OK, :n); an error line would be a bug in this script.
        buf = b""
        while self.pending:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("redis-server closed the connection while filling")
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                if line.startswith(b"-"):
                    raise RuntimeError(f"redis-server refused a fill command: {line.decode()}")
                self.pending -= 1


def remake(port: int, keys: RedisKeys, n: int) -> None:
    """Channels 1..n deleted and made again (new incarnations and tokens) while the node did not hear."""
    filler = Filler(port)
    for i in range(1, n + 1):
        channel = Channel.new(str(i))
        token = Token(new_token_id(), channel.id, "app")
        filler.command(b"HSET", keys.channels, channel.id, channel.to_json())
        filler.command(b"HSET", keys.tokens, token.id, token.to_json())
    filler.flush()
    filler.sock.close()


def fill(port: int, keys: RedisKeys, n: int) -> tuple[int, int]:
    """N channels ("1".."N", as v2 makes them), one token each, a drain on every tenth."""
    filler = Filler(port)
    channels, tokens, drains = [], [], []
    drain_id = 0
    for i in range(1, n + 1):
        channel = Channel.new(str(i))
        token = Token(new_token_id(), channel.id, "app")
        channels += [channel.id, channel.to_json()]
        tokens += [token.id, token.to_json()]
        filler.command(b"SADD", keys.channel_tokens(channel.id), token.id)
        if i % 10 == 0:
            drain_id += 1
            drain = Drain(drain_id, channel.id, new_drain_token(), f"https://logs.example.com/{channel.id}")
            drains += [str(drain.id), drain.to_json()]
            filler.command(b"SADD", keys.channel_drains(channel.id), str(drain.id))
        for key, pairs in ((keys.channels, channels), (keys.tokens, tokens), (keys.drains, drains)):
            if len(pairs) >= 2 * BATCH:
                filler.command(b"HSET", key, *pairs)
                pairs.clear()
    for key, pairs in ((keys.channels, channels), (keys.tokens, tokens), (keys.drains, drains)):
        if pairs:
            filler.command(b"HSET", key, *pairs)
    filler.command(b"SET", keys.cluster_id, "bench-cluster")
    filler.command(b"SET", keys.epoch, "1")
    # One version bump per write, as the scripts do: one per channel, one per drain.
    filler.command(b"SET", keys.version, str(n + drain_id))
    filler.command(b"SET", keys.channel_seq, str(n))
    filler.command(b"SET", keys.drain_seq, str(drain_id))
    filler.flush()
    filler.sock.close()
    return n, drain_id


class StallMonitor:
    """A timer due every `interval` seconds; records how late each run was (the reactor's stall)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.worst = 0.0
        self.turns = 0
        self._due = 0.0
        self._call = None

    def start(self) -> None:
        self.worst, self.turns = 0.0, 0
        self._due = time.monotonic() + self.interval
        self._call = reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self._due)
        self.turns += 1
        self._due = now + self.interval
        self._call = reactor.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        # A stall still going on when the measured work ended counts too.
        self.worst = max(self.worst, time.monotonic() - self._due)


class TurnMeter:
    """The most CPU time one reactor iteration (timed calls, then I/O) took: a stall figure that
    other processes on the machine do not inflate, unlike the wall-clock lateness above."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._turn = 0.0
        run_until_current, do_iteration = reactor.runUntilCurrent, reactor.doIteration

        def timed_calls():
            started = time.process_time()
            run_until_current()
            self._turn = time.process_time() - started

        def io(timeout):
            started = time.process_time()
            do_iteration(timeout)
            self.worst = max(self.worst, self._turn + time.process_time() - started)

        reactor.runUntilCurrent, reactor.doIteration = timed_calls, io


async def measure(monitor: StallMonitor, work) -> dict:
    # Let the monitor run a few turns first, so its first figure is not the start-up.
    monitor.start()
    await task.deferLater(reactor, 0.05, lambda: None)
    monitor.worst = METER.worst = 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await work()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    monitor.stop()
    # The turn the work ended in is still running: the meter counts it once it is over.
    await task.deferLater(reactor, 0, lambda: None)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "longest_stall_ms": round(monitor.worst * 1000, 1),
            "longest_turn_cpu_ms": round(METER.worst * 1000, 1)}


METER = TurnMeter()


async def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-bench-config-")
    server = RedisServer(tmp)
    server.start()
    try:
        keys = RedisKeys("lp", 0)
        t0 = time.perf_counter()
        n, drains = fill(server.port, keys, args.channels)
        fill_s = time.perf_counter() - t0
        address = parse_redis_url(server.url)
        pool = connect(address, poolsize=2, reply_timeout=args.timeout, reactor=reactor)
        store = ConfigFeed(pool, address, reactor, keys=keys, timeout=args.timeout,
                           reconcile_interval=NodeSettings().reconcile_interval,
                           **({"page_size": args.page_size} if args.page_size else {}))
        monitor = StallMonitor(args.interval)
        results = {"channels": n, "tokens": n, "drains": drains, "fill_s": round(fill_s, 2)}
        if args.raw:
            async def raw():
                for key in (keys.channels, keys.tokens, keys.drains):
                    await pool.hgetall(key)
            results["raw_hgetall"] = await measure(monitor, raw)
        results["load"] = await measure(monitor, store.load)
        assert len(store.cache.channels) == n and len(store.cache.drains) == drains, "load incomplete"
        results["reload"] = await measure(monitor, store.load)
        assert len(store.cache.routes) == n, "reload incomplete"
        if args.changed:
            remake(server.port, keys, min(args.changed, n))
            results["reload_changed"] = await measure(monitor, store.load)
            assert len(store.cache.routes) == n + min(args.changed, n), "reload incomplete"
        await pool.disconnect()
        return results
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=100_000)
    p.add_argument("--interval", type=float, default=0.005, help="stall monitor period, s")
    p.add_argument("--timeout", type=float, default=5.0, help="the store's Redis timeout, s (node default)")
    p.add_argument("--changed", type=int, default=20_000,
                   help="then remake this many channels (new incarnation, one more token each) and reload")
    p.add_argument("--page-size", type=int, help="records per page (default: the store's)")
    p.add_argument("--raw", action="store_true", help="also time bare HGETALLs of the three hashes")
    p.add_argument("--json", help="write the figures to this file too")
    args = p.parse_args()
    print("$ " + shlex.join([sys.executable] + sys.argv))
    out: dict = {}

    def done(results):
        out.update(results)
        reactor.stop()

    def failed(f):
        out["error"] = f.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run(args)).addCallbacks(done, failed))
    reactor.run()
    if "error" in out:
        print(out["error"], file=sys.stderr)
        sys.exit(1)
    print(f"{out['channels']:,} channels, {out['tokens']:,} tokens, {out['drains']:,} drains "
          f"(filled in {out['fill_s']} s)")
    print(f"{'phase':<16} {'wall s':>8} {'CPU s':>8} {'longest stall ms':>18} {'longest turn CPU ms':>20}")
    for phase in ("raw_hgetall", "load", "reload", "reload_changed"):
        if phase in out:
            r = out[phase]
            print(f"{phase:<16} {r['wall_s']:>8} {r['cpu_s']:>8} {r['longest_stall_ms']:>18} "
                  f"{r['longest_turn_cpu_ms']:>20}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
