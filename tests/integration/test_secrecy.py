"""Secrecy (issue #8): tokens and secrets never show where they must not.

One node (drains to loopback allowed, five failed logins a minute) is put
through what a deployment sees: a channel with two tokens and another with
one, three API credentials, an HTTP drain (with a password in its URL) and a
syslog drain; logs over TCP (RFC 5424 and RFC 3164, the token as APP-NAME
or TAG) and over HTTP (token Basic auth, Bearer, an any_channel
credential); a live tail, the tail page's event stream, a session's backlog
and GET /v3/channels/<ch>/logs; then failing requests of every kind (unknown
and misplaced tokens, wrong passwords until the throttle answers 429,
malformed bodies). Then every surface is searched for every secret:

- application tokens (``t.…``): nowhere but the API answers that hand them out;
- drain tokens (``d.…``): only in the Logplex-Drain-Token header of the HTTP
  drain's requests, and as HOSTNAME of the syslog drain's frames;
- credential secrets, wrong passwords and the drain URL's password: nowhere
  (the URL's password only in the HTTP drain's Authorization header);
- the config Redis holds credentials as scrypt hashes at full cost only.

The surfaces: the node's log (node.log and its stdout/stderr), the tail and
the event stream, the session backlog and the channel logs, the drains'
bodies and frames, every error body, /metrics (labels and values), and a
dump of every key of the config Redis.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import socketserver
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redis_py

from logplex import secrets
from tests.harness.client import (
    basic, http_request, logplex1, octet, start_node, stop_node, syslog_message, unique, wait_for,
)

# Failed logins a minute per address and listener; two (one per listener) come
# before the run of wrong passwords, of which the API listener counts six.
LOGIN_FAILURES = 7
WRONG_PASSWORDS = 9


# -- receivers ---------------------------------------------------------------------------------------
class _DrainHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class HttpDrainSink:
    """An HTTP endpoint on 127.0.0.1 that keeps every request's headers and body, answering 204."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _DrainHandler)
        self.server.lock = threading.Lock()
        self.server.received = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def received(self) -> list[tuple[dict, bytes]]:
        with self.server.lock:
            return list(self.server.received)

    def messages(self) -> list[bytes]:
        """Every message of every body, as framed (its own octet parser, not logplex's)."""
        return [m for _, body in self.received for m in octet_frames(body)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _SyslogHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            with self.server.lock:
                self.server.data.append(data)


class SyslogDrainSink:
    """A TCP endpoint on 127.0.0.1 that keeps every byte it is sent."""

    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SyslogHandler)
        self.server.daemon_threads = True
        self.server.lock = threading.Lock()
        self.server.data = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def raw(self) -> bytes:
        with self.server.lock:
            return b"".join(self.server.data)

    def frames(self) -> list[bytes]:
        return octet_frames(self.raw(), complete_only=True)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def octet_frames(data: bytes, complete_only: bool = False) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        end = sp + 1 + int(data[pos:sp])
        if end > len(data):
            assert complete_only, f"a frame overruns the body: {data!r}"
            break
        frames.append(data[sp + 1:end])
        pos = end
    return frames


class StreamReader:
    """A GET left open (a live tail, an event stream): everything it sends, read in a thread."""

    def __init__(self, port: int, path: str, auth: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        headers = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if auth:
            headers += f"Authorization: {auth}\r\n"
        self.sock.sendall((headers + "\r\n").encode())
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.chunks.append(data)
        except OSError:
            return

    def text(self) -> bytes:
        with self.lock:
            return b"".join(self.chunks)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


# -- the scenario ---------------------------------------------------------------------------------------
class Seen:
    """Everything the scenario made (the secrets) and everything it read back (the surfaces)."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}          # name -> t.…, of every channel
        self.drain_tokens: dict[str, str] = {}    # "http" / "syslog" -> d.…
        self.secrets: dict[str, str] = {}         # what -> credential secret, wrong password, URL password
        self.errors: list[tuple[str, int, bytes]] = []  # (what, status, body) of every failing request
        self.tail = b""
        self.stream = b""
        self.session = b""
        self.channel_logs = b""
        self.metrics = b""
        self.log = ""
        self.redis_dump = b""
        self.creds: dict[bytes, bytes] = {}
        self.http_drain: list[tuple[dict, bytes]] = []
        self.syslog_drain = b""
        self.expected = 0


def _fail(seen: Seen, what: str, answer, *statuses: int) -> None:
    assert answer.status in statuses, (what, answer)
    seen.errors.append((what, answer.status, answer.body))


@pytest.fixture(scope="module")
def seen(tmp_path_factory, redis) -> Seen:
    http_sink, syslog_sink = HttpDrainSink(), SyslogDrainSink()
    node = start_node(tmp_path_factory, redis, "--allow-private-drains", "--login-failures", str(LOGIN_FAILURES),
                      "--drain-backoff-max", "1", "--http-drain-linger", "0.1")
    readers: list[StreamReader] = []
    s = Seen()
    try:
        _run(node, s, http_sink, syslog_sink, readers)
    finally:
        for reader in readers:
            reader.close()
        stopped = False
        try:
            stop_node(node)
            stopped = True
        finally:
            s.log = node.proc.log_text()
            http_sink.stop()
            syslog_sink.stop()
        assert stopped
    s.redis_dump, s.creds = _dump(redis.port)
    return s


def _run(node, s: Seen, http_sink, syslog_sink, readers) -> None:
    channel, s.tokens = node.channel("web", "worker")
    other, other_tokens = node.channel("other")
    s.tokens.update({f"other/{k}": v for k, v in other_tokens.items()})

    for what, body in (("shuttle", {"perms": ["any_channel"], "note": "log shuttle"}),
                       ("reader", {"perms": ["read_channel"], "channels": [channel]}),
                       ("operator", {"perms": ["full_api"], "note": "operator"})):
        made = node.api("POST", "/v3/credentials", body)
        assert made.status == 201, made
        s.secrets[what] = made.json()["secret"]
        s.secrets[what + "-id"] = made.json()["id"]
    shuttle = (s.secrets["shuttle-id"], s.secrets["shuttle"])
    reader = (s.secrets["reader-id"], s.secrets["reader"])
    operator = (s.secrets["operator-id"], s.secrets["operator"])
    s.secrets["url-password"] = "urlpw-" + uuid.uuid4().hex

    drain = node.api("POST", f"/v3/channels/{channel}/drains",
                     {"url": f"http://sink:{s.secrets['url-password']}@127.0.0.1:{http_sink.port}/drain"})
    assert drain.status == 201, drain
    s.drain_tokens["http"] = drain.json()["token"]
    drain = node.api("POST", f"/v3/channels/{channel}/drains", {"url": f"syslog://127.0.0.1:{syslog_sink.port}"})
    assert drain.status == 201, drain
    s.drain_tokens["syslog"] = drain.json()["token"]

    # A live tail, and the tail page's event stream with a read_channel credential.
    tail_url = node.session(channel, tail=True)
    readers.append(StreamReader(node.api_port, tail_url.split(str(node.api_port), 1)[1]))
    readers.append(StreamReader(node.api_port, f"/v3/channels/{channel}/stream", basic(*reader)))
    # Both answered (the tail registered) before anything is sent.
    for r in readers:
        assert b"\r\n\r\n" in wait_for(r.text, lambda text: b"\r\n\r\n" in text), r.text()

    web, worker = s.tokens["web"], s.tokens["worker"]
    # Over TCP: octet-counted and newline-framed RFC 5424, and an RFC 3164 line, the token in APP-NAME / TAG.
    tcp = [syslog_message(web, "web.1", f"tcp line {i}") for i in range(3)]
    with socket.create_connection(("127.0.0.1", node.syslog_port), timeout=5) as sock:
        sock.sendall(octet(tcp[0]) + octet(tcp[1]) + tcp[2] + b"\n")
        sock.sendall(f"<13>Nov 24 10:00:00 myhost {worker}[42]: rfc3164 line\n".encode())
    # Over HTTP: token Basic auth, Bearer, and an any_channel credential (APP-NAME picks the channel).
    answers = [
        node.post_logs(logplex1([syslog_message(web, "web.2", f"basic {i}") for i in range(2)]),
                       auth=basic("token", web)),
        node.post_logs(logplex1([syslog_message(worker, "worker.1", f"bearer {i}") for i in range(2)]),
                       auth=f"Bearer {worker}"),
        node.post_logs(logplex1([syslog_message(web, "web.3", f"shuttle {i}") for i in range(2)]
                                + [syslog_message(other_tokens["other"], "x.1", "to the other channel")]),
                       auth=basic(*shuttle)),
    ]
    assert [a.status for a in answers] == [204] * 3, answers
    s.expected = 10

    lines = node.wait_backlog(channel, s.expected)
    assert len(lines) == s.expected, lines
    wait_for(lambda: len(http_sink.messages()), lambda n: n >= s.expected, timeout=10)
    wait_for(lambda: len(syslog_sink.frames()), lambda n: n >= s.expected, timeout=10)
    wait_for(lambda: readers[0].text().count(b"\n"), lambda n: n >= s.expected, timeout=5)
    wait_for(readers[1].text, lambda text: b"shuttle 1" in text, timeout=5)
    s.session = node.session_body(channel, num=100)
    logs = node.api("GET", f"/v3/channels/{channel}/logs?num=100", auth=operator)
    assert logs.status == 200, logs
    s.channel_logs = logs.body

    # Failing requests of every kind, authenticated ones first (the throttle comes last).
    unknown = "t." + str(uuid.uuid4())
    _fail(s, "unknown token", node.post_logs(logplex1([syslog_message(unknown, "p", "x")]),
                                             auth=basic("token", unknown)), 401)
    _fail(s, "unknown bearer", node.post_logs(b"", auth=f"Bearer {unknown}"), 401)
    _fail(s, "token as user", node.post_logs(logplex1([syslog_message(web, "p", "x")]),
                                             auth=basic(web, "x")), 401)
    _fail(s, "token as credential id", node.api("GET", "/v3/nodes", auth=(web, web)), 401)
    _fail(s, "token, wrong content type", node.post_logs(b"{}", auth=basic("token", web),
                                                         content_type="application/json"), 415)
    _fail(s, "token, malformed body", node.post_logs(f"{web} no octet count".encode(),
                                                     auth=basic("token", web)), 400)
    _fail(s, "token, count mismatch", node.post_logs(logplex1([syslog_message(web, "p", "x")]),
                                                     auth=basic("token", web),
                                                     headers={"Logplex-Msg-Count": "7"}), 400)
    _fail(s, "token, bad gzip", node.post_logs(b"\x1f\x8b" + web.encode(), auth=basic("token", web),
                                               headers={"Content-Encoding": "gzip"}), 400)
    _fail(s, "shuttle, malformed body", node.post_logs(b"x", auth=basic(*shuttle)), 400)
    _fail(s, "tail page, other channel", http_request(
        node.api_port, "GET", f"/v3/channels/{other}/stream", headers={"Authorization": basic(*reader)}), 403)
    _fail(s, "reader on the API", node.api("GET", f"/v3/channels/{channel}", auth=reader), 403)
    _fail(s, "shuttle on the API", node.api("GET", "/v3/credentials", auth=shuttle), 403)
    _fail(s, "malformed JSON with a token", node.api("PUT", f"/v3/channels/{unique()}",
                                                     f'{{"tokens": ["{web}"'.encode(),
                                                     headers={"Content-Type": "application/json"}), 400)
    _fail(s, "token as a channel's token name", node.api("PUT", f"/v3/channels/{unique()}",
                                                         {"tokens": [web + " x"]}), 422)
    _fail(s, "session of no channel", node.api("POST", "/v2/sessions", {"channel_id": unique()}), 422)
    _fail(s, "token as a drain URL", node.api("POST", f"/v3/channels/{channel}/drains", {"url": web}), 400)
    _fail(s, "no such credential", node.api("DELETE", f"/v3/credentials/{uuid.uuid4().hex}"), 404)
    # Wrong passwords (one of them a real secret of another credential) until the throttle answers.
    for n in range(WRONG_PASSWORDS):
        wrong = f"wrong-{n}-{uuid.uuid4().hex}"
        s.secrets[f"wrong password {n}"] = wrong
        target = [("api", lambda w=wrong: node.api("GET", "/v3/nodes", auth=(operator[0], w))),
                  ("logs", lambda w=wrong: node.post_logs(b"", auth=basic(shuttle[0], w))),
                  ("api", lambda: node.api("GET", "/v3/nodes", auth=(operator[0], s.secrets["shuttle"]))),
                  ("tail page", lambda w=wrong: http_request(node.api_port, "GET", "/tail/channels",
                                                             headers={"Authorization": basic(reader[0], w)})),
                  ("logs", lambda: node.post_logs(b"", auth=basic(shuttle[0], s.secrets["operator"])))][n % 5]
        _fail(s, f"wrong password on {target[0]}", target[1](), 401)
    throttled = node.api("GET", "/v3/nodes", auth=operator)
    assert throttled.status == 429, throttled
    s.errors.append(("throttled", throttled.status, throttled.body))

    # /metrics (no credential needed without --metrics-auth).
    metrics = http_request(node.api_port, "GET", "/metrics")
    assert metrics.status == 200, metrics
    s.metrics = metrics.body
    s.tail, s.stream = readers[0].text(), readers[1].text()
    s.http_drain, s.syslog_drain = http_sink.received, syslog_sink.raw()


def _dump(port: int) -> tuple[bytes, dict[bytes, bytes]]:
    """Every key and value of the config Redis, as one blob; and the credentials hash."""
    r = redis_py.Redis(host="127.0.0.1", port=port)
    out = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        out.append(key)
        if kind == b"string":
            out.append(r.get(key) or b"")
        elif kind == b"hash":
            out.extend(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind == b"set":
            out.extend(r.smembers(key))
        elif kind == b"list":
            out.extend(r.lrange(key, 0, -1))
        elif kind == b"zset":
            out.extend(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            out.extend(repr(e).encode() for e in r.xrange(key))
    creds = r.hgetall(b"lp:creds")
    r.close()
    return b"\n".join(out), creds


# -- the checks -----------------------------------------------------------------------------------------
def app_tokens(seen: Seen) -> list[str]:
    return list(seen.tokens.values())


def credential_secrets(seen: Seen) -> list[str]:
    return [v for k, v in seen.secrets.items() if not k.endswith("-id")]


def leaks(text: bytes | str, secrets_: list[str]) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [secret for secret in secrets_ if secret in text]


def test_the_scenario_went_through(seen):
    assert len(seen.tokens) == 3 and len(seen.drain_tokens) == 2
    assert seen.tail.count(b"\n") >= seen.expected
    assert b"tcp line 0" in seen.tail and b"rfc3164 line" in seen.tail and b"bearer 1" in seen.tail
    assert b"event: " in seen.stream and b"shuttle 1" in seen.stream
    assert len(seen.errors) >= 20


def test_the_node_log_holds_no_token_or_secret(seen):
    assert seen.log
    everything = app_tokens(seen) + list(seen.drain_tokens.values()) + credential_secrets(seen)
    found = leaks(seen.log, everything)
    lines = [line for line in seen.log.splitlines() if any(secret in line for secret in found)]
    assert found == [], "\n".join(lines[:20])


def test_tails_backlogs_and_channel_logs_hold_no_token(seen):
    everything = app_tokens(seen) + list(seen.drain_tokens.values()) + credential_secrets(seen)
    for name, text in (("live tail", seen.tail), ("event stream", seen.stream), ("session backlog", seen.session),
                       ("channel logs", seen.channel_logs)):
        assert leaks(text, everything) == [], name
    # The token's name is what a reader sees instead.
    assert b"web[web.1]: tcp line 0" in seen.tail and b"worker[42]: rfc3164 line" in seen.tail


def test_drains_carry_their_token_only_in_their_own_header(seen):
    http_token, syslog_token = seen.drain_tokens["http"], seen.drain_tokens["syslog"]
    forbidden = app_tokens(seen) + credential_secrets(seen)
    assert seen.http_drain
    for headers, body in seen.http_drain:
        assert headers.get("Logplex-Drain-Token") == http_token
        assert leaks(body, forbidden + [http_token, syslog_token]) == []
        elsewhere = {k: v for k, v in headers.items() if k not in ("Logplex-Drain-Token", "Authorization")}
        assert leaks(json.dumps(elsewhere), forbidden + [http_token, syslog_token]) == []
        # The URL's user and password go in Authorization, and only there.
        assert headers.get("Authorization") == basic("sink", seen.secrets["url-password"])
    frames = octet_frames(seen.syslog_drain, complete_only=True)
    assert len(frames) >= seen.expected
    for frame in frames:
        host = frame.split(b" ", 3)[2]
        assert host == syslog_token.encode(), frame
        rest = frame.replace(syslog_token.encode(), b"", 1)
        assert leaks(rest, forbidden + [http_token, syslog_token]) == [], frame


def test_error_bodies_hold_no_token_or_secret(seen):
    everything = app_tokens(seen) + list(seen.drain_tokens.values()) + credential_secrets(seen)
    for what, status, body in seen.errors:
        assert status >= 400
        assert isinstance(json.loads(body).get("error"), str), (what, body)
        assert leaks(body, everything) == [], (what, status, body)


def test_metrics_hold_no_token_or_secret(seen):
    everything = app_tokens(seen) + list(seen.drain_tokens.values()) + credential_secrets(seen)
    assert b"logplex_messages_routed_total" in seen.metrics
    assert leaks(seen.metrics, everything) == []
    # No label carries a token's or a secret's shape either.
    labels = re.findall(rb"\{([^}]*)\}", seen.metrics)
    assert not [label for label in labels if re.search(rb"\b[td]\.[0-9a-f]{8}-", label)]


def test_the_config_redis_holds_credentials_as_slow_hashes_only(seen):
    # (The drain URL, password and all, is config the node needs: it is kept.)
    assert leaks(seen.redis_dump, [v for k, v in seen.secrets.items()
                                   if not k.endswith("-id") and k != "url-password"]) == []
    ours = {seen.secrets[k + "-id"].encode(): seen.secrets[k] for k in ("shuttle", "reader", "operator")}
    assert set(ours) <= set(seen.creds)
    for cred_id, doc in seen.creds.items():
        stored = json.loads(doc)
        assert set(stored) <= {"hash", "perms", "note", "channels", "incarnations"}, stored
        scheme, n, r, p, salt, digest = stored["hash"].split("$")
        assert scheme == "scrypt" and int(n) >= 2**14 and int(r) >= 8 and int(p) >= 1, stored["hash"]
        assert len(base64.urlsafe_b64decode(salt + "==")) >= 16 and len(base64.urlsafe_b64decode(digest + "==")) >= 32
        if cred_id in ours:
            assert secrets.check_secret(ours[cred_id], stored["hash"])


def test_failed_logins_were_throttled_per_address(seen):
    statuses = [status for what, status, _ in seen.errors if what.startswith("wrong password")]
    assert statuses == [401] * WRONG_PASSWORDS
    ((_, status, body),) = [e for e in seen.errors if e[0] == "throttled"]
    assert status == 429 and b"Too many failed logins" in body
