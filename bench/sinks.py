"""Counting sinks for drain benchmarks: an HTTP/1.1 logplex-1 receiver and a TCP syslog receiver.

    python bench/sinks.py http   --port P [--fail-from S --fail-for S] [--stats PATH]
    python bench/sinks.py syslog --port P [--stats PATH]

Each runs as its own process, on asyncio, and is meant to cost little per
message: it reads large blocks (asyncio reads up to 256 KiB at a time), finds
the fields it needs with one regex pass over each block, and answers HTTP
requests with a fixed byte string. Messages from bench/drains.py carry
`t=<send time.time()> s=<connection>:<sequence>` at the start of MSG; from
those the sink keeps a latency histogram (send -> receipt, wall clock) and
a bitmap per connection, so that it can tell unique messages from repeats
and find holes. Messages without the marker (an L10 from the node, say)
are counted but not matched.

The HTTP sink counts only messages in requests it answered 2xx: a request it
answers 503 (inside the --fail-from/--fail-for window, measured from its
first request) is "refused" and the node is expected to send it again under
the same Logplex-Frame-Id.

While running, it rewrites --stats (JSON, atomically) every --interval
seconds with its counters; on SIGTERM or SIGINT it writes the final figures
there (percentiles, holes) and prints them on stdout, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import signal
import sys
import time
from collections import Counter

MARK = re.compile(rb"t=(\d+\.\d+) s=(\d+):(\d+)")
MAX_HEAD = 16 * 1024
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Stats:
    """What a sink saw: message counts, repeats and holes by sequence, latency histogram."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.started = time.time()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.messages = 0  # frames received (accepted, for HTTP), repeats included
        self.marked = 0  # of those, with the t=/s= marker
        self.bytes = 0
        self.unique = 0
        self.duplicates = 0
        self.out_of_order = 0  # new sequence numbers below one already seen on that connection
        self.bitmaps: dict[bytes, bytearray] = {}
        self.highest: dict[bytes, int] = {}
        self.latency: Counter = Counter()  # 3-significant-digit ms -> messages
        self.extra: dict = {}

    def record(self, region: bytes, frames: int, now: float) -> None:
        """Account frames whose bytes are all in region (a body or a run of complete frames)."""
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.messages += frames
        self.bytes += len(region)
        found = MARK.findall(region)
        if not found:
            return
        self.marked += len(found)
        # Latency: a generator block shares one timestamp, so count those first.
        latency = self.latency
        for t, n in Counter([f[0] for f in found]).items():
            latency[float("%.3g" % max(0.0, (now - float(t)) * 1000))] += n
        bitmaps, highest = self.bitmaps, self.highest
        conn, bm, top = None, None, -1
        new = 0
        for _, c, s in found:
            if c != conn:
                if conn is not None:
                    highest[conn] = top
                conn = c
                bm = bitmaps.get(c)
                if bm is None:
                    bm = bitmaps[c] = bytearray(1 << 16)
                top = highest.get(c, -1)
            s = int(s)
            if s >= len(bm):
                bm.extend(bytes(max(len(bm), s + 1 - len(bm))))
            if bm[s]:
                self.duplicates += 1
                continue
            bm[s] = 1
            new += 1
            if s < top:
                self.out_of_order += 1
            else:
                top = s
        if conn is not None:
            highest[conn] = top
        self.unique += new

    def percentile(self, q: float) -> float | None:
        total = sum(self.latency.values())
        if not total:
            return None
        rank, seen = q * total, 0
        for ms in sorted(self.latency):
            seen += self.latency[ms]
            if seen >= rank:
                return ms
        return max(self.latency)

    def snapshot(self, final: bool = False) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "kind": self.kind, "pid": os.getpid(), "final": final,
            "messages": self.messages, "unique": self.unique, "duplicates": self.duplicates,
            "marked": self.marked, "out_of_order": self.out_of_order, "bytes": self.bytes,
            "first_at": self.first_at, "last_at": self.last_at, "written_at": time.time(),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            **self.extra,
        }
        if final:
            holes, max_gap = 0, 0
            for c, bm in self.bitmaps.items():
                top = self.highest.get(c, -1)
                if top < 0:
                    continue
                runs = bytes(bm[: top + 1]).split(b"\x01")
                holes += sum(map(len, runs))
                max_gap = max(max_gap, max(map(len, runs)))
            out.update({
                "connections_seen": len(self.bitmaps),
                "seq_holes": holes,  # sequence numbers below the highest seen that never arrived
                "max_seq_gap": max_gap,  # the longest run of them on one connection
                "latency_p50_ms": self.percentile(0.50),
                "latency_p99_ms": self.percentile(0.99),
                "latency_max_ms": max(self.latency) if self.latency else None,
            })
        return out


class HttpSink(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only; 204, or 503 inside the failure window."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.buf = bytearray()
        self.need = -1  # body bytes expected, -1 while reading a head
        self.head: dict[bytes, bytes] = {}
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.extra["connections"] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._bad()
                    return
                lines = bytes(buf[:end]).split(b"\r\n")
                del buf[: end + 4]
                head = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    head[name.strip().lower()] = value.strip()
                if b"transfer-encoding" in head:
                    self._bad()  # the node sends Content-Length bodies
                    return
                self.head = head
                self.need = int(head.get(b"content-length", b"0"))
            if len(buf) < self.need:
                return
            body = bytes(buf[: self.need])
            del buf[: self.need]
            self.need = -1
            self.transport.write(self.server.request(self.head, body))

    def _bad(self) -> None:
        self.transport.write(BAD)
        self.transport.close()


class SyslogSink(asyncio.Protocol):
    """Octet-counted frames (RFC 6587) back to back; counts walk the lengths, block by block."""

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.rest = b""

    def connection_made(self, transport) -> None:
        self.server.extra["connections"] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.rest + data if self.rest else data
        pos, n, frames = 0, len(buf), 0
        find = buf.find
        while True:
            while pos < n and buf[pos] in b"\n\r\x00":  # stray trailers between frames
                pos += 1
            sp = find(b" ", pos, pos + 11)
            if sp < 0:
                break
            end = sp + 1 + int(buf[pos:sp])
            if end > n:
                break
            pos = end
            frames += 1
        self.rest = buf[pos:]
        if frames:
            self.server.stats.record(buf[:pos] if pos < n else buf, frames, time.time())


class Server:
    def __init__(self, args) -> None:
        self.args = args
        self.stats = Stats(args.kind)
        self.extra = self.stats.extra
        self.extra.update({"connections": 0})
        if args.kind == "http":
            self.extra.update({"requests": 0, "accepted_requests": 0, "refused_requests": 0,
                               "refused_messages": 0, "frame_ids": 0, "repeated_frame_ids": 0,
                               "fail_window": None})
            self.frame_ids: set[bytes] = set()
            self.first_request: float | None = None

    def failing(self, now: float) -> bool:
        a = self.args
        if not a.fail_for:
            return False
        if self.first_request is None:
            self.first_request = now
            start = now + a.fail_from
            self.extra["fail_window"] = [start, start + a.fail_for]
        start, stop = self.extra["fail_window"]
        return start <= now < stop

    def request(self, head: dict, body: bytes) -> bytes:
        now = time.time()
        extra = self.extra
        extra["requests"] += 1
        count = int(head.get(b"logplex-msg-count", b"0"))
        if self.failing(now):
            extra["refused_requests"] += 1
            extra["refused_messages"] += count
            return UNAVAILABLE
        extra["accepted_requests"] += 1
        frame_id = head.get(b"logplex-frame-id")
        if frame_id is not None:
            if frame_id in self.frame_ids:
                extra["repeated_frame_ids"] += 1
            else:
                self.frame_ids.add(frame_id)
                extra["frame_ids"] += 1
        if not count:  # no header: count frames by their lengths
            pos, n = 0, len(body)
            while pos < n:
                sp = body.find(b" ", pos)
                pos = sp + 1 + int(body[pos:sp])
                count += 1
        self.stats.record(body, count, now)
        return NO_CONTENT

    def write(self, final: bool = False) -> dict:
        snap = self.stats.snapshot(final)
        if self.args.stats:
            tmp = self.args.stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump(snap, f)
            os.replace(tmp, self.args.stats)
        return snap


async def serve(args) -> None:
    server = Server(args)
    loop = asyncio.get_running_loop()
    proto = HttpSink if args.kind == "http" else SyslogSink
    listener = await loop.create_server(lambda: proto(server), args.host, args.port, backlog=128)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server.write()
    print(f"sink: {args.kind} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), args.interval)
        except asyncio.TimeoutError:
            server.write()
    listener.close()
    print(json.dumps(server.write(final=True)), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("http", "syslog"))
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--stats", metavar="PATH", help="JSON counters, rewritten every --interval s and at exit")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between --stats rewrites (0.5)")
    p.add_argument("--fail-from", type=float, default=0.0,
                   help="http: seconds after the first request when 503s start (0)")
    p.add_argument("--fail-for", type=float, default=0.0, help="http: seconds of 503s (0: never fail)")
    args = p.parse_args(argv)
    if args.kind != "http" and args.fail_for:
        p.error("--fail-for is for the http sink")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
