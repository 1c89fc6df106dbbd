"""Every ssl: listener a node opens (API, /logs, syslog; alone or under --workers), reached by clients that offer ALPN.

Clients that offer ALPN (curl, browsers, Python with set_alpn_protocols)
must get through: HTTP listeners agree on http/1.1, a syslog listener
carries on without a protocol whatever the client offers. Every listener
offers only forward-secret AEAD suites on TLS 1.2 and 1.3.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.harness.client import NO_BODY, Answer, logplex1, octet, syslog_message, unique, wait_for
from tests.harness.procs import NodeProcess, free_port
from tests.harness.tls import HOST, HttpsNodeProcess, RsaPki, https_request, tls_connect

# Static-RSA key exchange with CBC and SHA-1 (TLS_RSA_WITH_AES_128_CBC_SHA), and
# ECDHE with CBC: neither is forward-secret AEAD.
REFUSED = ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA", "ECDHE-RSA-AES256-SHA384"]
ACCEPTED = ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"]
# What clients offer in the wild: browsers and curl (h2 first), a syslog sender
# that names its protocol, something nobody speaks.
ALPN_LISTS = [["h2", "http/1.1"], ["http/1.1"], ["syslog"], ["x-unknown", "acme-tls/1"]]


class Site:
    def __init__(self, proc: NodeProcess, pki: RsaPki, logs_port: int, syslog_port: int) -> None:
        self.proc, self.pki, self.logs_port, self.syslog_port = proc, pki, logs_port, syslog_port

    @property
    def api_port(self) -> int:
        return self.proc.api_port

    def ports(self) -> dict[str, int]:
        return {"api": self.api_port, "logs": self.logs_port, "syslog": self.syslog_port}

    def api(self, method: str, path: str, body: object = NO_BODY) -> Answer:
        return https_request(self.api_port, self.pki, method, path, body)

    def channel(self) -> tuple[str, str]:
        channel_id = unique("tls")
        answer = self.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]})
        assert answer.status == 201, answer
        return channel_id, answer.json()["tokens"]["app"]

    def backlog(self, channel_id: str) -> list[str]:
        url = self.api("POST", "/v2/sessions", {"channel_id": channel_id}).json()["url"]
        answer = https_request(self.api_port, self.pki, "GET", url.split(str(self.api_port), 1)[1])
        assert answer.status == 200, answer
        return answer.body.decode().splitlines()


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis):
    pki = RsaPki(str(tmp_path_factory.mktemp("rsa")))
    logs_port, syslog_port = free_port(), free_port()
    proc = HttpsNodeProcess(str(tmp_path_factory.mktemp("node")), redis.url, pki, [
        "--logs", pki.endpoint(logs_port), "--syslog", pki.endpoint(syslog_port),
        "--login-failures", "1000000"])
    proc.start()
    yield Site(proc, pki, logs_port, syslog_port)
    code = proc.stop()
    assert code in (0, -15), proc.log_text()[-3000:]


def openssl_handshake(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", HOST, *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)


# -- ALPN ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_offering_alpn_reads_the_api_and_posts_logs_over_https(site):
    channel_id, token = site.channel()
    common = ["curl", "-sS", "-v", "--cacert", site.pki.ca_path, "-o", "/dev/null", "-w", "%{http_code}"]
    health = subprocess.run([*common, f"https://{HOST}:{site.api_port}/healthcheck"],
                            capture_output=True, text=True, timeout=10)
    assert health.stdout == "200", health.stderr
    assert "ALPN: server accepted http/1.1" in health.stderr, health.stderr
    posted = subprocess.run([*common, "-H", "Content-Type: application/logplex-1",
                             "-H", f"Authorization: Bearer {token}",
                             "--data-binary", logplex1([syslog_message(token, "web.1", "via curl")]).decode(),
                             f"https://{HOST}:{site.logs_port}/logs"],
                            capture_output=True, text=True, timeout=10)
    assert posted.stdout == "204", posted.stderr
    assert wait_for(lambda: site.backlog(channel_id), lambda lines: len(lines) == 1)[0].endswith("via curl")


@pytest.mark.parametrize("listener", ["api", "logs"])
@pytest.mark.parametrize("offered", ALPN_LISTS, ids="+".join)
def test_http_listeners_agree_on_http_1_1_whatever_a_client_offers(site, listener, offered):
    port = site.ports()[listener]
    with tls_connect(port, site.pki, offered) as tls:
        # http/1.1 when offered; a client offering only others is answered without ALPN.
        assert tls.selected_alpn_protocol() == ("http/1.1" if "http/1.1" in offered else None)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    path = "/healthcheck" if listener == "api" else "/logs"
    answer = https_request(port, site.pki, "GET", path, alpn=offered)
    assert answer.status == (200 if listener == "api" else 405), answer


@pytest.mark.parametrize("offered", ALPN_LISTS + [None], ids=lambda o: "+".join(o) if o else "no-alpn")
def test_syslog_tls_takes_messages_from_a_client_offering_any_alpn(site, offered):
    channel_id, token = site.channel()
    with tls_connect(site.syslog_port, site.pki, offered) as tls:
        assert tls.selected_alpn_protocol() is None
        tls.sendall(octet(syslog_message(token, "web.1", f"over TLS offering {offered}")))
    lines = wait_for(lambda: site.backlog(channel_id), lambda lines: len(lines) == 1)
    assert len(lines) == 1 and lines[0].endswith(f"over TLS offering {offered}"), lines


# -- cipher policy ---------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize("listener", ["api", "logs", "syslog"])
def test_only_forward_secret_aead_suites_are_offered(site, listener):
    port = site.ports()[listener]
    for cipher in REFUSED:
        refused = openssl_handshake(port, "-tls1_2", "-cipher", cipher)
        assert refused.returncode != 0, f"{listener} accepted {cipher}:\n{refused.stdout[-1500:]}"
    for cipher in ACCEPTED:
        accepted = openssl_handshake(port, "-tls1_2", "-cipher", cipher)
        assert accepted.returncode == 0, f"{listener} refused {cipher}:\n{accepted.stderr[-1500:]}"
        assert f"Cipher is {cipher}" in accepted.stdout
    tls13 = openssl_handshake(port, "-tls1_3")
    assert tls13.returncode == 0 and "TLSv1.3" in tls13.stdout, tls13.stderr[-1500:]
    old = openssl_handshake(port, "-tls1_1", "-cipher", "ALL:@SECLEVEL=0")
    assert old.returncode != 0


# -- --workers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workers_site(tmp_path_factory, redis):
    pki = RsaPki(str(tmp_path_factory.mktemp("rsa-w")))
    syslog_port = free_port()
    proc = HttpsNodeProcess(str(tmp_path_factory.mktemp("workers")), redis.url, pki, [
        "--workers", "2", "--syslog", pki.endpoint(syslog_port), "--login-failures", "1000000"],
        name=f"tlsw-{syslog_port}")
    proc.start()
    yield Site(proc, pki, 0, syslog_port)
    code = proc.stop()
    assert code in (0, -15), proc.log_text()[-3000:]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_workers_listeners_follow_the_same_tls_policy(workers_site):
    site = workers_site
    for port in (site.api_port, site.syslog_port):
        # Several connections: the kernel spreads them over both workers.
        for _ in range(4):
            assert openssl_handshake(port, "-tls1_2", "-cipher", "AES128-SHA").returncode != 0
            assert openssl_handshake(port, "-tls1_2", "-cipher", ACCEPTED[0]).returncode == 0
    for _ in range(4):
        answer = https_request(site.api_port, site.pki, "GET", "/healthcheck", alpn=["h2", "http/1.1"])
        assert answer.status in (200, 503), answer
    channel_id, token = None, None
    deadline = time.monotonic() + 10
    while channel_id is None:
        try:
            channel_id, token = site.channel()
        except AssertionError:
            # A worker may still be loading its config (503): any answer but 201 is retried.
            assert time.monotonic() < deadline, "no worker created the channel"
            time.sleep(0.1)
    # Every worker knows the channel (its feed brings it within milliseconds): eight
    # connections in a row, spread over both workers by the kernel, find it.
    wait_for(lambda: [site.api("GET", f"/v3/channels/{channel_id}").status for _ in range(8)],
             lambda statuses: statuses == [200] * 8, timeout=10)
    for i in range(4):
        with tls_connect(site.syslog_port, site.pki, ["syslog", "h2"]) as tls:
            assert tls.selected_alpn_protocol() is None
            tls.sendall(octet(syslog_message(token, "web.1", f"worker line {i}")))
    lines = wait_for(lambda: site.backlog(channel_id), lambda lines: len(lines) == 4, timeout=10)
    assert sorted(line.rsplit(" ", 1)[-1] for line in lines) == ["0", "1", "2", "3"], lines
