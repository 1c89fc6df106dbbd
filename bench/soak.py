"""Fault soak: real processes, a steady load of numbered messages, and exact accounting at the receivers.

    python bench/soak.py shard | config | drain | sigterm | sigkill | partial | all [--quick]

Each case starts its own world: a config Redis and a separate shard Redis (redis-server, no
persistence), one node (twistd logplex from this checkout, --node-name soak, the config Redis
and the shard Redis given apart), a counting HTTP sink (this script's `_sink`, its own process)
as the drain of channel `soak`, and a tail of that channel read by this process. Two senders
write to `soak` all the time: `h` POSTs application/logplex-1 batches to /logs (a 204 is the
acknowledgement; a failed batch is retried under the same Logplex-Frame-Id, as log-shuttle
does) and `t` writes octet-counted frames over syslog TCP (reconnecting when the node goes).
Every MSG carries `s=<sender>:<sequence> t=<send time>`, so each receiver (the sink, the tail,
the backlog read straight from the shard Redis with LRANGE) is counted by sequence number:
what is missing, what came twice. The node's /metrics and VmRSS are read before and after.

bench/SOAK.md says what each case does and checks; --quick shortens every duration by 6 for a
trial run (the figures in SOAK.md are from full-length runs). Results go to
bench/results/soak-<case>.json; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from array import array
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import drains as bench_drains  # noqa: E402  (bench/drains.py: frame_format, sender, revision)
import ingest as ib  # noqa: E402  (bench/ingest.py: spawn, cleanup, free_port, metrics, rss_mib, ...)
from tests.harness.procs import NodeProcess, RedisServer  # noqa: E402  (ingest put the repository on sys.path)

RESULTS = os.path.join(HERE, "results")
AUTH = "Basic " + base64.b64encode(b"admin:secret").decode()
TS = "2026-11-24T10:00:00.000000+00:00"
MARK = re.compile(rb"s=([a-z]+|\d{3}):(\d+)")
L10 = re.compile(rb"Error L10 \(output buffer overflow\): (\d+) messages dropped")
PAD = "x" * 120  # MSG is about 170 bytes; a frame about 230


# == the sink (a process of its own: `soak.py _sink --port P`) ===============================================
class SinkStats:
    def __init__(self) -> None:
        self.mode = "ok"
        self.modes: list[tuple[float, str]] = [(time.time(), "ok")]
        self.answers: Counter = Counter()
        self.bitmaps: dict[str, bytearray] = {}
        self.unique: Counter = Counter()
        self.duplicates: Counter = Counter()
        self.l10_lines = 0
        self.l10_reported = 0
        self.unmarked = 0
        self.messages = 0
        self.frame_ids: set[bytes] = set()
        self.repeated_frame_ids = 0
        self.hung = 0
        self.last_at: float | None = None

    def account(self, body: bytes, frame_id: bytes | None) -> None:
        if frame_id is not None:
            if frame_id in self.frame_ids:
                self.repeated_frame_ids += 1
            self.frame_ids.add(frame_id)
        pos, n = 0, len(body)
        while pos < n:
            sp = body.find(b" ", pos)
            end = sp + 1 + int(body[pos:sp])
            message = body[sp + 1:end]
            pos = end
            self.messages += 1
            found = MARK.search(message)
            if found is None:
                l10 = L10.search(message)
                if l10 is not None:
                    self.l10_lines += 1
                    self.l10_reported += int(l10.group(1))
                else:
                    self.unmarked += 1
                continue
            sid, seq = found.group(1).decode(), int(found.group(2))
            bm = self.bitmaps.setdefault(sid, bytearray())
            if seq >= len(bm):
                bm.extend(bytes(seq + 1 - len(bm) + 65536))
            if bm[seq]:
                self.duplicates[sid] += 1
            else:
                bm[seq] = 1
                self.unique[sid] += 1
        self.last_at = time.time()

    def snapshot(self, full: bool) -> dict:
        out = {"mode": self.mode, "modes": self.modes, "answers": dict(self.answers),
               "unique": dict(self.unique), "duplicates": dict(self.duplicates),
               "l10_lines": self.l10_lines, "l10_reported": self.l10_reported, "unmarked": self.unmarked,
               "messages": self.messages, "frame_ids": len(self.frame_ids),
               "repeated_frame_ids": self.repeated_frame_ids, "hung": self.hung, "last_at": self.last_at}
        if full:
            out["bitmaps"] = {sid: base64.b64encode(zlib.compress(bytes(bm))).decode()
                              for sid, bm in self.bitmaps.items()}
        return out


def _response(status: str, body: bytes = b"", ctype: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: %s\r\n\r\n" % (status.encode(), len(body), ctype)
            + body)


class SinkConnection(asyncio.Protocol):
    def __init__(self, stats: SinkStats, loop) -> None:
        self.stats, self.loop = stats, loop
        self.buf = bytearray()
        self.transport = None
        self.hung = False
        self.open = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.open = False

    def data_received(self, data: bytes) -> None:
        if self.hung:
            return
        self.buf += data
        while not self.hung:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            head = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                head[name.strip().lower()] = value.strip()
            length = int(head.get(b"content-length", b"0"))
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            method, target = lines[0].split(b" ")[:2]
            self.request(method, target, head, body)

    def request(self, method: bytes, target: bytes, head: dict, body: bytes) -> None:
        stats = self.stats
        path, _, query = target.partition(b"?")
        if path == b"/_control":
            stats.mode = query.decode().partition("=")[2]
            stats.modes.append((time.time(), stats.mode))
            self.transport.write(_response("200 OK", b"{}"))
            return
        if path == b"/_stats":
            self.transport.write(_response("200 OK", json.dumps(stats.snapshot(b"full" in query)).encode()))
            return
        mode = stats.mode
        stats.answers[mode] += 1
        if mode == "ok":
            stats.account(body, head.get(b"logplex-frame-id"))
            self.transport.write(_response("204 No Content"))
        elif mode == "error":
            self.transport.write(_response("500 Internal Server Error"))
        elif mode == "hang":
            self.hung = True  # holds the request, and the connection, until the node gives up
            stats.hung += 1
        elif mode == "slow":
            def answer():
                if self.open:
                    stats.account(body, head.get(b"logplex-frame-id"))
                    self.transport.write(_response("204 No Content"))
            self.loop.call_later(1.0, answer)


async def _serve_sink(port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = SinkStats()
    server = await loop.create_server(lambda: SinkConnection(stats, loop), "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


# == processes ===============================================================================================
def resp(port: int, *args, timeout: float = 30.0):
    """One Redis command on a fresh connection, its reply parsed (bulk strings as bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (x if isinstance(x, bytes) else str(x).encode() for x in args)))
        f = s.makefile("rb")

        def read():
            line = f.readline()
            kind, rest = line[:1], line[1:-2]
            if kind == b"+":
                return rest
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                size = int(rest)
                return None if size < 0 else f.read(size + 2)[:-2]
            if kind == b"*":
                size = int(rest)
                return None if size < 0 else [read() for _ in range(size)]
            raise RuntimeError(f"unexpected reply {line!r}")

        return read()


class Redis(RedisServer):
    """The harness's redis-server; started again after a kill, it comes back on its port."""

    def __init__(self, root: str, name: str) -> None:
        super().__init__(os.path.join(root, name), "/usr/bin/redis-server")
        self.name = name

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process

    def start(self) -> None:
        if self.port:
            self.restart()
        else:
            super().start()
        ib.started.append(self.process)


class Node(NodeProcess):
    """The harness's node on a config and a shard Redis; a restart comes back on its ports, where
    senders reconnect."""

    def __init__(self, root: str, cfg: Redis, shard: Redis, extra: list[str], name: str = "soak") -> None:
        super().__init__(os.path.join(root, "node"), cfg.url, ["--shard-redis", shard.url, "--allow-private-drains", *extra],
                         name=name, session=True)
        self.api = self.api_url

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process

    @property
    def cmd(self) -> list[str]:
        return self.command()

    def start(self) -> float:
        began = time.monotonic()
        super().start(60)
        ib.started.append(self.process)
        return time.monotonic() - began

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> tuple[int, float]:
        began = time.monotonic()
        code = self.stop(sig, timeout=60)
        return code, time.monotonic() - began

    def log(self) -> str:
        return self.log_text()

    def rss(self) -> float | None:
        try:
            return round(ib.rss_mib(self.pid), 1)
        except (OSError, TypeError):
            return None


def api(node: Node, method: str, path: str, body=None, timeout: float = 10.0) -> tuple[int, object, float]:
    """(status, JSON or text, seconds): errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(node.api + path, data=data, method=method, headers={"Authorization": AUTH})
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, http.client.HTTPException) as e:
        return 0, repr(e), time.monotonic() - began
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = raw.decode(errors="replace")
    return status, doc, time.monotonic() - began


def metrics(node: Node) -> dict[str, float]:
    try:
        return ib.metrics(node.api)
    except (OSError, http.client.HTTPException):
        return {}


# == senders and readers (threads of this process) ================================================================
def grow(bm: bytearray, seq: int) -> None:
    if seq >= len(bm):
        bm.extend(bytes(seq + 1 - len(bm) + 65536))


def message(token: str, sid: str, seq: int, stamp: str) -> bytes:
    return f"<134>1 {TS} host {token} {sid} - - soak s={sid}:{seq:09d} t={stamp} {PAD}".encode()


class HttpSender(threading.Thread):
    """Batches every 20 ms to POST /logs; a batch is acknowledged by its 204 and retried until then."""

    sid = "h"

    def __init__(self, node: Node, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.node, self.token, self.rate = node, token, rate
        self.acked = bytearray()
        self.acked_at = array("d")
        self.sent = 0
        self.retries: Counter = Counter()
        self.gave_up = 0
        self.stopping = threading.Event()
        self.conn: http.client.HTTPConnection | None = None
        self.auth = "Basic " + base64.b64encode(b"token:" + token.encode()).decode()

    def run(self) -> None:
        start, seq = time.monotonic(), 0
        while not self.stopping.is_set():
            due = min(int(self.rate * (time.monotonic() - start)), seq + 2000)
            if due <= seq:
                time.sleep(0.02)
                continue
            self.post(seq, due)
            seq = due
        self.sent = seq

    def post(self, a: int, b: int) -> None:
        stamp = "%.6f" % time.time()
        frames = [message(self.token, self.sid, i, stamp) for i in range(a, b)]
        body = b"".join(b"%d %s\n" % (len(m) + 1, m) for m in frames)
        headers = {"Authorization": self.auth, "Content-Type": "application/logplex-1",
                   "Logplex-Msg-Count": str(b - a), "Logplex-Frame-Id": f"soak-h-{a}"}
        deadline = time.monotonic() + 300
        while True:
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.node.logs_port, timeout=10)
                self.conn.request("POST", "/logs", body, headers)
                response = self.conn.getresponse()
                response.read()
                if response.status == 204:
                    now = time.time()
                    grow(self.acked, b)
                    for i in range(a, b):
                        self.acked[i] = 1
                    while len(self.acked_at) < b:
                        self.acked_at.extend([0.0] * 4096)
                    for i in range(a, b):
                        self.acked_at[i] = now
                    return
                self.retries[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as e:
                self.retries[type(e).__name__] += 1
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
            if time.monotonic() > deadline:
                self.gave_up += b - a
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(330)


class TcpSender(threading.Thread):
    """Octet-counted frames over one syslog TCP connection every 20 ms; reconnects and resends a failed write."""

    sid = "t"

    def __init__(self, node: Node, token: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.node, self.token, self.rate = node, token, rate
        self.written = bytearray()
        self.written_at = array("d")
        self.sent = 0
        self.errors: Counter = Counter()
        self.stopping = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        start, seq = time.monotonic(), 0
        while not self.stopping.is_set():
            due = min(int(self.rate * (time.monotonic() - start)), seq + 2000)
            if due <= seq:
                time.sleep(0.02)
                continue
            stamp = "%.6f" % time.time()
            data = b"".join(b"%d %s" % (len(m), m) for m in (message(self.token, self.sid, i, stamp)
                                                             for i in range(seq, due)))
            while not self.stopping.is_set():
                try:
                    if self.sock is None:
                        self.sock = socket.create_connection(("127.0.0.1", self.node.syslog_port), timeout=10)
                    self.sock.sendall(data)
                    now = time.time()
                    grow(self.written, due)
                    while len(self.written_at) < due:
                        self.written_at.extend([0.0] * 4096)
                    for i in range(seq, due):
                        self.written[i] = 1
                        self.written_at[i] = now
                    break
                except OSError as e:
                    self.errors[type(e).__name__] += 1
                    if self.sock is not None:
                        self.sock.close()
                    self.sock = None
                    time.sleep(0.2)
            seq = due
        self.sent = seq
        if self.sock is not None:
            self.sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


class TailReader(threading.Thread):
    """A live session (num 0) of the channel, read raw; a new one whenever the node closes it."""

    def __init__(self, node: Node, channel: str) -> None:
        super().__init__(daemon=True)
        self.node, self.channel = node, channel
        self.bitmaps: dict[str, bytearray] = {}
        self.unique: Counter = Counter()
        self.duplicates: Counter = Counter()
        self.l11 = 0
        self.partial_lines = 0
        self.sessions = 0
        self.stopping = threading.Event()
        self.last_at = 0.0
        self.opened = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.read_one()
            except (OSError, ValueError, http.client.HTTPException):
                pass
            if not self.stopping.is_set():
                time.sleep(0.3)

    def read_one(self) -> None:
        status, doc, _ = api(self.node, "POST", "/v2/sessions", {"channel_id": self.channel, "tail": True, "num": 0})
        if status != 201:
            return
        path = "/sessions/" + doc["url"].rsplit("/sessions/", 1)[1]
        with socket.create_connection(("127.0.0.1", self.node.api_port), timeout=10) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
            s.settimeout(0.5)
            pending = b""
            got_head = False
            self.sessions += 1
            while not self.stopping.is_set():
                try:
                    data = s.recv(262144)
                except TimeoutError:
                    continue
                if not data:
                    return
                pending += data
                if not got_head:
                    if b"\r\n\r\n" not in pending:
                        continue
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                        return
                    got_head = True
                    self.opened.set()
                cut = pending.rfind(b"\n") + 1
                complete, pending = pending[:cut], pending[cut:]
                self.l11 += complete.count(b"Error L11")
                self.partial_lines += complete.count(b"PARTIAL")
                for sid, seq in MARK.findall(complete):
                    sid, seq = sid.decode(), int(seq)
                    bm = self.bitmaps.setdefault(sid, bytearray())
                    grow(bm, seq)
                    if bm[seq]:
                        self.duplicates[sid] += 1
                    else:
                        bm[seq] = 1
                        self.unique[sid] += 1
                if cut:
                    self.last_at = time.time()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


# == accounting ===================================================================================================
def seqs(bm: bytearray | bytes) -> set[int]:
    return {i for i, v in enumerate(bm) if v}


def compare(expected: set[int], got: set[int]) -> dict:
    missing = sorted(expected - got)
    return {"expected": len(expected), "got": len(expected & got), "missing": len(missing),
            "missing_first": missing[:5], "extra": len(got - expected)}


def backlog(shard: Redis, channel: str) -> dict[str, set[int]]:
    """The channel's backlog, straight from the shard: sequence numbers by sender ("" counts the
    lines without one)."""
    out: dict[str, set[int]] = {"": set()}
    for i, raw in enumerate(resp(shard.port, "LRANGE", f"lp:log:{channel}", 0, -1) or []):
        found = MARK.search(raw)
        if found:
            out.setdefault(found.group(1).decode(), set()).add(int(found.group(2)))
        else:
            out[""].add(i)
    return out


def runs(sorted_seqs: list[int]) -> list[list[int]]:
    """[first, last] of each run of consecutive numbers."""
    out: list[list[int]] = []
    for s in sorted_seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


class Check:
    def __init__(self) -> None:
        self.items: list[dict] = []

    def __call__(self, name: str, ok: bool, expected, got, note: str = "") -> None:
        self.items.append({"check": name, "ok": bool(ok), "expected": expected, "got": got, "note": note})

    @property
    def ok(self) -> bool:
        return all(i["ok"] for i in self.items)


# == the world ====================================================================================================
class World:
    """cfg and shard Redis, the node, the sink, channel `soak` with its drain, senders and a tail."""

    def __init__(self, case: str, args, node_args: list[str] = ()) -> None:
        self.case, self.args = case, args
        self.root = tempfile.mkdtemp(prefix=f"logplex-soak-{case}-")
        ib.tmp_dirs.append(self.root)
        self.cfg, self.shard = Redis(self.root, "cfg"), Redis(self.root, "shard")
        self.cfg.start()
        self.shard.start()
        self.node = Node(self.root, self.cfg, self.shard, ["--history", str(args.history), *node_args])
        self.node.start()
        self.sink_port = ib.free_port()
        self.sink_cmd = [sys.executable, os.path.abspath(__file__), "_sink", "--port", str(self.sink_port)]
        self.sink = ib.spawn(self.sink_cmd, os.path.join(self.root, "sink.log"))
        ib.wait_for(lambda: self.sink_stats() is not None, "sink", self.sink)
        status, doc, _ = api(self.node, "PUT", "/v3/channels/soak", {"tokens": ["app"]})
        assert status == 201, (status, doc)
        self.token = doc["tokens"]["app"]
        status, doc, _ = api(self.node, "POST", "/v3/channels/soak/drains",
                             {"url": f"http://127.0.0.1:{self.sink_port}/logs"})
        assert status == 201, (status, doc)
        self.drain_id = doc["id"]
        ib.wait_for(lambda: self.drain_state() is not None, "the drain's worker", self.node.proc, timeout=15)
        self.spool_meta = f"lp:spool:{self.drain_id}:soak:meta"
        self.http = self.tcp = self.tail = None
        self.samples: list[dict] = []
        self.events: list[tuple[float, str]] = []
        self.t0 = time.time()

    # -- parts
    def sink_stats(self, full: bool = False) -> dict | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.sink_port, timeout=30)
            conn.request("GET", "/_stats?full" if full else "/_stats")
            doc = json.loads(conn.getresponse().read())
            conn.close()
            return doc
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def sink_mode(self, mode: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.sink_port, timeout=10)
        conn.request("POST", f"/_control?mode={mode}", b"")
        conn.getresponse().read()
        conn.close()
        self.event(f"sink {mode}")

    def drain_state(self) -> dict | None:
        status, doc, _ = api(self.node, "GET", f"/v3/channels/soak/drains/{self.drain_id}")
        return doc.get("state") if status == 200 and isinstance(doc, dict) else None

    def spool_bytes(self) -> int:
        try:
            return int(resp(self.shard.port, "HGET", self.spool_meta, "bytes", timeout=2) or 0)
        except (OSError, RuntimeError, ValueError):
            return -1

    def event(self, what: str) -> None:
        self.events.append((round(time.time() - self.t0, 2), what))
        print(f"  [{self.case} +{time.time() - self.t0:6.1f} s] {what}", flush=True)

    # -- load
    def start_load(self) -> None:
        rate = self.args.rate / 2
        self.tail = TailReader(self.node, "soak")
        self.tail.start()
        self.tail.opened.wait(10)
        self.http = HttpSender(self.node, self.token, rate)
        self.tcp = TcpSender(self.node, self.token, rate)
        self.http.start()
        self.tcp.start()
        self.load_started = time.time()
        self.event(f"load on: {self.args.rate:g} msg/s (h over HTTP, t over TCP)")

    def stop_load(self) -> None:
        self.tcp.stop()
        self.http.stop()
        self.load_stopped = time.time()
        self.event(f"load off: h acked {sum(self.http.acked)}, t written {sum(self.tcp.written)}")

    def sample(self) -> None:
        m = metrics(self.node) if self.node.alive() else {}
        self.samples.append({"t": round(time.time() - self.t0, 1), "rss_mib": self.node.rss() if self.node.alive() else None,
                             "spool_bytes": self.spool_bytes(), "spool_depth": m.get("logplex_drain_spool_depth"),
                             "buffered": m.get("logplex_drain_buffered")})

    def run_for(self, seconds: float, every: float = 1.0, during=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            if during is not None:
                during()
            time.sleep(max(0.0, min(every, end - time.monotonic())))

    def expected(self) -> dict[str, set[int]]:
        return {"h": seqs(self.http.acked), "t": seqs(self.tcp.written)}

    def settle(self, expected: dict[str, set[int]], quiet: float = 45.0, limit: float = 400.0,
               tail: bool = True) -> float:
        """Until the sink (and the tail) hold every expected message, or nothing arrived for `quiet` s."""
        began = time.monotonic()
        want = {sid: len(v) for sid, v in expected.items()}
        last, still = None, time.monotonic()
        while time.monotonic() - began < limit:
            self.sample()
            stats = self.sink_stats() or {}
            have = {sid: stats.get("unique", {}).get(sid, 0) for sid in want}
            seen = {sid: self.tail.unique.get(sid, 0) if tail else want[sid] for sid in want}
            if all(have[s] >= want[s] for s in want) and all(seen[s] >= want[s] for s in want):
                break
            if (have, seen) != last:
                last, still = (have, seen), time.monotonic()
            elif time.monotonic() - still > quiet:
                break
            time.sleep(1.0)
        took = time.monotonic() - began
        self.event(f"settled after {took:.1f} s")
        return took

    def receivers(self, expected: dict[str, set[int]]) -> dict:
        """What each receiver has of each sender's expected messages."""
        stats = self.sink_stats(full=True)
        sink_sets = {sid: seqs(zlib.decompress(base64.b64decode(b))) for sid, b in stats["bitmaps"].items()}
        stored = backlog(self.shard, "soak")
        out = {"sink": {}, "tail": {}, "backlog": {}}
        for sid, want in expected.items():
            out["sink"][sid] = compare(want, sink_sets.get(sid, set()))
            out["tail"][sid] = compare(want, seqs(self.tail.bitmaps.get(sid, b"")))
            out["backlog"][sid] = compare(want, stored.get(sid, set()))
        out["sink_duplicates"] = stats["duplicates"]
        out["sink_l10_lines"], out["sink_l10_reported"] = stats["l10_lines"], stats["l10_reported"]
        out["sink_answers"], out["sink_hung"] = stats["answers"], stats["hung"]
        out["sink_repeated_frame_ids"] = stats["repeated_frame_ids"]
        out["tail_duplicates"], out["tail_l11_lines"], out["tail_sessions"] = (
            dict(self.tail.duplicates), self.tail.l11, self.tail.sessions)
        return out

    def close(self) -> None:
        for part in (self.tail, self.http, self.tcp):
            if part is not None:
                part.stopping.set()
        for proc in (self.node.proc, self.sink, self.cfg.proc, self.shard.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def lost(rx: dict, receiver: str) -> int:
    return sum(v["missing"] for v in rx[receiver].values())


def drain_metrics(before: dict, after: dict) -> dict:
    keys = ("logplex_drain_delivered_total", "logplex_drain_dropped_total", "logplex_drain_retried_total",
            "logplex_drain_l10_total", "logplex_backlog_written_total", "logplex_backlog_dropped_total",
            "logplex_backlog_superseded_total", "logplex_messages_received_total", "logplex_messages_routed_total",
            "logplex_partial_frames_dropped_total", "logplex_tail_dropped_total")
    return {k.removeprefix("logplex_"): int(after.get(k, 0) - before.get(k, 0)) for k in keys}


# == the cases ====================================================================================================
def scaled(args, seconds: float) -> float:
    return seconds / 6 if args.quick else seconds


def case_shard(args) -> dict:
    """The shard Redis SIGKILLed for 10 s and started again empty, under load, with a bulk flood
    on a second channel of the same shard so that the writer's queue (200,000 lines) overflows."""
    w = World("shard", args)
    check = Check()
    try:
        status, doc, _ = api(w.node, "PUT", "/v3/channels/bulk", {"tokens": ["app"]})
        bulk_token = doc["tokens"]["app"].encode()
        w.start_load()
        before = metrics(w.node)
        rss_before = w.node.rss()
        pid = w.node.proc.pid
        w.run_for(scaled(args, 20) - 1)
        # The flood: drains.py's generator (MSG "t=<time> s=NNN:<seq>"), from 1 s before the kill to the restart.
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        fmt = bench_drains.frame_format(bulk_token, 0, 200)
        frame_len = len(fmt % (b"%.6f" % time.time(), 0))
        flood_s = scaled(args, args.outage) + 1
        flood = ctx.Process(target=bench_drains.sender, daemon=True, args=(
            w.node.syslog_port, fmt, frame_len, flood_s, args.bulk_rate, ready, go, results, 0))
        flood.start()
        ready.acquire(timeout=30)
        go.set()
        w.event(f"bulk flood on: {args.bulk_rate:g} msg/s for {flood_s:g} s to channel bulk")
        time.sleep(1)
        w.shard.kill()
        killed_at = time.time()
        w.event("shard Redis SIGKILLed")
        time.sleep(0.3)  # a flush answered just before the kill is counted by now; none can succeed after
        at_kill = metrics(w.node)
        probe = {}

        def during():
            if "backlog_status" not in probe:
                probe["backlog_status"], _, probe["backlog_s"] = api(w.node, "GET", "/v3/channels/soak/logs?num=10")
            probe.setdefault("healthy", []).append(api(w.node, "GET", "/healthcheck")[0])

        w.run_for(scaled(args, args.outage), during=during)
        w.shard.start()
        restarted_at = time.time()
        w.event("shard Redis started again, empty")
        _, flood_sent, flood_error = results.get(timeout=60)
        flood.join(10)
        w.event(f"bulk flood off: {flood_sent} sent")
        w.run_for(scaled(args, 20))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        # The writer is done once written + dropped + superseded == routed.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            t = drain_metrics({}, metrics(w.node))
            if t["backlog_written_total"] + t["backlog_dropped_total"] + t["backlog_superseded_total"] \
                    >= t["messages_routed_total"]:
                break
            time.sleep(0.5)
        after = metrics(w.node)
        rx = w.receivers(expected)
        # The backlogs on the new (empty) shard. Per sender, what is missing must be a prefix, as the
        # writer keeps order and sheds the oldest first: the lines the killed Redis had acknowledged
        # (they went with it: logplex_backlog_written_total at the kill) and the lines the writer
        # dropped while the shard was down (its queue holds 200,000 lines per shard:
        # logplex_backlog_dropped_total). Nothing after that prefix may be missing.
        stored = backlog(w.shard, "soak")
        bulk = backlog(w.shard, "bulk").get("000", set())
        sent_at = {"h": w.http.acked_at, "t": w.tcp.written_at}
        missing, holes, last_missing = {}, {}, {}
        for sid, have in [("h", stored.get("h", set())), ("t", stored.get("t", set())), ("bulk", bulk)]:
            want = expected[sid] if sid in expected else set(range(flood_sent))
            first = min(have) if have else max(want, default=-1) + 1
            prefix = [x for x in want if x < first]
            missing[sid] = len(prefix)
            holes[sid] = runs(sorted(x for x in want if x >= first and x not in have))
            if sid in sent_at and prefix:
                last_missing[sid] = round(sent_at[sid][max(prefix)] - restarted_at, 2)
        hole_count = sum(b - a + 1 for r in holes.values() for a, b in r)
        d = drain_metrics(before, after)
        total = drain_metrics({}, after)  # a fresh node: its counters from zero
        written_at_kill = int(at_kill.get("logplex_backlog_written_total", 0))
        written_since_kill = total["backlog_written_total"] - written_at_kill
        dropped = total["backlog_dropped_total"]
        llen = sum(len(v) for v in stored.values()) + len(bulk)  # stored[""]: lines without a number
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("healthcheck 200 during the outage", set(probe.get("healthy", [])) == {200}, [200],
              sorted(set(probe.get("healthy", []))))
        check("drain lost nothing", lost(rx, "sink") == 0, 0, lost(rx, "sink"))
        check("tail lost nothing", lost(rx, "tail") == 0, 0, lost(rx, "tail"))
        check("backlog: missing lines == written to the killed Redis + dropped (metrics)",
              sum(missing.values()) == written_at_kill + dropped, f"{written_at_kill} + {dropped}",
              sum(missing.values()), "exact, over channels soak and bulk")
        check("backlog: nothing missing after the missing prefix", hole_count == 0, 0, hole_count)
        check("backlog: the gap ends within the outage (last missing line sent before the restart)",
              all(v <= 0 for v in last_missing.values()), "<= 0 s after the restart", last_missing)
        check("backlog: LLEN == lines written since the kill", llen == written_since_kill, written_since_kill, llen)
        check("routed == written + dropped + superseded (the node's counters from its start)",
              total["messages_routed_total"] == total["backlog_written_total"] + dropped
              + total["backlog_superseded_total"], total["messages_routed_total"],
              total["backlog_written_total"] + dropped + total["backlog_superseded_total"])
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s + bulk {args.bulk_rate:g} msg/s x {flood_s:g} s",
            "outage_s": round(restarted_at - killed_at, 1), "flood_sent": flood_sent, "flood_error": flood_error,
            "backlog_read_during_outage": [probe.get("backlog_status"), round(probe.get("backlog_s", 0), 2)],
            "backlog_missing_prefix": missing, "backlog_holes": holes,
            "last_missing_line_sent_s_after_restart": last_missing, "backlog_llen": llen,
            "written_at_kill": written_at_kill, "written_since_kill": written_since_kill,
            "summary": {"bulk sent": flood_sent, "missing prefix": missing, "written to the killed Redis": written_at_kill,
                        "dropped (metric)": dropped, "holes after the prefix": hole_count,
                        "last missing line sent s after the restart": last_missing, "LLEN after": llen,
                        "backlog read during outage": [probe.get("backlog_status"), round(probe.get("backlog_s", 0), 2)]},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}; backlog missing {sum(missing.values())} "
                     f"= {written_at_kill} with the killed Redis + {dropped} dropped (metric), 0 else")
    finally:
        w.close()


def case_config(args) -> dict:
    """The config Redis SIGKILLed for 10 s (after a SAVE: a real one persists) and started again."""
    w = World("config", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before, pid = metrics(w.node), w.node.rss(), w.node.proc.pid
        w.run_for(scaled(args, 20))
        resp(w.cfg.port, "SAVE")
        w.cfg.kill()
        killed_at = time.time()
        w.event("config Redis SIGKILLed (after SAVE)")
        at_kill = {"sink": (w.sink_stats() or {}).get("unique", {}), "tail": dict(w.tail.unique)}
        writes, reads = [], []

        def during():
            status, doc, took = api(w.node, "PUT", f"/v3/channels/during-{len(writes)}", {"tokens": ["app"]})
            writes.append((status, round(took, 2), doc.get("error") if isinstance(doc, dict) else doc))
            status, doc, took = api(w.node, "GET", "/v3/channels/soak")
            reads.append((status, round(took, 2)))

        w.run_for(scaled(args, args.outage), during=during)
        at_restart = {"sink": (w.sink_stats() or {}).get("unique", {}), "tail": dict(w.tail.unique)}
        w.cfg.start()
        restarted_at = time.time()
        w.event("config Redis started again (loads its dump)")
        back = None
        while time.time() - restarted_at < 60:
            status, doc, _ = api(w.node, "PUT", "/v3/channels/after", {"tokens": ["late"]})
            if status == 201:
                back = round(time.time() - restarted_at, 1)
                break
            time.sleep(0.25)
        w.event(f"API writes answer again after {back} s")
        # The change feed is back: a token made now routes on this node.
        late_token = doc["tokens"]["late"] if back is not None else None
        routed_new = None
        if late_token:
            began = time.time()
            while time.time() - began < 15 and not routed_new:
                body = b"%d %s\n" % (len(message(late_token, "z", 0, "0")) + 1, message(late_token, "z", 0, "0"))
                req = urllib.request.Request(f"http://127.0.0.1:{w.node.logs_port}/logs", data=body, method="POST",
                                             headers={"Authorization": "Basic " + base64.b64encode(
                                                 b"token:" + late_token.encode()).decode(),
                                                 "Content-Type": "application/logplex-1"})
                try:
                    urllib.request.urlopen(req, timeout=10).read()
                    routed_new = round(time.time() - began, 2)
                except urllib.error.HTTPError:
                    time.sleep(0.25)
        w.run_for(scaled(args, 20))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        moved = {k: {sid: at_restart[k].get(sid, 0) - at_kill[k].get(sid, 0) for sid in ("h", "t")}
                 for k in ("sink", "tail")}
        statuses = Counter(s for s, _, _ in writes)
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("API writes answer 503 during the outage", set(statuses) == {503}, {503: len(writes)}, dict(statuses))
        check("API writes answer within 6 s (--redis-timeout 5 + 1)", max(t for _, t, _ in writes) <= 6.0, "<= 6",
              max(t for _, t, _ in writes))
        check("API reads answer 200 from the cache", {s for s, _ in reads} == {200}, [200], sorted({s for s, _ in reads}))
        check("routing went on: the drain and the tail received during the outage",
              all(v > 0 for k in moved.values() for v in k.values()), "> 0 each", moved)
        check("writes came back by themselves", back is not None, "a 201", back)
        check("a token made after the restart routes", routed_new is not None, "204", routed_new)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing", lost(rx, receiver) == 0, 0, lost(rx, receiver))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s", "outage_s": round(restarted_at - killed_at, 1),
            "writes_during": writes, "reads_during": reads, "writes_back_after_s": back,
            "new_token_routed_after_s": routed_new, "received_during_outage": moved,
            "summary": {"API writes during": dict(statuses), "write answer s max": max(t for _, t, _ in writes),
                        "writes back after s": back, "received by drain/tail during outage": moved},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}")
    finally:
        w.close()


def case_drain(args) -> dict:
    """The drain's receiver answers 500 for 60 s, then hangs for 30 s, then answers one request a second."""
    w = World("drain", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 10))
        phases = []
        for mode, seconds in (("error", args.error_s), ("hang", args.hang_s), ("slow", args.slow_s)):
            w.sink_mode(mode)
            began = time.time()
            w.run_for(scaled(args, seconds))
            phases.append({"mode": mode, "s": round(time.time() - began, 1),
                           "spool_bytes_end": w.spool_bytes(), "state": w.drain_state()})
        w.stop_load()
        w.sink_mode("ok")
        slow_end = time.time() - w.t0
        expected = w.expected()
        w.settle(expected, quiet=60, limit=600)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        spool_max = max(s["spool_bytes"] for s in w.samples)
        bound = args.spool_bytes
        emptied = next((round(s["t"] - slow_end, 1) for s in w.samples if s["t"] > slow_end and s["spool_bytes"] == 0),
                       None)
        rss_max = max(s["rss_mib"] or 0 for s in w.samples)
        check("drain lost nothing within the spool bound", lost(rx, "sink") == 0, 0, lost(rx, "sink"))
        check("spool stayed within --drain-spool-bytes", 0 < spool_max <= bound, f"<= {bound}", spool_max)
        check("no L10, nothing dropped", d["drain_dropped_total"] == 0 and rx["sink_l10_lines"] == 0, 0,
              [d["drain_dropped_total"], rx["sink_l10_lines"]])
        check("tail lost nothing", lost(rx, "tail") == 0, 0, lost(rx, "tail"))
        check("backlog lost nothing", lost(rx, "backlog") == 0, 0, lost(rx, "backlog"))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s for {round(w.load_stopped - w.load_started)} s",
            "phases": phases, "spool_bytes_max": spool_max, "spool_bound": bound,
            "node_rss_max_mib": rss_max, "spool_empty_s_after_slow": emptied,
            "summary": {"sink answers by mode": rx["sink_answers"], "node retried": d["drain_retried_total"],
                        "duplicates at sink": rx["sink_duplicates"], "spool max MiB": round(spool_max / 1048576, 1),
                        "spool empty s after the slow phase": emptied, "node RSS max MiB": rss_max},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}; "
                     f"spool max {spool_max / 1048576:.1f} MiB of {bound / 1048576:.0f}")
    finally:
        w.close()


def restart_case(args, sig: int) -> dict:
    """SIGTERM or SIGKILL the node under load, --cycles times, with the drain failing (500) from 5 s
    before each signal, so that it holds messages in memory and in its spool; the node is started
    again at once with the same --node-name, and the receiver answers again 5 s later."""
    name = "sigterm" if sig == signal.SIGTERM else "sigkill"
    w = World(name, args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        cycles = []
        for _ in range(args.cycles):
            w.run_for(scaled(args, 15))
            w.sink_mode("error")
            w.run_for(scaled(args, 5))
            cycle = {"metrics_until_signal": drain_metrics(before if not cycles else {}, metrics(w.node)),
                     "drain_state_at_signal": w.drain_state(), "spool_bytes_at_signal": w.spool_bytes()}
            cycle["at"] = time.time()
            cycle["exit_code"], took = w.node.signal(sig)
            cycle["stop_s"] = round(took, 2)
            cycle["spool_bytes_after_stop"] = w.spool_bytes()
            w.event(f"node {name}: exit {cycle['exit_code']} after {took:.2f} s; "
                    f"spool {cycle['spool_bytes_at_signal']} -> {cycle['spool_bytes_after_stop']} bytes")
            cycle["restart_s"] = round(w.node.start(), 1)
            w.event(f"node started again in {cycle['restart_s']} s")
            w.run_for(scaled(args, 5))
            w.sink_mode("ok")
            cycles.append(cycle)
        w.run_for(scaled(args, 15))
        w.stop_load()
        expected = w.expected()
        w.settle(expected, quiet=45, tail=False)
        after = metrics(w.node)
        rx = w.receivers(expected)
        # The HTTP sender's acknowledged messages are the contract; TCP has no acknowledgement, so a
        # written t line that never reached the router (the node's socket buffer at a kill) is the
        # protocol's loss, not the drain's. Each missing line is put down to the signal nearest to
        # when it was acknowledged (h) or written (t); its age is how long before that signal
        # (negative: while the node was stopping).
        stored = backlog(w.shard, "soak")
        when = {"h": w.http.acked_at, "t": w.tcp.written_at}
        sink_missing = {sid: sorted(expected[sid] - sink_seqs(w, sid)) for sid in ("h", "t")}
        backlog_missing = {sid: sorted(expected[sid] - stored.get(sid, set())) for sid in ("h", "t")}
        for cycle in cycles:
            for sid in ("h", "t"):
                cycle[f"{sid}_drain_lost"], cycle[f"{sid}_backlog_lost"] = [], []
        for where, missing in (("drain", sink_missing), ("backlog", backlog_missing)):
            for sid, xs in missing.items():
                for x in xs:
                    cycle = min(cycles, key=lambda c: abs(c["at"] - when[sid][x]))
                    cycle[f"{sid}_{where}_lost"].append(round(cycle["at"] - when[sid][x], 3))
        for cycle in cycles:
            for key in ("h_drain_lost", "h_backlog_lost", "t_drain_lost", "t_backlog_lost"):
                ages = cycle.pop(key)
                cycle[key] = len(ages)
                cycle[key + "_s_before_signal"] = [min(ages), max(ages)] if ages else None
            # Lost from the drain's memory: acknowledged h lines, and t lines the router had (those
            # in the backlog, which misses at most a flush interval of them).
            cycle["drain_memory_lost"] = cycle["h_drain_lost"] + max(0, cycle["t_drain_lost"] - cycle["t_backlog_lost"])
            cycle["at"] = round(cycle["at"] - w.t0, 1)
        # One batch: --http-drain-target-bytes of output lines ("<134>1 TS host app h - MSG").
        buffer, target = args.drain_buffer, 100 * 1024
        batch = target // (len(message("app", "h", 0, "%.6f" % time.time())) - 2) + 1
        spooled = any(c["spool_bytes_after_stop"] > 0 for c in cycles)
        resumed = w.node.log().count("drain_spool_resumed")
        result = {
            "load": f"{args.rate:g} msg/s, {args.cycles} x {name}", "cycles": cycles,
            "acked_lost_at_drain": len(sink_missing["h"]), "acked_lost_in_backlog": len(backlog_missing["h"]),
            "drain_lost_runs": {sid: runs(v)[:10] for sid, v in sink_missing.items()},
            "backlog_lost_runs": {sid: runs(v)[:10] for sid, v in backlog_missing.items()},
            "metrics_last_run": drain_metrics({}, after), "spool_resumed_logged": resumed,
            "sender_h_retries": dict(w.http.retries), "sender_t_errors": dict(w.tcp.errors),
            "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
            "summary": {"stop s": [c["stop_s"] for c in cycles], "restart s": [c["restart_s"] for c in cycles],
                        "spool bytes at signal -> after stop": [(c["spool_bytes_at_signal"], c["spool_bytes_after_stop"])
                                                                for c in cycles],
                        "drain lost (h) acked s before signal": [c["h_drain_lost_s_before_signal"] for c in cycles],
                        "sink duplicates": rx["sink_duplicates"], "spool resumes logged": resumed},
        }
        per_cycle = [c["h_drain_lost"] for c in cycles]
        per_cycle_backlog = [c["h_backlog_lost"] for c in cycles]
        if sig == signal.SIGTERM:
            check("clean exits", all(c["exit_code"] in (0, -signal.SIGTERM) for c in cycles), "0 or -15",
                  [c["exit_code"] for c in cycles])
            check("every acknowledged message reached the drain", not sink_missing["h"], 0, per_cycle,
                  "per signal; acked s before it: " + str([c["h_drain_lost_s_before_signal"] for c in cycles]))
            check("every acknowledged message is in the backlog", not backlog_missing["h"], 0, per_cycle_backlog)
            cell = (f"acked lost: drain {per_cycle}, backlog {per_cycle_backlog} (per signal); "
                    f"TCP written, not delivered {[c['t_drain_lost'] for c in cycles]}")
        else:
            flush = 0.05
            memory = [c["drain_memory_lost"] for c in cycles]
            check(f"drain lost per kill <= --drain-buffer + one batch ({buffer} + {batch})",
                  max(memory) <= buffer + batch, f"<= {buffer + batch}", memory,
                  "README: what it held in memory for its drains; h acked + t routed")
            ages = [c["h_backlog_lost_s_before_signal"] for c in cycles if c["h_backlog_lost"]]
            worst = max((a[1] for a in ages), default=0.0)
            check("backlog lost only lines acknowledged within 2 flush intervals of a kill",
                  worst <= 2 * flush + 0.05, f"<= {2 * flush + 0.05:.2f} s", worst)
            cell = (f"drain lost per kill {memory} (h acked {per_cycle}; bound {buffer + batch}), backlog acked lost "
                    f"{per_cycle_backlog} (acked <= {worst} s before the kill); TCP written, not routed "
                    f"{[c['t_backlog_lost'] for c in cycles]}")
        check("spools left behind were delivered by the restarted node", w.spool_bytes() == 0
              and (resumed > 0 or not spooled), "empty; resumed when spooled",
              [w.spool_bytes(), f"spooled at a stop: {spooled}", f"resumed: {resumed}"])
        return finish(w, check, result, lost_cell=cell)
    finally:
        w.close()


def sink_seqs(w: World, sid: str) -> set[int]:
    bitmap = (w.sink_stats(full=True) or {}).get("bitmaps", {}).get(sid)
    return seqs(zlib.decompress(base64.b64decode(bitmap))) if bitmap else set()


def case_partial(args) -> dict:
    """Senders that disconnect mid-frame, cut at three places, while the load goes on."""
    w = World("partial", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 10))
        per_kind = args.partial_senders
        complete = 5
        seq = 0
        kinds = {}
        for kind in ("in the count", "after the count's SP", "in the body"):
            m0 = metrics(w.node).get("logplex_partial_frames_dropped_total", 0)
            for _ in range(per_kind):
                frames = b""
                for _ in range(complete):
                    m = message(w.token, "p", seq, "%.6f" % time.time())
                    frames += b"%d %s" % (len(m), m)
                    seq += 1
                cut = f"<134>1 {TS} host {w.token} p - - PARTIAL frame {PAD}".encode()  # no s= marker
                whole = b"%d %s" % (len(cut), cut)
                tail = {"in the count": whole[:2], "after the count's SP": whole[:whole.index(b" ") + 1],
                        "in the body": whole[:len(whole) // 2]}[kind]
                with socket.create_connection(("127.0.0.1", w.node.syslog_port), timeout=10) as s:
                    s.sendall(frames + tail)
                    s.shutdown(socket.SHUT_WR)
            time.sleep(2)
            counted = int(metrics(w.node).get("logplex_partial_frames_dropped_total", 0) - m0)
            kinds[kind] = {"senders": per_kind, "counted": counted}
            w.event(f"{per_kind} senders left {kind}: {counted} counted")
        w.run_for(scaled(args, 10))
        w.stop_load()
        expected = w.expected()
        expected["p"] = set(range(seq))
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        leaked = {"sink": (w.sink_stats() or {}).get("unmarked", 0), "tail": w.tail.partial_lines,
                  "backlog": len(backlog(w.shard, "soak")[""])}
        d = drain_metrics(before, after)
        framing = int(after.get("logplex_framing_errors_total", 0) - before.get("logplex_framing_errors_total", 0))
        for kind, v in kinds.items():
            check(f"partial frames {kind}: discarded and counted", v["counted"] == v["senders"], v["senders"],
                  v["counted"])
        check("no partial frame reached a receiver", not any(leaked.values()), 0, leaked)
        check("no framing error", framing == 0, 0, framing)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing (load and the senders' whole frames)", lost(rx, receiver) == 0, 0,
                  lost(rx, receiver))
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s + {3 * per_kind} senders leaving mid-frame", "kinds": kinds,
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}; counted "
                     + ", ".join(f"{v['counted']}/{v['senders']}" for v in kinds.values()))
    finally:
        w.close()


def case_departed_node(args) -> dict:
    """Two nodes; the drain fails (500) while node soak spools; soak is SIGKILLed and never started
    again (autoscaling, a lost VM); the receiver recovers. Node peer must adopt soak's spool after
    --spool-adopt-after and deliver it, in order, once; then soak comes back under its own name and
    must deliver none of it again."""
    adopt_after, buffer = 5.0, 100
    # A small --drain-buffer: most of what the failing drain holds is in its spool (what a
    # SIGKILL cannot take away), not in the node's memory (which it can).
    extra = ["--heartbeat", "1", "--spool-adopt-after", str(adopt_after), "--drain-buffer", str(buffer)]
    w = World("departed-node", args, node_args=extra)
    check = Check()
    peer = Node(os.path.join(w.root, "peer"), w.cfg, w.shard, ["--history", str(args.history), *extra], name="peer")
    try:
        peer.start()
        w.start_load()
        before, rss_before = metrics(w.node), w.node.rss()
        w.run_for(scaled(args, 20))
        w.sink_mode("error")
        w.run_for(scaled(args, 15))
        # The senders stop first: an HTTP sender would retry its batch at a dead node for ever.
        w.stop_load()
        spool_at_kill = w.spool_bytes()
        killed_at = time.time()
        w.node.signal(signal.SIGKILL)
        w.event(f"node soak SIGKILLed, not started again; its spool holds {spool_at_kill} bytes")
        w.sink_mode("ok")
        expected = w.expected()
        end = time.monotonic() + 60
        while w.spool_bytes() != 0 and time.monotonic() < end:
            time.sleep(0.2)
        took = [round(time.time() - killed_at, 1)]
        w.event(f"soak's spool {'empty' if w.spool_bytes() == 0 else 'NOT empty'} {took[0]} s after the kill")
        w.settle(expected, quiet=10, limit=120, tail=False)
        emptied = w.spool_bytes()
        adopted = int(metrics(peer).get("logplex_spool_adopted_total", 0))
        adopted_log = [line for line in open(peer.log_path, errors="replace").read().splitlines()
                       if "spool_adopted" in line]
        rx = w.receivers(expected)
        dups_before_return = rx["sink_duplicates"]
        # soak returns under its own name: nothing of its old spool may arrive a second time.
        w.node.start()
        w.event("node soak started again under its own name")
        w.run_for(scaled(args, 10))
        rx = w.receivers(expected)
        sink_missing = {sid: sorted(expected[sid] - sink_seqs(w, sid)) for sid in ("h", "t")}
        stored = backlog(w.shard, "soak")
        routed_lost = len(expected["t"] - stored.get("t", set()))
        # Lost with soak's memory: acked h lines, and t lines the router had (in the backlog).
        memory_lost = len(sink_missing["h"]) + max(0, len(sink_missing["t"]) - routed_lost)
        target = 100 * 1024
        batch = target // (len(message("app", "h", 0, "%.6f" % time.time())) - 2) + 1
        sent = len(expected["h"]) + len(expected["t"])
        delivered = sum(v["got"] for v in rx["sink"].values())
        dups = sum(rx["sink_duplicates"].values())
        check("soak's spool was adopted and emptied", emptied == 0 and adopted > 0, "0 bytes left, adopted > 0",
              [emptied, adopted])
        check("nothing delivered twice, before or after soak returned", not dups, 0,
              [dups_before_return, rx["sink_duplicates"]])
        check(f"lost only what soak held in memory (<= --drain-buffer + one batch, {buffer} + {batch})",
              memory_lost <= buffer + batch, f"<= {buffer + batch}", memory_lost)
        result = {
            "load": f"{args.rate:g} msg/s to soak until its SIGKILL", "spool_bytes_at_kill": spool_at_kill,
            "adopted_messages": adopted, "adopted_log": adopted_log[:5], "spool_empty_s_after_kill": took[0],
            "sent_total": sent, "delivered": delivered, "lost": sent - delivered, "lost_in_soak_memory": memory_lost,
            "duplicates": rx["sink_duplicates"], "receivers": rx, "metrics": drain_metrics(before, metrics(w.node)),
            "rss_mib": [rss_before, w.node.rss()],
            "summary": {"sent": sent, "delivered": delivered, "lost": sent - delivered, "duplicates": dups,
                        "adopted by peer": adopted, "spool bytes at kill": spool_at_kill,
                        "spool empty s after kill": took[0]},
        }
        return finish(w, check, result, lost_cell=f"drain {sent - delivered} (soak's memory at the kill: "
                                                   f"{memory_lost}); duplicates {dups}; adopted {adopted}")
    finally:
        if peer.proc is not None and peer.proc.poll() is None:
            peer.proc.terminate()
            peer.proc.wait(30)
        w.close()


def case_empty_config(args) -> dict:
    """The config Redis SIGKILLed and started again at once WITHOUT its data (no SAVE), under load, the
    drain failing (500) so it spools: the node must refuse the empty config, re-seed it from its cache
    and lose nothing. 6 min (1 min with --quick)."""
    w = World("empty-config", args)
    check = Check()
    try:
        w.start_load()
        before, rss_before, pid = metrics(w.node), w.node.rss(), w.node.proc.pid
        w.sink_mode("error")
        w.run_for(scaled(args, 120))
        spool_before = w.spool_bytes()
        w.cfg.kill()
        w.cfg.start()  # empty: these Redis servers run without persistence
        restarted_at = time.time()
        w.event(f"config Redis SIGKILLed and started again empty (spool {spool_before} bytes)")
        back = None
        while time.time() - restarted_at < 30:
            status, _, _ = api(w.node, "PUT", "/v3/channels/after", {"tokens": ["late"]})
            if status == 201:
                back = round(time.time() - restarted_at, 1)
                break
            time.sleep(0.25)
        w.event(f"API writes answer again after {back} s (the --auth credential works)")
        spool_after = w.spool_bytes()
        health = api(w.node, "GET", "/healthcheck")
        w.run_for(scaled(args, 60))
        w.sink_mode("ok")
        w.run_for(scaled(args, 180))
        w.stop_load()
        expected = w.expected()
        w.settle(expected)
        after = metrics(w.node)
        rx = w.receivers(expected)
        d = drain_metrics(before, after)
        reseeds = int(after.get("logplex_config_reseeds_total", 0))
        check("node stayed up (same process)", w.node.alive() and w.node.proc.pid == pid, True, w.node.alive())
        check("the spool was kept through the empty config", spool_after > 0, "> 0 bytes", spool_after)
        check("writes came back by themselves after one re-seed", back is not None and reseeds == 1,
              "201 and 1 re-seed", [back, reseeds])
        unknown = int(after.get("logplex_messages_unknown_token_total", 0)
                      - before.get("logplex_messages_unknown_token_total", 0))
        check("nothing dropped as an unknown token", unknown == 0, 0, unknown)
        for receiver in ("sink", "tail", "backlog"):
            check(f"{receiver} lost nothing", lost(rx, receiver) == 0, 0, lost(rx, receiver))
        sent = sum(w.http.acked) + sum(w.tcp.written)
        return finish(w, check, {
            "load": f"{args.rate:g} msg/s", "writes_back_after_s": back, "reseeds": reseeds,
            "spool_bytes_before_after": [spool_before, spool_after], "health_after": health[:2],
            "summary": {"sent": sent, "delivered (unique)": sum((w.sink_stats() or {}).get("unique", {}).values()),
                        "lost at drain": lost(rx, "sink"), "duplicates at drain": rx["sink_duplicates"],
                        "writes back after s": back, "re-seeds": reseeds},
            "metrics": d, "receivers": rx, "rss_mib": [rss_before, w.node.rss()],
        }, lost_cell=f"drain {lost(rx, 'sink')}, tail {lost(rx, 'tail')}, backlog {lost(rx, 'backlog')}")
    finally:
        w.close()


CASES = {"shard": case_shard, "config": case_config, "drain": case_drain,
         "sigterm": lambda a: restart_case(a, signal.SIGTERM), "sigkill": lambda a: restart_case(a, signal.SIGKILL),
         "partial": case_partial, "departed-node": case_departed_node, "empty-config": case_empty_config}


def finish(w: World, check: Check, figures: dict, lost_cell: str) -> dict:
    figures.update({
        "case": w.case, "ok": check.ok, "checks": check.items, "lost_cell": lost_cell,
        "events": w.events, "samples": w.samples, "node_command": " ".join(map(shlex.quote, w.node.cmd)),
        "sink_command": " ".join(map(shlex.quote, w.sink_cmd)),
        "sent": {"h_acked": sum(w.http.acked), "h_gave_up": w.http.gave_up, "t_written": sum(w.tcp.written)},
        "node_log_warnings": [line for line in w.node.log().splitlines()
                              if "Traceback" in line or "Unhandled" in line][:10],
    })
    return figures


def print_case(r: dict) -> None:
    rss = r.get("rss_mib") or [None, None]
    print(f"\n== {r['case']}: {'ok' if r['ok'] else 'FAILED'}")
    print(f"   load {r['load']}; sent: h acked {r['sent']['h_acked']}, t written {r['sent']['t_written']}; "
          f"RSS MiB before/after {rss[0]}/{rss[1]}")
    print(f"   lost: {r['lost_cell']}")
    if r.get("summary"):
        print("   " + "; ".join(f"{k} {v}" for k, v in r["summary"].items()))
    for c in r["checks"]:
        print(f"   {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: expected {c['expected']}, got {c['got']}"
              + (f"  ({c['note']})" if c["note"] else ""))


def table(results: list[dict]) -> None:
    print("\n| case | load | sent (h acked / t written) | lost | RSS MiB before/after | result |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rss = r.get("rss_mib") or [None, None]
        print(f"| {r['case']} | {r['load']} | {r['sent']['h_acked']} / {r['sent']['t_written']} | {r['lost_cell']} "
              f"| {rss[0]} / {rss[1]} | {'ok' if r['ok'] else 'FAILED: ' + '; '.join(c['check'] for c in r['checks'] if not c['ok'])} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        p = argparse.ArgumentParser()
        p.add_argument("_sink")
        p.add_argument("--port", type=int, required=True)
        asyncio.run(_serve_sink(p.parse_args().port))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=[*CASES, "all"])
    p.add_argument("--rate", type=float, default=500, help="messages a second to channel soak, half h, half t (500)")
    p.add_argument("--bulk-rate", type=float, default=25000, help="shard: the flood on channel bulk (25000)")
    p.add_argument("--outage", type=float, default=10, help="shard, config: seconds down (10)")
    p.add_argument("--error-s", type=float, default=60, help="drain: seconds of 500 (60)")
    p.add_argument("--hang-s", type=float, default=30, help="drain: seconds of hanging (30)")
    p.add_argument("--slow-s", type=float, default=60, help="drain: seconds of one answer a second (60)")
    p.add_argument("--cycles", type=int, default=3, help="sigterm, sigkill: signals, 25 s apart (3)")
    p.add_argument("--partial-senders", type=int, default=100, help="partial: senders per cut place (100)")
    p.add_argument("--history", type=int, default=1_000_000, help="the node's --history: holds the whole run")
    p.add_argument("--quick", action="store_true", help="every duration / 6: a trial run, not the figures")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (node, Redis and sink logs)")
    args = p.parse_args()
    args.spool_bytes, args.drain_buffer = 32 * 1024 * 1024, 1024  # the node's defaults, which the soak keeps
    atexit.register(ib.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(RESULTS, exist_ok=True)
    revision = bench_drains.revision()
    command = " ".join(map(shlex.quote, [sys.executable, *sys.argv]))
    results = []
    try:
        for name in (CASES if args.case == "all" else [args.case]):
            print(f"\n--- {name}", flush=True)
            began = time.time()
            r = CASES[name](args)
            r.update({"revision": revision, "command": command, "quick": args.quick,
                      "wall_s": round(time.time() - began, 1)})
            with open(os.path.join(RESULTS, f"soak-{name}{'-quick' if args.quick else ''}.json"), "w") as f:
                json.dump(r, f, indent=1, default=str)
            print_case(r)
            results.append(r)
    except KeyboardInterrupt:
        print("soak: interrupted; stopping what it started", file=sys.stderr)
        sys.exit(130)
    finally:
        if args.keep:
            print("kept: " + " ".join(ib.tmp_dirs), file=sys.stderr)
            ib.tmp_dirs.clear()
        ib.cleanup()
    table(results)
    print(f"\nrevision: {revision}\ncommand: {command}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
