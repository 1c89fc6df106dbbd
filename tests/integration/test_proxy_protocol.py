"""Listeners behind a load balancer: `haproxy:` in front of every listener, PROXY v1 and v2 headers.

The client address the header reports is what the node sees: its logs name
it, and its login throttle counts it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
from collections.abc import Callable

import pytest

from tests.harness.certs import TestCA, endpoint_description
from tests.harness.client import ADMIN, basic, logplex1, octet, syslog_message, unique, wait_for
from tests.harness.procs import NodeProcess, free_port

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, port: int) -> bytes:
    return b"PROXY TCP4 %s 127.0.0.1 %d 6001\r\n" % (source.encode(), port)


def proxy_v2(source: str, port: int) -> bytes:
    """A binary PROXY v2 header: PROXY command, TCP over IPv4."""
    addresses = ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("127.0.0.1").packed
    addresses += struct.pack("!HH", port, 6001)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


def http_through(port: int, header: bytes, method: str, path: str, headers: dict[str, str],
                 body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request on a new connection that starts with a PROXY header: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header)
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


class ProxiedNode(NodeProcess):
    """A node whose API, /logs and syslog listeners all expect a PROXY header (syslog also over TLS)."""

    def __init__(self, tmpdir: str, redis_url: str, tls_endpoint: Callable[[int], str]) -> None:
        self.tls_endpoint = tls_endpoint
        super().__init__(tmpdir, redis_url, ["--login-failures", "3"])

    def _pick_ports(self) -> None:
        super()._pick_ports()
        self.tls_port = free_port()

    def command(self) -> list[str]:
        args = super().command()
        for option in ("--api", "--logs", "--syslog"):
            at = args.index(option)
            args[at + 1] = "haproxy:" + args[at + 1]
        return args + ["--syslog", "haproxy:" + self.tls_endpoint(self.tls_port)]

    def healthy(self) -> bool:
        # Every connection to this API must start with a PROXY header.
        try:
            return http_through(self.api_port, proxy_v1("127.0.0.1", 1), "GET", "/healthcheck", {})[0] == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = TestCA(str(tmp_path_factory.mktemp("pki")))
    return ca, ca.issue(["localhost"])


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, redis, pki):
    _, issued = pki
    node = ProxiedNode(str(tmp_path_factory.mktemp("node")), redis.url,
                       lambda port: endpoint_description(issued, port))
    node.start()
    yield node
    node.stop()


def api(node: ProxiedNode, method: str, path: str, body=None, source: str = "198.51.100.1") -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else b""
    status, answer = http_through(node.api_port, proxy_v2(source, 40000), method, path,
                                  {"Authorization": basic(*ADMIN), "Content-Type": "application/json"}, data)
    return status, json.loads(answer) if answer.startswith((b"{", b"[")) else answer


def test_login_throttle_counts_the_address_the_header_reports(proxied):
    wrong = basic("admin", "wrong")
    for _ in range(3):
        status, _ = http_through(proxied.api_port, proxy_v2("203.0.113.9", 40001), "GET", "/v3/channels/x",
                                 {"Authorization": wrong})
        assert status == 401
    status, body = http_through(proxied.api_port, proxy_v2("203.0.113.9", 40002), "GET", "/v3/channels/x",
                                {"Authorization": wrong})
    assert status == 429 and b"Too many failed logins from 203.0.113.9" in body, body
    # Another client of the same balancer is a different address: not throttled.
    status, _ = http_through(proxied.api_port, proxy_v1("203.0.113.10", 40003), "GET", "/v3/channels/x",
                             {"Authorization": wrong})
    assert status == 401


def test_every_listener_takes_v1_and_v2_headers_and_logs_name_the_reported_client(proxied, pki):
    channel = unique("proxy")
    status, made = api(proxied, "PUT", f"/v3/channels/{channel}", {"tokens": ["app"]})
    assert status == 201, made
    token = made["tokens"]["app"]
    # /logs, v1 then v2.
    for n, header in enumerate((proxy_v1("192.0.2.21", 5001), proxy_v2("192.0.2.22", 5002))):
        status, _ = http_through(proxied.logs_port, header, "POST", "/logs",
                                 {"Authorization": basic("token", token), "Content-Type": "application/logplex-1"},
                                 logplex1([syslog_message(token, "web.1", f"over http {n}")]))
        assert status == 204
    # syslog over TCP, v2; then a broken frame, so that the node logs the peer it closes.
    with socket.create_connection(("127.0.0.1", proxied.syslog_port), timeout=10) as s:
        s.sendall(proxy_v2("192.0.2.23", 5003) + octet(syslog_message(token, "web.1", "over tcp")) + b"1x2 broken")
        assert s.recv(1) == b""
    # syslog over TLS: the v1 header in the clear, then the handshake.
    with socket.create_connection(("127.0.0.1", proxied.tls_port), timeout=10) as raw:
        raw.sendall(proxy_v1("192.0.2.24", 5004))
        with ssl.create_default_context(cafile=pki[0].ca_path).wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(octet(syslog_message(token, "web.1", "over tls")))
    status, body = wait_for(lambda: api(proxied, "GET", f"/v3/channels/{channel}/logs"),
                            lambda answer: answer[1].count(b"over ") == 4 if isinstance(answer[1], bytes) else False)
    assert status == 200 and all(t in body for t in (b"over http 0", b"over http 1", b"over tcp", b"over tls")), body
    assert "peer=192.0.2.23:5003" in proxied.log_text()
