"""Password guessing against a real node: concurrency, listeners, credentials and cross-site forms.

Loopback has a whole /8 on Linux, so a test can speak from 127.0.0.2,
127.0.0.3, ... to play another client address.
"""

from __future__ import annotations

import http.client
import selectors
import socket
import statistics
import time
import uuid

import pytest

from tests.harness.client import (
    ADMIN, basic, create_credential, logplex1, start_node, stop_node, syslog_message,
)

LOGIN_FAILURES = 10


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis):
    """A node with the default throttle: 10 failed logins per address and minute."""
    n = start_node(tmp_path_factory, redis, "--login-failures", str(LOGIN_FAILURES))
    yield n
    stop_node(n)


@pytest.fixture
def credential(redis):
    """A new full_api credential that the node has never checked: (id, secret)."""
    cred = ("victim-" + uuid.uuid4().hex[:8], "victim-secret-" + uuid.uuid4().hex)
    create_credential(redis, *cred, "full_api,any_channel")
    return cred


_next_address = iter(range(2, 250))


def new_address() -> str:
    """A loopback address no other test of this module has spoken from."""
    return f"127.0.0.{next(_next_address)}"


def request_bytes(method: str, path: str, auth: tuple[str, str] | None, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(body)}"]
    if auth is not None:
        lines.append("Authorization: " + basic(*auth))
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def send_burst(port: int, raw: bytes, count: int, source: str) -> list[socket.socket]:
    """`count` copies of one request, each sent on its own connection from `source`."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(raw)
        sockets.append(s)
    return sockets


def statuses_of(sockets: list[socket.socket], timeout: float = 60.0) -> list[int]:
    """The status each connection was answered with (0: none within timeout); closes them."""
    selector = selectors.DefaultSelector()
    answers: dict[socket.socket, bytearray] = {}
    for s in sockets:
        s.setblocking(False)
        answers[s] = bytearray()
        selector.register(s, selectors.EVENT_READ)
    waiting = set(answers)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data:
                answers[s] += data
            else:
                selector.unregister(s)
                waiting.discard(s)
    selector.close()
    statuses = []
    for s, data in answers.items():
        s.close()
        statuses.append(int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0)
    return statuses


def timed(port: int, method: str, path: str, auth, source: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> tuple[int, float]:
    """(status, seconds) of one request from `source`."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        all_headers = {"Authorization": basic(*auth)} if auth else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=body or None, headers=all_headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


def metric(node, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry these labels (all of them if none)."""
    answer = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
    answer.request("GET", "/metrics")
    text = answer.getresponse().read().decode()
    answer.close()
    total = 0.0
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += float(value)
    return total


# -- 1. concurrency ---------------------------------------------------------------------------


def test_concurrent_guesses_are_refused_before_hashing_and_a_real_login_is_not_kept_waiting(node, credential):
    """1,000 concurrent wrong passwords from one address for a credential the node has not
    verified yet: at most the limit are hashed (401), the rest are 429 at once; meanwhile the
    right secret from another address signs in quickly."""
    attacker = new_address()
    guess = request_bytes("GET", "/v3/nodes", (credential[0], "wrong-guess"))
    started = time.monotonic()
    sockets = send_burst(node.api_port, guess, 1000, attacker)
    sent = time.monotonic() - started
    # Every guess is sent: a real user signs in from another address meanwhile.
    status, took = timed(node.api_port, "GET", "/v3/nodes", credential, new_address())
    statuses = statuses_of(sockets)
    print(f"\nburst sent in {sent:.1f} s: {statuses.count(401)} x 401, {statuses.count(429)} x 429, "
          f"{statuses.count(0)} unanswered, all in {time.monotonic() - started:.1f} s; "
          f"the real login took {took:.2f} s")
    assert status == 200
    assert took < 2.0
    assert statuses.count(401) <= LOGIN_FAILURES
    assert statuses.count(429) >= 1000 - LOGIN_FAILURES
    assert metric(node, "logplex_logins_throttled_total", listener="api") >= 900


def test_an_unknown_credential_id_takes_as_long_to_refuse_as_a_known_one(node, credential):
    """Timing does not tell which credential ids exist: both pay the password hash."""

    def median(user: str) -> float:
        times = []
        for _ in range(5):
            status, took = timed(node.api_port, "GET", "/v3/nodes", (user, "wrong"), new_address())
            assert status == 401
            times.append(took)
        return statistics.median(times)

    known = median(credential[0])
    unknown = median("nobody-" + uuid.uuid4().hex[:8])
    print(f"known id refused in {known * 1000:.1f} ms, unknown id in {unknown * 1000:.1f} ms")
    assert unknown > known * 0.5


# -- 2. listeners, credentials -----------------------------------------------------------------


def test_bad_logins_on_the_log_input_do_not_lock_the_api(node, credential):
    address = new_address()
    body = logplex1([syslog_message("t.x", "web.1", "x")])
    statuses = [timed(node.logs_port, "POST", "/logs", (credential[0], "wrong"), address, body,
                      {"Content-Type": "application/logplex-1"})[0]
                for _ in range(LOGIN_FAILURES + 2)]
    assert statuses[:LOGIN_FAILURES] == [401] * LOGIN_FAILURES
    assert statuses[LOGIN_FAILURES:] == [429, 429]
    # The same address, the same credential, on the API: the log input's failures do not count.
    assert timed(node.api_port, "GET", "/v3/nodes", credential, address)[0] == 200
    assert timed(node.api_port, "GET", "/v3/nodes", ADMIN, address)[0] == 200


def test_a_credential_guessed_from_many_addresses_is_throttled_but_its_known_secret_still_works(
        node, credential):
    # The real user signs in once: this node now knows the secret.
    assert timed(node.api_port, "GET", "/v3/nodes", credential, new_address())[0] == 200
    per_credential = 10 * LOGIN_FAILURES
    statuses = []
    # Few guesses per address (under the per-address limit), many addresses.
    for _ in range(per_credential // 5 + 2):
        address = new_address()
        statuses += [timed(node.api_port, "GET", "/v3/nodes", (credential[0], f"guess-{n}"), address)[0]
                     for n in range(5)]
    assert statuses.count(401) == per_credential
    assert statuses[-1] == 429
    # A fresh address is refused for this credential's unknown secrets...
    refused = timed(node.api_port, "GET", "/v3/nodes", (credential[0], "another guess"), new_address())
    assert refused[0] == 429
    # ... but the secret this node has verified still signs in, from anywhere,
    # and other credentials are not affected.
    assert timed(node.api_port, "GET", "/v3/nodes", credential, new_address())[0] == 200
    assert timed(node.api_port, "GET", "/v3/nodes", ADMIN, new_address())[0] == 200


# -- 3. cross-site requests --------------------------------------------------------------------


def test_a_cross_site_form_post_cannot_create_a_drain(node):
    channel, _ = node.channel("app")
    form = b'{"url": "https://attacker.example/drain", "x": "="}'
    for origin in ("https://attacker.example", "null", f"http://127.0.0.1:{node.api_port + 1}"):
        answer = node.api("POST", f"/v3/channels/{channel}/drains", form,
                          headers={"Content-Type": "text/plain", "Origin": origin})
        assert answer.status == 403, (origin, answer)
        assert "origin" in answer.json()["error"].lower()
    assert node.api("GET", f"/v3/channels/{channel}").json().get("drains", []) == []
    assert metric(node, "logplex_api_cross_origin_refused_total") >= 3


def test_writes_without_an_origin_or_from_the_api_itself_still_work(node):
    channel = "ch-" + uuid.uuid4().hex
    # curl -d: no Origin, a form content type.
    made = node.api("PUT", f"/v3/channels/{channel}", b'{"tokens": ["app"]}',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert made.status == 201, made
    same = node.api("POST", f"/v3/channels/{channel}/tokens", b'{"name": "web"}',
                    headers={"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{node.api_port}"})
    assert same.status == 200, same  # a new token, as logplex's v3 answers
    # Reads carry no risk and keep working from anywhere (the tail page reads with GET).
    assert node.api("GET", f"/v3/channels/{channel}", headers={"Origin": "https://elsewhere.example"}).status == 200
