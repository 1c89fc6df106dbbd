"""The limits a hostile or broken client meets: each has a clear answer and an option."""

import socket
import time

import pytest

from tests.harness.client import (
    http_request, octet, start_node, stop_node, syslog_message, wait_for,
)


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long until the node closed the connection (an EOF or a reset), at most `seconds`."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"the node kept the connection open for {seconds} s") from None
    return time.monotonic() - started


@pytest.fixture(scope="module")
def strict(tmp_path_factory, redis):
    node = start_node(
        tmp_path_factory, redis, "--max-connections", "5",
        "--frame-timeout", "1", "--syslog-idle-timeout", "2", "--http-header-timeout", "1",
        "--http-request-timeout", "2", "--max-header-bytes", "2048", "--max-json", "200")
    yield node
    stop_node(node)


@pytest.fixture(scope="module")
def throttled(tmp_path_factory, redis):
    node = start_node(tmp_path_factory, redis, "--login-failures", "3")
    yield node
    stop_node(node)


def test_failed_logins_are_refused_per_address_after_the_limit(throttled):
    strict = throttled
    wrong = ("admin", "wrong")
    assert [strict.api("GET", "/v3/nodes", auth=wrong).status for _ in range(3)] == [401] * 3
    throttled = strict.api("GET", "/v3/nodes", auth=wrong)
    assert throttled.status == 429
    assert 0 < int(throttled.headers["retry-after"]) <= 60
    assert "Too many failed logins" in throttled.json()["error"]
    # Even the right password waits: the address is what is throttled.
    assert strict.api("GET", "/v3/nodes").status == 429


def test_a_listener_refuses_connections_past_its_limit(strict):
    held = [socket.create_connection(("127.0.0.1", strict.syslog_port)) for _ in range(5)]
    try:
        extra = socket.create_connection(("127.0.0.1", strict.syslog_port))
        assert closed_within(extra, 3) < 3
        assert strict.metric("logplex_connections_refused_total") >= 1
    finally:
        for s in held:
            s.close()
        wait_for(lambda: strict.metric("logplex_active_connections"), lambda n: n == 0)


def test_a_frame_that_trickles_is_cut_off_and_counted(strict):
    channel, tokens = strict.channel("app")
    sock = socket.create_connection(("127.0.0.1", strict.syslog_port))
    frame = octet(syslog_message(tokens["app"], "web.1", "slow"))
    sock.sendall(frame[:20])  # a frame begun and never finished
    took = closed_within(sock, 5)
    assert 0.9 < took < 4
    assert strict.metric("logplex_partial_frames_dropped_total") == 0  # cut, not a sender leaving


def test_a_silent_connection_is_closed_after_the_idle_timeout(strict):
    sock = socket.create_connection(("127.0.0.1", strict.syslog_port))
    assert 1.5 < closed_within(sock, 6) < 5


def test_a_slowloris_http_client_is_cut_off(strict):
    sock = socket.create_connection(("127.0.0.1", strict.logs_port))
    sock.sendall(b"POST /logs HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
    assert closed_within(sock, 5) < 3


def test_a_slow_body_is_cut_off(strict):
    sock = socket.create_connection(("127.0.0.1", strict.logs_port))
    sock.sendall(b"POST /logs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                 b"Content-Type: application/logplex-1\r\n\r\n" + b"1")
    assert closed_within(sock, 6) < 4


def test_oversized_headers_and_json_get_clear_answers(strict):
    answer = http_request(strict.api_port, "GET", "/healthcheck", headers={"X-Big": "y" * 4096})
    assert answer.status == 400
    big = {"tokens": ["t%d" % n for n in range(100)]}
    too_big = strict.api("PUT", "/v3/channels/big", big)
    assert too_big.status == 413
    assert "larger than 200 bytes" in too_big.json()["error"]
