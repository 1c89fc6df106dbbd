"""A node told to stop (SIGTERM) says so on /healthcheck at once, serves on for --stop-grace, then closes."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.harness.client import (
    basic, http_request, logplex1, octet, start_node, stop_node, syslog_message, wait_for,
)

GRACE = 2.0


def refused(port: int) -> bool:
    """Whether a new connection to port is refused (the listener is closed)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def health(port: int) -> tuple[int, bytes] | None:
    try:
        answer = http_request(port, "GET", "/healthcheck", timeout=1)
    except OSError:
        return None
    return answer.status, answer.body


@pytest.fixture(params=["one process", "--workers 2"])
def graceful_node(request, tmp_path_factory, redis):
    args = ["--stop-grace", str(GRACE)]
    if request.param != "one process":
        args += request.param.split()
    node = start_node(tmp_path_factory, redis, *args)
    try:
        yield node
    finally:
        node.proc.kill()


def test_sigterm_makes_healthcheck_503_at_once_while_senders_are_served_for_the_grace(
        graceful_node, tmp_path_factory, redis):
    node = graceful_node
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    auth = basic("token", token)
    # Under --workers, each connection goes to either worker: all must know the token.
    accepted = wait_for(lambda: [node.post_logs(logplex1([syslog_message(token, "warm-up", "before")]),
                                                auth=auth).status for _ in range(10)],
                        lambda statuses: statuses == [204] * 10)
    assert accepted == [204] * 10
    # A syslog sender connected before the stop goes on sending during it.
    early = socket.create_connection(("127.0.0.1", node.syslog_port), timeout=5)
    sent_syslog = 0

    node.proc._proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    api = wait_for(lambda: health(node.api_port), lambda h: h is not None and h[0] == 503, timeout=0.2)
    noticed = time.monotonic() - signalled
    assert api is not None and api[0] == 503, api
    assert noticed <= 0.2, f"/healthcheck took {noticed:.2f} s to answer 503 after SIGTERM"
    # Every worker says so (each connection may reach either).
    stopping = wait_for(lambda: [health(node.api_port) for _ in range(10)],
                        lambda answers: all(a is not None and a[0] == 503 for a in answers), timeout=0.5)
    assert all(a is not None and a[0] == 503 for a in stopping), stopping
    answer = http_request(node.api_port, "GET", "/v3/healthcheck")
    assert answer.status == 503 and answer.json()["status"] == "stopping"
    assert health(node.logs_port) == (503, b"STOPPING")

    # During the grace: new connections are accepted and their lines taken.
    acknowledged = []
    i = 0
    while time.monotonic() - signalled < GRACE * 0.6:
        text = f"during grace {i}"
        answer = node.post_logs(logplex1([syslog_message(token, "web.1", text)]), auth=auth)
        assert answer.status == 204, (answer, time.monotonic() - signalled)
        acknowledged.append(text)
        early.sendall(octet(syslog_message(token, "syslog.1", f"over syslog {i}")))
        with socket.create_connection(("127.0.0.1", node.syslog_port), timeout=5) as late:
            late.sendall(octet(syslog_message(token, "syslog.2", f"new connection {i}")))
        sent_syslog += 2
        i += 1
        time.sleep(0.05)
    early.close()
    assert len(acknowledged) >= 5
    # The API serves too (a client reading its backlog is not cut off).
    assert node.api("GET", f"/v3/channels/{channel_id}").status == 200

    # Then the listeners close, not before the grace has passed.
    closed = wait_for(lambda: all(refused(p) for p in (node.api_port, node.logs_port, node.syslog_port)),
                      timeout=GRACE + 10)
    took = time.monotonic() - signalled
    assert closed, "the listeners were still open long after --stop-grace"
    assert took >= GRACE * 0.9, f"the listeners closed {took:.2f} s after SIGTERM, before the grace"
    stop_node(node)

    # Nothing acknowledged is lost: another node reads every line from the backlog.
    reader = start_node(tmp_path_factory, redis)
    try:
        lines = wait_for(lambda: [line for line in reader.backlog(channel_id) if "warm-up" not in line],
                         lambda got: len(got) >= len(acknowledged) + sent_syslog)
    finally:
        stop_node(reader)
    got = "\n".join(lines)
    missing = [text for text in acknowledged if text not in got]
    assert missing == [], f"{len(missing)} acknowledged lines lost: {missing[:5]}"
    # And every syslog line sent during the grace, on an old connection or a new one.
    assert len(lines) == len(acknowledged) + sent_syslog


def test_with_no_grace_the_node_closes_its_listeners_at_once(tmp_path_factory, redis):
    node = start_node(tmp_path_factory, redis, "--stop-grace", "0")
    node.proc._proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    wait_for(lambda: refused(node.api_port), timeout=5)
    assert time.monotonic() - signalled < 1.5
    stop_node(node)

