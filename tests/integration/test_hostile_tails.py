"""Issue 13: what a hostile sender or a tail that never reads can do to other readers and the node.

- Log injection: control characters in a message's header make it malformed (dropped and
  counted); inside MSG they are escaped in text tails, so one message is one line and a
  sender cannot forge lines of `heroku[router]` or logplex's own L11 notice.
- Tails that never read: every tail's buffer is bounded in bytes as well as in lines, and
  the HTTP response's transport holds no more than a write or two, so a few readers that
  stop reading cannot make the node hold what senders write in large lines.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time

import pytest

from tests.harness.client import (
    TS,
    basic,
    logplex1,
    octet,
    send_syslog,
    start_node,
    stop_node,
    syslog_message,
    wait_for,
)

MIB = 1024 * 1024
KIB = 1024
FAKE_ROUTER = "2024-05-06T07:08:09.123456+00:00 heroku[router]: at=info method=GET path=/admin status=200"
FAKE_L11 = ("2024-05-06T07:08:10.000000+00:00 logplex[1]: Error L11 (Tail buffer overflow) -> "
            "This tail session dropped 99 messages since 2024-05-06T07:08:09.000000+00:00.")


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis):
    """A node of this module's own, with the default tail buffers (its RSS is measured)
    and drains to loopback allowed."""
    n = start_node(tmp_path_factory, redis, "--allow-private-drains")
    yield n
    stop_node(n)


class TailReader:
    """A live session tail read line by line, as `logplex tail` and curl read it."""

    def __init__(self, node, url: str) -> None:
        path = "/sessions/" + url.rsplit("/sessions/", 1)[1]
        self.conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status

    def lines_until(self, marker: bytes) -> list[bytes]:
        """Every line up to and with the first that contains marker."""
        lines = []
        while True:
            line = self.response.readline()
            assert line, f"the tail ended before {marker!r}; it had {lines!r}"
            lines.append(line)
            if marker in line:
                return lines

    def close(self) -> None:
        self.conn.close()


def tail_of(node, channel_id: str) -> TailReader:
    before = node.metric("logplex_active_tails")
    reader = TailReader(node, node.session(channel_id, tail=True, num=0))
    # Live once the node counts it: messages sent after this reach it.
    wait_for(lambda: node.metric("logplex_active_tails"), lambda n: n > before)
    return reader


def test_a_forged_line_break_stays_inside_its_message(node):
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    malformed_before = node.metric("logplex_messages_malformed_total")
    tail = tail_of(node, channel_id)
    try:
        send_syslog(node.syslog_port, b"".join(octet(m) for m in [
            # LF (and a NUL, a CR, an ESC and a backslash) inside MSG: escaped, on one line.
            syslog_message(token, "web.1", f"real\n{FAKE_ROUTER}\n{FAKE_L11}\x00\r\x1b[2J\\"),
            # The same forgery through header fields: malformed, never shown.
            syslog_message(token, f"web.1\n{FAKE_ROUTER}", "via PROCID"),
            syslog_message(token, "web.1", "via TIMESTAMP", timestamp=f"{TS}\n{FAKE_ROUTER}"),
            syslog_message(token, "web.1", "NUL in MSGID", msgid="ID\x00"),
            syslog_message(token, "web.1", "ESC in HOSTNAME", host="h\x1b[2J"),
            syslog_message(token, "web.1", "Latin-1 in HOSTNAME", host="h\xe9"),
            syslog_message(token, "web.1", "syslog end"),
        ]))
        # POST /logs (logplex-1, LF counted in each frame as log-shuttle sends it).
        body = logplex1([
            syslog_message(token, "web.2", f"posted\n{FAKE_L11}"),
            syslog_message(token, f"web.2\n{FAKE_L11}", "via PROCID"),
            syslog_message(token, "web.2", "http end"),
        ])
        answer = node.post_logs(body, auth=basic("token", token))
        assert answer.status == 204, answer
        lines = tail.lines_until(b"syslog end") + tail.lines_until(b"http end")
    finally:
        tail.close()
    forged = (f"real\\n{FAKE_ROUTER}\\n{FAKE_L11}\\x00\\r\\x1b[2J\\\\").encode()
    assert lines == [
        f"{TS} app[web.1]: ".encode() + forged + b"\n",
        f"{TS} app[web.1]: syslog end\n".encode(),
        f"{TS} app[web.2]: posted\\n{FAKE_L11}\n".encode(),
        f"{TS} app[web.2]: http end\n".encode(),
    ]
    assert node.metric("logplex_messages_malformed_total") - malformed_before == 6
    # A session that reads the backlog sees the same lines, and nothing of the malformed ones.
    backlog = node.session_body(channel_id, num=100)
    assert backlog == b"".join(lines)


class SyslogReceiver:
    """A syslog drain endpoint: takes one connection at a time and keeps every octet-counted frame."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.data = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                while chunk := conn.recv(65536):
                    with self.lock:
                        self.data += chunk

    def frames(self) -> list[bytes]:
        with self.lock:
            data = self.data
        frames, pos = [], 0
        while (space := data.find(b" ", pos)) > 0:
            end = space + 1 + int(data[pos:space])
            if end > len(data):
                break
            frames.append(data[space + 1:end])
            pos = end
        return frames

    def close(self) -> None:
        self.server.close()


def test_a_drain_gets_msg_as_sent_and_never_a_broken_header(node):
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    receiver = SyslogReceiver()
    try:
        answer = node.api("POST", f"/v3/channels/{channel_id}/drains",
                          {"url": f"syslog://127.0.0.1:{receiver.port}/"})
        assert answer.status == 201, answer
        drain_token = answer.json()["token"]
        msg = f"real\n{FAKE_ROUTER}\x00\r\x1b[2J\\"
        send_syslog(node.syslog_port, b"".join(octet(m) for m in [
            syslog_message(token, "web.1", msg),
            syslog_message(token, f"web.1\n{FAKE_ROUTER}", "via PROCID"),
            syslog_message(token, "web.1", "via TIMESTAMP", timestamp=f"{TS}\x00"),
            syslog_message(token, "web.1", "drain end"),
        ]))
        frames = wait_for(receiver.frames, lambda f: any(b"drain end" in x for x in f), timeout=10)
    finally:
        receiver.close()
    # Octet-counted, so MSG travels as the sender wrote it; the broken headers never left.
    assert frames == [
        f"<134>1 {TS} {drain_token} app web.1 - - {msg}\n".encode(),
        f"<134>1 {TS} {drain_token} app web.1 - - drain end\n".encode(),
    ]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KIB
    raise AssertionError(f"no VmRSS for {pid}")


class RssSampler:
    """The highest VmRSS of a process, sampled every 50 ms in a thread until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.highest = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.highest = max(self.highest, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.highest = max(self.highest, rss_bytes(self.pid))
        return self.highest


N_TAILS = 8
LINE_BYTES = 60 * KIB
FLOOD_LINES = 400  # 24 MiB: what each tail would hold if only its line count bounded it
BACKLOG_LINES = 4  # each tail starts with 240 KiB of backlog: its transport is full before it is live
TAIL_BUFFER_BYTES = 1 * MIB  # --tail-buffer-bytes' default
TRANSPORT = 64 * KIB  # Twisted pauses a producer once this much waits in its transport
# The highest RSS of the same flood with no tail is the baseline (the flood's batches in
# flight to Redis take 30 MiB or so, and the allocator may or may not have given them back
# in between); the slack is how far two such floods' highs differ: measured 0-4 MiB.
SLACK_MIB = 16


def flood(node, token: str, text: str) -> float:
    """FLOOD_LINES lines of LINE_BYTES over one syslog connection; seconds until all are routed."""
    routed_before = node.metric("logplex_messages_routed_total")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.syslog_port)) as sender:
        for i in range(FLOOD_LINES):
            sender.sendall(octet(syslog_message(token, "web.1", f"flood {i} {text}")))
        routed = wait_for(lambda: node.metric("logplex_messages_routed_total") - routed_before,
                          lambda n: n >= FLOOD_LINES, timeout=30)
    assert routed == FLOOD_LINES
    seconds = time.monotonic() - started
    time.sleep(0.5)  # what the node still does with the flood once it is routed
    return seconds


def test_tails_that_never_read_hold_a_bounded_number_of_bytes(node):
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    text = "x" * (LINE_BYTES - 100)
    # The same flood with no tail first: what the ingest path itself takes is the baseline.
    sampler = RssSampler(node.proc.pid)
    flood(node, token, text)
    baseline = sampler.stop()
    tails_before = node.metric("logplex_active_tails")
    dropped_before = node.metric("logplex_tail_dropped_total")
    socks = []
    try:
        for _ in range(N_TAILS):
            path = "/sessions/" + node.session(channel_id, tail=True, num=BACKLOG_LINES).rsplit("/sessions/", 1)[1]
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", node.api_port))
            s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
            socks.append(s)
        assert wait_for(lambda: node.metric("logplex_active_tails") - tails_before,
                        lambda n: n == N_TAILS) == N_TAILS
        sampler = RssSampler(node.proc.pid)
        flood_seconds = flood(node, token, text)
        highest = sampler.stop()
        dropped = node.metric("logplex_tail_dropped_total") - dropped_before
        # One reader reads at last: what was kept for it, then the L11 line that counts the rest.
        told = read_until(socks[0], b"Error L11")
    finally:
        for s in socks:
            s.close()
    growth = highest - baseline
    backlog_write = BACKLOG_LINES * LINE_BYTES
    # Per tail: its buffer (twice: churning lines leave freed fragments between live
    # ones), its transport's buffer, one write past it, and the backlog write.
    per_tail = 2 * TAIL_BUFFER_BYTES + TRANSPORT + LINE_BYTES + backlog_write
    bound = SLACK_MIB * MIB + N_TAILS * per_tail
    print(f"\n[hostile tails] {N_TAILS} tails that never read, {FLOOD_LINES} lines of {LINE_BYTES // KIB} KiB "
          f"in {flood_seconds:.1f} s: node RSS highest {baseline / MIB:.0f} MiB with no tail, {highest / MIB:.0f} MiB "
          f"with them (+{growth / MIB:.0f} MiB, bound +{bound / MIB:.0f} MiB); {dropped:.0f} lines dropped (L11)")
    assert growth <= bound, f"node RSS grew {growth / MIB:.0f} MiB, over the bound of {bound / MIB:.0f} MiB"
    # Each tail kept its byte bound (17 of these lines) and what the kernel's socket
    # buffers took (a few MiB on loopback); the rest was dropped, counted and told.
    assert dropped >= N_TAILS * FLOOD_LINES / 2, dropped
    assert b"Error L11 (Tail buffer overflow)" in told


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    """What sock receives until marker (or until it closes or timeout passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while marker not in data[-len(marker) - 262144:]:
            chunk = sock.recv(262144)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


N_READERS = 5


def test_readers_of_a_backlog_of_huge_lines_get_a_bounded_answer(node):
    """A session URL needs no credential and may be opened again and again: each answer's
    backlog is the newest lines that fit in --tail-buffer-bytes, read from Redis a page at
    a time, so readers that never read cannot make the node hold history x max-frame each."""
    channel_id, tokens = node.channel("app")
    text = "h" * (LINE_BYTES - 100)
    flood(node, tokens["app"], text)  # 400 lines of 60 KiB: 24 MiB of backlog
    path = "/sessions/" + node.session(channel_id, tail=False, num=1500).rsplit("/sessions/", 1)[1]
    sampler = RssSampler(node.proc.pid)
    before = sampler.highest
    socks = []
    try:
        for _ in range(N_READERS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", node.api_port))
            s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
            socks.append(s)
        # Each answer has begun (its backlog read and written as far as the socket takes it).
        for s in socks:
            assert select.select([s], [], [], 10)[0], "a reader got no answer within 10 s"
        highest = sampler.stop()
        answer = read_until(socks[0], b"0\r\n\r\n", timeout=20)
    finally:
        for s in socks:
            s.close()
    lines = answer.count(b" app[web.1]: flood ")
    assert answer.endswith(b"0\r\n\r\n"), answer[-200:]
    # The newest lines, as many as fit in 1 MiB: 17 of 60 KiB.
    assert lines == TAIL_BUFFER_BYTES // LINE_BYTES, lines
    assert b"flood 399 " in answer and b"flood 382 " not in answer
    growth = highest - before
    bound = SLACK_MIB * MIB + N_READERS * 2 * (TAIL_BUFFER_BYTES + 100 * LINE_BYTES)
    print(f"\n[hostile tails] {N_READERS} readers of a session of 400 lines of 60 KiB: +{growth / MIB:.0f} MiB "
          f"(bound +{bound / MIB:.0f} MiB), {lines} lines in an answer")
    assert growth <= bound, f"node RSS grew {growth / MIB:.0f} MiB, over the bound of {bound / MIB:.0f} MiB"
