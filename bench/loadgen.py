"""Load generators and a cheap counting sink for bench/peers.py.

    python bench/loadgen.py sink syslog --port P [--stats PATH]
    python bench/loadgen.py sink http   --port P [--stats PATH]

Generators (called in forked processes by bench/peers.py, one per connection):

- tcp_sender: octet-counted RFC 5424 frames over TCP, in writes of up to
  64 KiB, unlimited or paced to a rate.
- shuttle_sender: POST /logs as log-shuttle sends it: batches of 500
  `LEN <190>1 TIME shuttle APPNAME shuttle - - LINE\\n` frames, chunked
  transfer encoding, Logplex-Msg-Count, Basic auth `token:<token>`, one request
  in flight per connection (a log-shuttle "outlet"), keep-alive.

Every frame's MSG starts with `t=<time.time() at the write> s=<conn>:<seq>`
(the marker of bench/drains.py and bench/sinks.py). Frames are not formatted
one by one: a template of 1000 frames holds fixed-width placeholders for the
time and the upper digits of the sequence number, and each write fills them
with bytes.replace, so the generator costs little CPU per message and
leaves the cores to what is measured. A connection that feeds many channels
(bench/peers.py's --spread) cycles through several templates whose frames
carry different tokens of one length (`spread_templates`): every frame keeps
the same width, and the sequence numbers stay per connection.

The sink (`sink`, C source in bench/countsink.c, compiled with cc on first use)
counts what bench/sinks.py counts, in the same JSON: unique sequence numbers
per connection, duplicates, holes, a send -> receipt latency histogram with 3
significant digits; and ` lg=` markers (the lines bench/peers.py gives
syslog-ng's loggen, which carry no sequence number). It answers HTTP
`Expect: 100-continue` (libcurl, in syslog-ng's http()) and takes chunked
bodies (log-shuttle). A TCP stream is counted by its frames (octet-counted,
or LF-terminated); an HTTP body by Logplex-Msg-Count, else by its lines when
it starts with `<`, else by its markers. It costs about 0.1 us of CPU per message at high rates (bench/sinks.py
about 1 us), because on 2 cores whatever the sink burns is taken from the relay
it measures.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

WAIT = 0.25  # log-shuttle's -wait: it posts a short batch after this long
PER_TEMPLATE = 1000  # frames per template: the low 3 digits of the sequence number
TS = b"\x01" * 17  # placeholder for "%.6f" % time.time() (10 + 1 + 6 digits until 2286)
HI = b"\x02" * 7  # placeholder for sequence // 1000, 7 digits
HEADER_5424 = b"<13>1 2026-11-24T10:00:00.000000+00:00 host %s web.1 - - "
HEADER_SHUTTLE = b"<190>1 2026-11-24T10:00:00.000000+00:00 shuttle %s shuttle - - "


# -- frames --------------------------------------------------------------------------------
def _frame(header: bytes, conn: int, low: int, size: int, tail: bytes) -> bytes:
    """One frame of total length `size` (prefix included) with the placeholders in its marker."""
    body = header + b"t=" + TS + b" s=%03d:" % conn + HI + b"%03d " % low
    fixed = len(body) + len(tail)
    length = max(fixed, size - len(str(size)) - 1)
    while len(str(length)) + 1 + length > size and length > fixed:
        length -= 1
    return b"%d " % length + body + b"x" * (length - fixed) + tail


def template(token: bytes, conn: int, size: int, shuttle: bool = False) -> tuple[bytes, int]:
    """PER_TEMPLATE frames, sequence numbers HI*1000 + 0..999; returns (template, frame length)."""
    header = (HEADER_SHUTTLE if shuttle else HEADER_5424) % token
    tail = b"\n" if shuttle else b""  # log-shuttle counts the line's LF
    frames = [_frame(header, conn, low, size, tail) for low in range(PER_TEMPLATE)]
    assert len(set(map(len, frames))) == 1
    return b"".join(frames), len(frames[0])


class Frames:
    """Consecutive frames of one connection, filled in at the moment they are taken.

    `tmpl` is one template or a list of them (a connection whose frames carry
    many tokens): sequence numbers HI*1000 + low come from template HI %
    len(list). `counted`, one list per template, says which frames to count
    as they are taken (those of drained channels): `self.counted` is then how
    many of the frames taken so far were such frames."""

    def __init__(self, tmpl: bytes | list[bytes], frame_len: int, counted: list[list[bool]] | None = None) -> None:
        self.tmpls = tmpl if isinstance(tmpl, list) else [tmpl]
        self.frame_len = frame_len
        self.seq = 0
        self._hi, self._block = -1, b""
        # Prefix sums: how many counted frames a template holds before frame `low`.
        self._prefix = None if counted is None else [
            [0, *itertools.accumulate(map(int, flags))] for flags in counted]
        self.counted = 0

    def take(self, n: int) -> tuple[bytes, int]:
        """Up to n frames (never across a template boundary) stamped with time.time(); (bytes, count)."""
        hi, low = divmod(self.seq, PER_TEMPLATE)
        if hi != self._hi:
            self._hi, self._block = hi, self.tmpls[hi % len(self.tmpls)].replace(HI, b"%07d" % hi)
        n = min(n, PER_TEMPLATE - low)
        fl = self.frame_len
        out = self._block[low * fl:(low + n) * fl].replace(TS, b"%.6f" % time.time())
        if self._prefix is not None:
            prefix = self._prefix[hi % len(self.tmpls)]
            self.counted += prefix[low + n] - prefix[low]
        self.seq += n
        return out, n


def spread_templates(tokens: list[bytes], channels: list[int], conn: int, size: int) -> tuple[list[bytes], int]:
    """Templates for one connection whose frame j goes to tokens[channels[j]]: len(channels) must be a
    multiple of PER_TEMPLATE. Every token must have the same length, so that every frame has the
    same width and Frames can slice them by offset; returns (templates, frame length)."""
    if len({len(t) for t in tokens}) != 1:
        raise ValueError("bench: every token must have the same length for fixed-width frames")
    if len(channels) % PER_TEMPLATE:
        raise ValueError(f"bench: {len(channels)} frames is not a whole number of {PER_TEMPLATE}-frame templates")
    tmpls, widths = [], set()
    for k in range(0, len(channels), PER_TEMPLATE):
        frames = [_frame(HEADER_5424 % tokens[channels[k + low]], conn, low, size, b"")
                  for low in range(PER_TEMPLATE)]
        widths.update(map(len, frames))
        tmpls.append(b"".join(frames))
    assert len(widths) == 1
    return tmpls, widths.pop()


# -- generators (run in forked processes) --------------------------------------------------
def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# A paced sender writes what fell due in each PACE_STEP: a write per frame or two
# (what the loop managed when it wrote as soon as one was due) cost the generator
# 85 % of a core per connection at 240,000 frames/s, against 78 % unpaced at
# 1.5 million, and took that core from whatever it fed on this 2-core host.
PACE_STEP = 0.001


def _paced(rate: float, start: float, sent: int, most: int) -> int:
    """How many messages are due now (at most `most`); sleeps until a step's worth is, if fewer are."""
    if not rate:
        return most
    due = int(rate * (time.monotonic() - start)) - sent
    step = min(most, max(1, int(rate * PACE_STEP)))
    if due < step:
        time.sleep((step - due) / rate)
        return 0
    return min(due, most)


def tcp_sender(sock: socket.socket, tmpl: bytes | list[bytes], frame_len: int, seconds: float, rate: float,
               go, results, index: int, counted: list[list[bool]] | None = None) -> None:
    """Octet-counted frames on an open connection for `seconds` at `rate` msgs/s (0: no limit).

    Puts (index, sent, error, cpu) on results, and with `counted` (see Frames) a fifth figure:
    how many of the frames sent were counted ones."""
    frames, per_write, sent, error = Frames(tmpl, frame_len, counted), max(1, 65536 // frame_len), 0, None
    try:
        go.wait()
        start = time.monotonic()
        with sock:
            while time.monotonic() < start + seconds:
                n = _paced(rate, start, sent, per_write)
                if n:
                    data, n = frames.take(n)
                    sock.sendall(data)
                    sent += n
    except Exception as e:  # reported to the parent
        error = repr(e)
    results.put((index, sent, error, _cpu()) + ((frames.counted,) if counted is not None else ()))


def shuttle_request(token: str, body_frames: bytes, count: int, chunked: bool = True) -> bytes:
    """One POST /logs as log-shuttle sends it (Go's net/http: the body streamed, so chunked)."""
    auth = base64.b64encode(b"token:" + token.encode()).decode()
    head = ("POST /logs HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: log-shuttle/0.0-bench (go1.21; linux)\r\n"
            f"Content-Type: application/logplex-1\r\nLogplex-Msg-Count: {count}\r\n"
            f"X-Request-Id: {uuid.uuid4()}\r\nAuthorization: Basic {auth}\r\n")
    if chunked:
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n" % len(body_frames) \
            + body_frames + b"\r\n0\r\n\r\n"
    return (head + f"Content-Length: {len(body_frames)}\r\n\r\n").encode() + body_frames


def _read_response(sock: socket.socket, buf: bytearray) -> int:
    """The status of one HTTP/1.1 response with a Content-Length (or none) body; keeps what follows."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before an answer")
        buf += chunk
    head = bytes(buf[:end]).lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    need = end + 4 + (int(m.group(1)) if m else 0)
    while len(buf) < need:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside an answer")
        buf += chunk
    del buf[:need]
    return int(head[9:12])


def shuttle_sender(sock: socket.socket, token: str, tmpl: bytes, frame_len: int, seconds: float,
                   rate: float, go, results, index: int, batch: int = 500, chunked: bool = True) -> None:
    """log-shuttle batches on an open keep-alive connection, one request in flight, for `seconds`."""
    frames, sent, error, failed, buf = Frames(tmpl, frame_len), 0, None, 0, bytearray()
    try:
        go.wait()
        start = time.monotonic()
        posted = start
        with sock:
            while (now := time.monotonic()) < start + seconds:
                if rate:  # log-shuttle posts a full batch, or what it has every WAIT s
                    due = int(rate * (now - start)) - sent - failed
                    if due < batch and (due <= 0 or now - posted < WAIT):
                        time.sleep(0.001)
                        continue
                    n = min(due, batch)
                else:
                    n = batch
                body, n = frames.take(n)
                if n < batch and (not rate or due > n):  # a template boundary: top the batch up
                    more, m = frames.take(min(batch, due if rate else batch) - n)
                    body, n = body + more, n + m
                posted = now
                sock.sendall(shuttle_request(token, body, n, chunked))
                status = _read_response(sock, buf)
                if 200 <= status < 300:
                    sent += n
                else:
                    failed += n  # log-shuttle does not retry
    except Exception as e:
        error = repr(e)
    if failed and not error:
        error = f"{failed} messages answered with a non-2xx status"
    results.put((index, sent, error, _cpu()))


# -- the counting sink ----------------------------------------------------------------------
# A Python sink costs 0.6-1 us of CPU per message (bench/sinks.py: about 1 us), a quarter to
# half a core at the C relays' rates on a 2-core host, taken from the relay it measures.
# This one, in C, costs about 0.1 us. sink_binary() compiles it once per source version.
COUNTSINK_C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "countsink.c")


def sink_binary() -> str:
    """The compiled counting sink (cc -O2), cached in the temp directory by a hash of its source."""
    with open(COUNTSINK_C, "rb") as f:
        source = f.read()
    digest = hashlib.sha256(source).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), f"logplex-bench-countsink-{digest}")
    if os.access(path, os.X_OK):
        return path
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench: the counting sink needs a C compiler: apt-get install -y gcc")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([cc, "-O2", "-o", os.path.join(d, "countsink"), COUNTSINK_C, "-lm"], check=True)
        os.replace(os.path.join(d, "countsink"), path)  # atomic: concurrent runs share it
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sink", help="run the counting sink (compiled on first use)")
    s.add_argument("kind", choices=("syslog", "http"))
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--stats", metavar="PATH", help="JSON counters, rewritten every --interval s and at exit")
    s.add_argument("--interval", type=float, default=0.25)
    sub.add_parser("build-sink", help="compile the sink and print its path")
    args = p.parse_args(argv)
    binary = sink_binary()
    if args.command == "build-sink":
        print(binary)
        return
    argv = [binary, args.kind, "--port", str(args.port), "--interval", str(args.interval)]
    os.execv(binary, argv + (["--stats", args.stats] if args.stats else []))


if __name__ == "__main__":
    main()
