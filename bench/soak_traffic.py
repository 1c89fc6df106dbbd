"""The traffic of bench/soak.py and its accounting: the counting HTTP sink (a process of its own,
`soak.py _sink --port P`), the senders and the tail reader (threads), and the comparison of what
each receiver got by sequence number.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from array import array
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ingest as ib  # noqa: E402  (bench/ingest.py: rss_mib, metrics; it puts the repository on sys.path)
from tests.harness.procs import NodeProcess  # noqa: E402


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


# == the node's API ==========================================================================================
def api(node: NodeProcess, method: str, path: str, body=None, timeout: float = 10.0) -> tuple[int, object, float]:
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


def metrics(node: NodeProcess) -> dict[str, float]:
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

    def __init__(self, node: NodeProcess, token: str, rate: float) -> None:
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

    def __init__(self, node: NodeProcess, token: str, rate: float) -> None:
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

    def __init__(self, node: NodeProcess, channel: str) -> None:
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
