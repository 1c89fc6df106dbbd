"""Issue #14: the cost of one backlog flush at production cardinality, per Redis encoding.

    /work/venv/bin/python bench/backlog_write.py --channels 10,1000,10000 --messages 300000

A real redis-server on a free loopback port; one in-process Twisted client per
encoding writes the same flushes (every channel gets messages/channels lines
of --size bytes, one flush of all of them per tick, --ticks ticks) and
reports, per message, the client's CPU (time.process_time, the node's side)
and the Redis server's CPU (INFO cpu), and the flush's wall time:

  pipeline   LPUSH + LTRIM + EXPIRE per channel, txredisapi pipeline: a
             Deferred and a parsed reply per command (the writer before #14)
  lua        one EVALSHA per flush carrying every channel (the writer since
             #14): one command, one integer reply
  raw        the same three commands per channel, RESP encoded by hand and
             written to a plain socket, replies counted by line, not parsed
             (no client library in the way; the encoder is Python)
  multi      raw's commands between MULTI and EXEC (atomic, as the script is;
             every command answered QUEUED, then all in EXEC's reply)
  function   the writer's script as a Redis function (FUNCTION LOAD once,
             one FCALL per flush, encoded as raw is); Redis 7 and later only

No timing here is an assertion: these are measurements to choose by.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import ingest  # noqa: E402  (spawn, free_port, wait_for, redis_call, cleanup)
from twisted.internet import defer, protocol, reactor  # noqa: E402

from logplex.redis import address, connection  # noqa: E402
from logplex.redis.keys import RedisKeys  # noqa: E402
from logplex.backlog.writer import WRITE_SCRIPT, write_arguments  # noqa: E402

HISTORY, EXPIRY = 1500, 7 * 86400


def redis_cpu(port: int) -> float:
    """The server's CPU seconds so far (INFO cpu, read over a plain socket)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO cpu\r\n")
        head = b""
        while b"\r\n" not in head:
            head += s.recv(4096)
        size = int(head[1:head.index(b"\r\n")])
        body = head[head.index(b"\r\n") + 2:]
        while len(body) < size:
            body += s.recv(4096)
    info = body[:size].decode()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])


class _Counter(protocol.Protocol):
    """Counts one-line replies (integers, +OK, errors): all a backlog write gets back."""

    def __init__(self) -> None:
        self.waiting: list[tuple[int, defer.Deferred]] = []
        self.seen = 0
        self.errors = 0
        self._last = b"\n"  # the byte before this read: a read may end between CR and LF

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return
        self.seen += data.count(b"\n")  # these replies hold no LF but their lines' ends
        self.errors += data.count(b"\n-") + (self._last == b"\n" and data.startswith(b"-"))
        self._last = data[-1:]
        while self.waiting and self.seen >= self.waiting[0][0]:
            self.seen -= self.waiting[0][0]
            self.waiting.pop(0)[1].callback(None)

    def send(self, payload: bytes, replies: int) -> defer.Deferred:
        d = defer.Deferred()
        self.waiting.append((replies, d))
        self.transport.write(payload)
        return d


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


async def flush_pipeline(pool, keys: RedisKeys, batch: dict[str, list[bytes]]) -> None:
    pipe = await pool.pipeline()
    for channel_id, lines in batch.items():
        key = keys.backlog(channel_id)
        pipe.execute_command("LPUSH", key, *lines)
        pipe.execute_command("LTRIM", key, 0, HISTORY - 1)
        pipe.execute_command("EXPIRE", key, EXPIRY)
    await pipe.execute_pipeline()


async def flush_lua(pool, keys: RedisKeys, batch: dict[str, list[bytes]]) -> None:
    names, args = write_arguments(keys, batch, HISTORY, EXPIRY)
    await pool.eval(WRITE_SCRIPT, names, args)


def _commands(keys: RedisKeys, batch: dict[str, list[bytes]]) -> list[bytes]:
    """LPUSH, LTRIM and EXPIRE per channel, each RESP encoded: raw's and multi's payload."""
    parts = []
    history, expiry = b"%d" % (HISTORY - 1), b"%d" % EXPIRY
    for channel_id, lines in batch.items():
        key = keys.backlog(channel_id)
        parts.append(_resp(b"LPUSH", key, *lines))
        parts.append(_resp(b"LTRIM", key, b"0", history))
        parts.append(_resp(b"EXPIRE", key, expiry))
    return parts


async def flush_raw(counter: _Counter, keys: RedisKeys, batch: dict[str, list[bytes]]) -> None:
    await counter.send(b"".join(_commands(keys, batch)), 3 * len(batch))


async def flush_multi(counter: _Counter, keys: RedisKeys, batch: dict[str, list[bytes]]) -> None:
    # +OK, a +QUEUED per command, then EXEC's array: its header and a line per command.
    payload = b"".join([_resp(b"MULTI"), *_commands(keys, batch), _resp(b"EXEC")])
    await counter.send(payload, 2 + 6 * len(batch))


# WRITE_SCRIPT's text as the body of a function whose parameters keep the script's names.
FUNCTION = "bench_backlog_write"
LIBRARY = (f"#!lua name=bench_backlog\n"
           f"redis.register_function('{FUNCTION}', function(KEYS, ARGV)\n{WRITE_SCRIPT}\nend)\n")


async def flush_function(counter: _Counter, keys: RedisKeys, batch: dict[str, list[bytes]]) -> None:
    names, args = write_arguments(keys, batch, HISTORY, EXPIRY)
    await counter.send(_resp(b"FCALL", FUNCTION.encode(), b"%d" % len(names), *names, *args), 1)


FLUSHES = {"lua": flush_lua, "raw": flush_raw, "multi": flush_multi, "function": flush_function}


async def run(args) -> None:
    tmp = tempfile.mkdtemp(prefix="backlog-write-")
    server = ingest.start_redis(tmp, args.redis_server)
    port = server.port
    keys = RedisKeys("bench", 0)
    pool = connection.connect(address.parse_redis_url(f"redis://127.0.0.1:{port}/0"), reply_timeout=60)
    await pool.ping()
    counter = await protocol.ClientCreator(reactor, _Counter).connectTCP("127.0.0.1", port)
    line = b"x" * args.size
    encodings = list(args.encodings)
    if "function" in encodings:
        loaded = ingest.redis_call(port, "FUNCTION", "LOAD", "REPLACE", LIBRARY)
        if not loaded.startswith(b"$"):
            print(f"function: left out, this redis-server cannot load one ({loaded.decode(errors='replace')})")
            encodings.remove("function")
    print(f"{'channels':>8} {'encoding':>9} {'node us/msg':>12} {'redis us/msg':>13} {'flush ms':>9}")
    for channels in args.channels:
        per = max(1, args.messages // channels // args.ticks)
        batch = {f"{c}": [line] * per for c in range(channels)}
        total = per * channels * args.ticks
        for name in encodings:
            ingest.redis_call(port, "FLUSHALL")
            await flush_lua(pool, keys, {"warm": [line]})  # the script is cached, as in a running node
            r0, c0, w0 = redis_cpu(port), time.process_time(), time.monotonic()
            walls = []
            for _ in range(args.ticks):
                t = time.monotonic()
                if name == "pipeline":
                    await flush_pipeline(pool, keys, batch)
                else:
                    await FLUSHES[name](pool if name == "lua" else counter, keys, batch)
                walls.append(time.monotonic() - t)
            node_us = 1e6 * (time.process_time() - c0) / total
            redis_us = 1e6 * (redis_cpu(port) - r0) / total
            stored = int(ingest.redis_call(port, "LLEN", keys.backlog("0").decode())[1:])
            assert stored == min(HISTORY, per * args.ticks), (name, stored)
            print(f"{channels:>8} {name:>9} {node_us:>12.2f} {redis_us:>13.2f} "
                  f"{1000 * sum(walls) / len(walls):>9.1f}", flush=True)
    counter.transport.loseConnection()
    await pool.disconnect()
    server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=lambda s: [int(x) for x in s.split(",")], default=[10, 1000, 10000])
    p.add_argument("--messages", type=int, default=300_000, help="lines per encoding and cardinality")
    p.add_argument("--ticks", type=int, default=10, help="flushes the lines are spread over")
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--encodings", type=lambda s: s.split(","), default=["pipeline", "lua", "raw", "multi", "function"])
    p.add_argument("--redis-server", default=ingest.REDIS_SERVER)
    args = p.parse_args()
    try:
        defer.ensureDeferred(run(args)).addBoth(lambda r: (reactor.stop(), r)[1]).addErrback(print)
        reactor.run()
    finally:
        ingest.cleanup()


if __name__ == "__main__":
    main()
