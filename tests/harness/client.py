"""How tests talk to a running node: its API, /logs and syslog listeners, the wire formats they
speak, and starting and stopping a node on a shared redis-server.

Blocking, standard library only: the plain pytest tests call it directly, the
trial tests through deferToThread, bench/ as it likes.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from tests.harness.procs import REPO_ROOT, NodeProcess, RedisServer, free_port

ADMIN = ("admin", "secret")
LOGPLEX1 = "application/logplex-1"
# The timestamp senders put in every test message; the tail shows it as sent.
TS = "2024-05-06T07:08:09.123456+00:00"
POLL = 0.02
NO_BODY = object()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def unique(prefix: str = "ch") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool] = bool, timeout: float = 5.0) -> Any:
    """fetch() every 20 ms until done(value) holds or timeout passes.

    Returns the last value either way, so the caller's exact assert shows
    what was seen when the condition never came true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(POLL)


# -- HTTP --------------------------------------------------------------------------------------
class Answer:
    """One HTTP response, fully read."""

    def __init__(self, response: http.client.HTTPResponse, body: bytes) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:300]!r}>"


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = NO_BODY,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
    timeout: float = 10.0,
) -> Answer:
    """One request on a fresh connection: dict/list bodies go as JSON, bytes as they are,
    an iterable of bytes chunked."""
    headers = dict(headers or {})
    if body is NO_BODY:
        data = None
    elif isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    elif chunked:
        data = body
    else:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        return Answer(response, response.read())
    finally:
        conn.close()


# -- syslog ------------------------------------------------------------------------------------
def syslog_message(token: str, procid: str, text: str, *, pri: int = 134, timestamp: str = TS,
                   host: str = "myhost", msgid: str = "-", sd: str = "-") -> bytes:
    return f"<{pri}>1 {timestamp} {host} {token} {procid} {msgid} {sd} {text}".encode()


def octet(message: bytes) -> bytes:
    """An RFC 6587 octet-counted frame."""
    return b"%d %s" % (len(message), message)


def logplex1(messages: Iterable[bytes]) -> bytes:
    """An application/logplex-1 body as log-shuttle sends it (LF counted in each frame)."""
    return b"".join(b"%d %s\n" % (len(m) + 1, m) for m in messages)


def decode_logplex1(body: bytes) -> list[bytes]:
    """The frames of a logplex-1 body, as they are (trailing LF included)."""
    frames = []
    pos = 0
    while pos < len(body):
        sp = body.index(b" ", pos)
        length = int(body[pos:sp])
        frames.append(body[sp + 1 : sp + 1 + length])
        pos = sp + 1 + length
    assert pos == len(body), f"a frame overruns the body: {body!r}"
    return frames


def send_syslog(port: int, data: bytes) -> None:
    """Connect, send, hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)


def closed_by_peer(sock: socket.socket, timeout: float = 3.0) -> str:
    """How the other side ends sock within timeout: "eof", "reset", or "" while it stays open."""
    sock.settimeout(timeout)
    try:
        while True:
            if sock.recv(4096) == b"":
                return "eof"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return ""


# -- a node ------------------------------------------------------------------------------------
class Node:
    """A running node and the calls tests make on it."""

    def __init__(self, proc: NodeProcess, syslog_ports: list[int]) -> None:
        self.proc = proc
        self.syslog_ports = syslog_ports

    @property
    def api_port(self) -> int:
        return self.proc.api_port

    @property
    def logs_port(self) -> int:
        return self.proc.logs_port

    @property
    def syslog_port(self) -> int:
        return self.syslog_ports[0]

    @property
    def api_url(self) -> str:
        return self.proc.api_url

    def api(self, method: str, path: str, body: Any = NO_BODY, *, auth: tuple[str, str] | None = ADMIN,
            headers: dict[str, str] | None = None) -> Answer:
        headers = dict(headers or {})
        if auth is not None:
            headers.setdefault("Authorization", basic(*auth))
        return http_request(self.api_port, method, path, body, headers)

    def post_logs(self, body: Any, *, auth: str | None = None, content_type: str | None = LOGPLEX1,
                  headers: dict[str, str] | None = None, chunked: bool = False) -> Answer:
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = auth
        if content_type is not None:
            headers["Content-Type"] = content_type
        return http_request(self.logs_port, "POST", "/logs", body, headers, chunked=chunked)

    def metric(self, name: str) -> float:
        """The value of an unlabelled sample on GET /metrics."""
        answer = http_request(self.api_port, "GET", "/metrics")
        assert answer.status == 200, answer
        for line in answer.body.decode().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
        raise AssertionError(f"{name} is not on /metrics:\n{answer.body.decode()}")

    def channel(self, *token_names: str) -> tuple[str, dict[str, str]]:
        """A new v3 channel with these tokens: (channel id, {name: token})."""
        channel_id = unique()
        answer = self.api("PUT", f"/v3/channels/{channel_id}", {"tokens": list(token_names)})
        assert answer.status == 201, answer
        return channel_id, answer.json().get("tokens", {})

    def session(self, channel_id: str, **options: Any) -> str:
        answer = self.api("POST", "/v2/sessions", {"channel_id": channel_id, **options})
        assert answer.status == 201, answer
        return answer.json()["url"]

    def session_body(self, channel_id: str, **options: Any) -> bytes:
        """What GET of a new (non-tail) session answers."""
        path = self.session(channel_id, **options).split(str(self.api_port), 1)[1]
        answer = http_request(self.api_port, "GET", path)
        assert answer.status == 200, answer
        return answer.body

    def backlog(self, channel_id: str, **options: Any) -> list[str]:
        return self.session_body(channel_id, **options).decode().splitlines()

    def wait_backlog(self, channel_id: str, count: int, **options: Any) -> list[str]:
        """The backlog once it has at least count lines (or what it had after 5 s)."""
        return wait_for(lambda: self.backlog(channel_id, **options), lambda lines: len(lines) >= count)


def start_node(tmp_path_factory, redis: RedisServer, *args: str, syslog_listeners: int = 1) -> Node:
    extra = [f"tcp:{free_port()}:interface=127.0.0.1" for _ in range(syslog_listeners - 1)]
    argv = [*args]
    for description in extra:
        argv += ["--syslog", description]
    if "--login-failures" not in argv:
        # These tests send many wrong credentials on purpose from one address;
        # test_limits.py checks the throttle itself.
        argv += ["--login-failures", "1000000"]
    proc = NodeProcess(str(tmp_path_factory.mktemp("node")), redis.url, argv)
    proc.start()
    ports = [proc.syslog_port] + [int(d.split(":")[1]) for d in extra]
    return Node(proc, ports)


def stop_node(node: Node) -> None:
    code = node.proc.stop()
    # twistd ends a clean SIGTERM shutdown by re-raising the signal on itself.
    assert code in (0, -signal.SIGTERM), f"node exited with {code}:\n{node.proc.log_text()[-4000:]}"


# There is no API for credentials yet: the node's own ConfigStore writes them,
# as an admin helper will, in a short process of its own.
_CREATE_CREDENTIAL = """
import sys
from twisted.internet import defer, task
from logplex.config.store import ConfigStore
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.settings import REDIS_TIMEOUT, ApiSettings, NodeSettings

async def main(reactor, url, user, secret, perms):
    address = parse_redis_url(url)
    redis = connect(address)
    store = ConfigStore(redis, address, reactor, ApiSettings(), keys=RedisKeys("lp", address.db),
                        timeout=REDIS_TIMEOUT, reconcile_interval=NodeSettings().reconcile_interval)
    await store.create_credential(perms.split(","), note="integration test", cred_id=user, secret=secret)
    await redis.disconnect()

task.react(lambda reactor, *argv: defer.ensureDeferred(main(reactor, *argv)), sys.argv[1:])
"""


def create_credential(redis: RedisServer, user: str, secret: str, perms: str) -> None:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-c", _CREATE_CREDENTIAL, redis.url, user, secret, perms],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr


class Sender:
    """One syslog TCP connection to a node, writing RFC 5424 lines of one token and PROCID as
    octet-counted frames: what it sends keeps its order. Blocking: trial tests call it in a thread."""

    def __init__(self, node: Node | int, token: str, procid: str = "web.1") -> None:
        port = node if isinstance(node, int) else node.syslog_port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.token = token
        self.procid = procid
        self.sent: list[str] = []
        self.sent_at: list[tuple[str, float]] = []  # (text, monotonic time it was written)

    def send(self, texts: list[str], *, rate: float | None = None, chunk: int = 50) -> None:
        """Write texts in writes of `chunk` messages, at about `rate` messages a second if given."""
        began = time.monotonic()
        for i in range(0, len(texts), chunk):
            part = texts[i:i + chunk]
            self.sock.sendall(b"".join(octet(syslog_message(self.token, self.procid, t)) for t in part))
            now = time.monotonic()
            self.sent.extend(part)
            self.sent_at.extend((t, now) for t in part)
            if rate:
                ahead = began + (i + len(part)) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the admin shell, with the real OpenSSH client --------------------------------------------------
def make_key(path: str) -> str:
    """A new ed25519 key pair at path (and path.pub); returns path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path


def ssh(port, key, *command, stdin=None, tty=False):
    argv = ["ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    if tty:
        argv.append("-tt")
    return subprocess.run([*argv, "admin@127.0.0.1", *command], input=stdin, capture_output=True,
                          timeout=30)
