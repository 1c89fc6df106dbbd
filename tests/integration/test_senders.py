"""The senders users run, for real, against a real node, with the configurations
of examples/ (which README.rst "Sending logs" shows verbatim).

rsyslogd and syslog-ng run as children with private sockets; what they forward
comes from ``logger -u <their socket>``, as from any local program. Each test
reads the channel's backlog back (``GET /v3/channels/<ch>/logs``) and checks
the exact lines, in order, under the token's name.

A sender that is not installed skips the test, unless CI=true: then it fails
(``.ci/run``'s install_sender_tools provides them all).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
import warnings
from typing import NamedTuple

import pytest
from twisted.internet.endpoints import quoteStringArgument

from tests.harness.certs import WRONG_HOSTNAME, TestCA, endpoint_description
from tests.harness import senders
from tests.harness.client import (
    ADMIN,
    Node,
    basic,
    decode_logplex1,
    http_request,
    octet,
    send_syslog,
    start_node,
    stop_node,
    syslog_message,
    wait_for,
)
from tests.harness.procs import free_port
from tests.harness.senders import (
    Rsyslogd,
    SyslogNg,
    SyslogNgTree,
    render,
    rsyslog_module,
    rsyslogd_path,
    run_loggen,
    send_logger,
)
from tests.harness.shuttle import LogShuttle
from tests.tools import skip_missing

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
# Where "localhost" leads: the TLS listeners bind there, so that senders that
# must connect to the name in the certificate reach them.
LOCALHOST = socket.getaddrinfo("localhost", None, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0]
LOAD = 3000  # loggen's messages: a few thousand, every one accounted for


def need(available: object, what: str) -> None:
    """Skip without ``what`` locally; in CI a missing sender is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} (CI=true: .ci/run install_sender_tools should have provided it)",
                    pytrace=False)
    skip_missing(what, "apt-get install rsyslog rsyslog-gnutls util-linux openssl; syslog-ng as .ci/run unpacks it")


def need_logger() -> None:
    need(shutil.which("logger"), "util-linux logger is not installed")


def need_rsyslog() -> None:
    need(rsyslogd_path(), "rsyslogd is not installed (apt-get install rsyslog)")
    need_logger()


def need_gtls() -> None:
    need(rsyslog_module("lmnsd_gtls"), "rsyslog's gtls driver is not installed (apt-get install rsyslog-gnutls)")


# -- reading a channel back ---------------------------------------------------------------------
class Message(NamedTuple):
    """One message of GET /v3/channels/<ch>/logs: ``<PRI>1 TS host APP PROCID - MSG``."""

    pri: int
    timestamp: str
    app: str
    procid: str
    msg: str


def channel_messages(node: Node, channel_id: str, num: int = 200) -> list[Message]:
    answer = http_request(node.api_port, "GET", f"/v3/channels/{channel_id}/logs?num={num}",
                          headers={"Authorization": basic(*ADMIN)})
    assert answer.status == 200, answer
    out = []
    for frame in decode_logplex1(answer.body):
        head, ts, _host, app, procid, _sd, msg = frame.rstrip(b"\n").split(b" ", 6)
        out.append(Message(int(head[1:-2]), ts.decode(), app.decode(), procid.decode(),
                           msg.decode("utf-8", "replace")))
    return out


def wait_messages(node: Node, channel_id: str, count: int, timeout: float = 15.0) -> list[Message]:
    """The channel's messages once there are ``count`` (or what there was at the deadline)."""
    return wait_for(lambda: channel_messages(node, channel_id, max(count, 100)),
                    lambda got: len(got) >= count, timeout)


def texts(prefix: str, n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{prefix} line {i} of run {run}" for i in range(n)]


def metric(node: Node, sample: str) -> float:
    """A sample of /metrics by its full name, labels included (0 when absent)."""
    answer = http_request(node.api_port, "GET", "/metrics")
    assert answer.status == 200, answer
    for line in answer.body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def wait_output(daemon: senders.ChildProcess, *needles: str, timeout: float = 15.0) -> str:
    """The daemon's own log once it mentions one of ``needles``."""
    return wait_for(daemon.own_log, lambda text: any(n in text for n in needles), timeout)


# -- the node -----------------------------------------------------------------------------------
def wait_listening(host: str, *ports: int, timeout: float = 15.0) -> None:
    """Until each port accepts connections: a node answers /healthcheck before
    its --logs and --syslog listeners are bound (the TLS ones read their files)."""
    def accepting(port: int) -> bool:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False

    for port in ports:
        assert wait_for(lambda: accepting(port), timeout=timeout), f"nothing listens on {host}:{port}"


class Site(NamedTuple):
    node: Node
    tls_port: int  # --syslog ssl: with a certificate for localhost from the tests' CA
    wrong_name_port: int  # --syslog ssl: with a valid certificate for another host
    https_port: int  # --logs ssl: with examples/test-certificate.sh's self-signed certificate
    ca: TestCA
    self_signed: str  # that certificate, the CA file for HTTPS clients


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis):
    need(shutil.which("openssl"), "openssl is not installed")
    ca = TestCA(str(tmp_path_factory.mktemp("ca")))
    certs = str(tmp_path_factory.mktemp("self-signed"))
    script = os.path.join(certs, "test-certificate.sh")
    with open(script, "w") as f:
        f.write(render("test-certificate.sh", HOST="localhost"))
    subprocess.run(["sh", script], cwd=certs, check=True, capture_output=True, timeout=60)
    tls_port, wrong_port, https_port = free_port(), free_port(), free_port()
    https = ":".join([
        "ssl", str(https_port), "interface=" + quoteStringArgument(LOCALHOST),
        "privateKey=" + quoteStringArgument(os.path.join(certs, "key.pem")),
        "certKey=" + quoteStringArgument(os.path.join(certs, "cert.pem")),
    ])
    node = start_node(
        tmp_path_factory, redis, "--history", "5000",
        "--syslog", endpoint_description(ca.issue(["localhost"]), tls_port, LOCALHOST),
        "--syslog", endpoint_description(ca.issue([WRONG_HOSTNAME], ips=[]), wrong_port, LOCALHOST),
        "--logs", https,
    )
    wait_listening("127.0.0.1", *node.syslog_ports)
    wait_listening(LOCALHOST, tls_port, wrong_port, https_port)
    yield Site(node, tls_port, wrong_port, https_port, ca, os.path.join(certs, "cert.pem"))
    stop_node(node)


class Bound(NamedTuple):
    """A second node whose extra listeners are bound to tokens (--syslog-token)."""

    node: Node
    stock_port: int
    stock_channel: str
    load_port: int
    load_channel: str
    load_tls_port: int
    load_tls_channel: str


@pytest.fixture(scope="module")
def bound(tmp_path_factory, redis, site):
    # The tokens exist before the node that is bound to them starts.
    channels = [site.node.channel("app") for _ in range(3)]
    ports = [free_port() for _ in range(3)]
    tls = endpoint_description(site.ca.issue(["localhost"]), ports[2], LOCALHOST)
    args = ["--history", "5000"]
    for (_, tokens), description in zip(channels, [f"tcp:{ports[0]}:interface=127.0.0.1",
                                                   f"tcp:{ports[1]}:interface=127.0.0.1", tls]):
        args += ["--syslog-token", f"{tokens['app']}={description}"]
    node = start_node(tmp_path_factory, redis, *args)
    wait_listening("127.0.0.1", node.syslog_port, ports[0], ports[1])
    wait_listening(LOCALHOST, ports[2])
    yield Bound(node, ports[0], channels[0][0], ports[1], channels[1][0], ports[2], channels[2][0])
    stop_node(node)


@pytest.fixture(scope="module")
def syslog_ng():
    """syslog-ng and loggen unpacked into a cache directory (unpacked here when missing, outside CI)."""
    tree = SyslogNgTree.find()
    if tree is None and not IN_CI and shutil.which("apt-get"):
        try:
            tree = senders.unpack_syslog_ng(senders.writable_cache())
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            print(f"could not unpack syslog-ng: {e}", file=sys.stderr)
    need(tree, f"syslog-ng is not unpacked in any of {senders.syslog_ng_caches()}")
    missing = tree.missing_libraries()
    need(not missing, "the unpacked syslog-ng lacks libraries: " + "; ".join(missing))
    return tree


# -- rsyslog --------------------------------------------------------------------------------------
def test_rsyslog_sends_octet_counted_rfc5424_over_tcp(site, tmp_path):
    """examples/rsyslog-tcp.conf: the token in APP-NAME by template, PRI and order
    kept, MSG clean with and without STRUCTURED-DATA."""
    need_rsyslog()
    node = site.node
    channel_id, tokens = node.channel("app")
    config = render("rsyslog-tcp.conf", HOST="127.0.0.1", PORT=node.syslog_port, TOKEN=tokens["app"])
    lines = texts("rsyslog tcp", 5)
    with Rsyslogd(str(tmp_path), config) as rsyslog:
        rsyslog.log(lines[:3], "web")
        # RFC 5424 from the program, with MSGID and STRUCTURED-DATA ([timeQuality …]).
        rsyslog.log(lines[3:4], "web", "--rfc5424", "--msgid", "ID47")
        rsyslog.log(lines[4:], "worker", "-p", "local3.warning")
        got = wait_messages(node, channel_id, 5)
        assert len(got) == 5, rsyslog.output()
    assert [(m.app, m.procid, m.msg) for m in got] == \
        [("app", "web", line) for line in lines[:4]] + [("app", "worker", lines[4])]
    assert [m.pri for m in got] == [13, 13, 13, 13, 19 * 8 + 4]


def test_rsyslog_tls_verifies_the_certificate_and_its_name(site, tmp_path):
    """examples/rsyslog-tls.conf (gtls, x509/name): delivered to the listener whose
    certificate names localhost; nothing to one whose valid certificate names
    another host."""
    need_rsyslog()
    need_gtls()
    node = site.node
    channel_id, tokens = node.channel("app")
    lines = texts("rsyslog tls", 3)
    config = render("rsyslog-tls.conf", HOST="localhost", PORT=site.tls_port, TOKEN=tokens["app"],
                    CA_FILE=site.ca.ca_path)
    with Rsyslogd(str(tmp_path / "good"), config) as rsyslog:
        rsyslog.log(lines, "web")
        got = wait_messages(node, channel_id, 3)
        assert [(m.app, m.procid, m.msg) for m in got] == [("app", "web", line) for line in lines], \
            rsyslog.output()

    config = render("rsyslog-tls.conf", HOST="localhost", PORT=site.wrong_name_port,
                    TOKEN=tokens["app"], CA_FILE=site.ca.ca_path)
    with Rsyslogd(str(tmp_path / "wrong"), config) as rsyslog:
        rsyslog.log(["must not be sent"], "web")
        text = wait_output(rsyslog, "not permitted to talk to peer", "peer name not authorized")
        assert "not permitted to talk to peer" in text or "peer name not authorized" in text, text
        assert WRONG_HOSTNAME in text
    assert [m.msg for m in channel_messages(node, channel_id)] == lines


def test_stock_rsyslog_without_a_template_through_a_token_listener(bound, tmp_path):
    """examples/rsyslog-no-template.conf: rsyslog's own RFC 3164 lines, LF-framed,
    are routed by a --syslog-token listener; on an ordinary listener their TAG
    is no token, so they are counted as malformed (not logplex's format)."""
    need_rsyslog()
    node = bound.node
    lines = texts("stock rsyslog", 3)
    config = render("rsyslog-no-template.conf", HOST="127.0.0.1", PORT=bound.stock_port)
    with Rsyslogd(str(tmp_path / "bound"), config) as rsyslog:
        rsyslog.log(lines[:2], "cron")
        rsyslog.log(lines[2:], "cron", "--id=4242")
        got = wait_messages(node, bound.stock_channel, 3)
        assert len(got) == 3, rsyslog.output()
    assert [(m.app, m.procid, m.msg) for m in got] == \
        [("app", "-", lines[0]), ("app", "-", lines[1]), ("app", "4242", lines[2])]
    assert {m.pri for m in got} == {13}
    # RFC 3164 has no year or zone: the router assumes this year, in UTC.
    assert all(m.timestamp.startswith(time.strftime("%Y-", time.gmtime())) for m in got), got

    malformed = metric(node, "logplex_messages_malformed_total")
    config = render("rsyslog-no-template.conf", HOST="127.0.0.1", PORT=node.syslog_port)
    with Rsyslogd(str(tmp_path / "plain"), config) as rsyslog:
        rsyslog.log(["cron is no token"], "cron")
        counted = wait_for(lambda: metric(node, "logplex_messages_malformed_total") - malformed,
                           lambda n: n >= 1)
        assert counted == 1, rsyslog.output()


# -- syslog-ng ------------------------------------------------------------------------------------
def test_syslog_ng_syslog_driver_over_tcp(site, syslog_ng, tmp_path):
    """examples/syslog-ng-tcp.conf: the syslog() driver (octet-counted RFC 5424),
    the token put in APP-NAME by a rewrite, the program name in PROCID."""
    need_logger()
    node = site.node
    channel_id, tokens = node.channel("app")
    lines = texts("syslog-ng tcp", 4)
    config = render("syslog-ng-tcp.conf", HOST="127.0.0.1", PORT=node.syslog_port, TOKEN=tokens["app"])
    with SyslogNg(syslog_ng, str(tmp_path), config) as daemon:
        daemon.log(lines[:3], "web")
        daemon.log(lines[3:], "web", "-p", "local0.err")
        got = wait_messages(node, channel_id, 4)
        assert len(got) == 4, daemon.output()
    assert [(m.pri, m.app, m.procid, m.msg) for m in got] == \
        [(13, "app", "web", line) for line in lines[:3]] + [(16 * 8 + 3, "app", "web", lines[3])]


def test_syslog_ng_tls_verifies_the_certificate_and_its_name(site, syslog_ng, tmp_path):
    """examples/syslog-ng-tls.conf: RFC 5425 with peer-verify(required-trusted)."""
    need_logger()
    node = site.node
    channel_id, tokens = node.channel("app")
    lines = texts("syslog-ng tls", 3)
    config = render("syslog-ng-tls.conf", HOST="localhost", PORT=site.tls_port, TOKEN=tokens["app"],
                    CA_FILE=site.ca.ca_path)
    with SyslogNg(syslog_ng, str(tmp_path / "good"), config) as daemon:
        daemon.log(lines, "web")
        got = wait_messages(node, channel_id, 3)
        assert [(m.app, m.procid, m.msg) for m in got] == [("app", "web", line) for line in lines], \
            daemon.output()

    config = render("syslog-ng-tls.conf", HOST="localhost", PORT=site.wrong_name_port,
                    TOKEN=tokens["app"], CA_FILE=site.ca.ca_path)
    with SyslogNg(syslog_ng, str(tmp_path / "wrong"), config) as daemon:
        daemon.log(["must not be sent"], "web")
        text = wait_output(daemon, "does not match configured hostname")
        assert "does not match configured hostname" in text, text
        assert WRONG_HOSTNAME in text
    assert [m.msg for m in channel_messages(node, channel_id)] == lines


def test_syslog_ng_network_driver_newline_framed_from_a_file(site, syslog_ng, tmp_path):
    """examples/syslog-ng-network.conf: network() sends RFC 5424 LF-framed lines;
    program-override names the token for lines of a file that have no header."""
    node = site.node
    channel_id, tokens = node.channel("app")
    lines = texts("syslog-ng network", 4)
    log_file = tmp_path / "app.log"
    log_file.write_text(lines[0] + "\n" + lines[1] + "\n")
    config = render("syslog-ng-network.conf", HOST="127.0.0.1", PORT=node.syslog_port,
                    TOKEN=tokens["app"], LOG_FILE=log_file)
    with SyslogNg(syslog_ng, str(tmp_path), config) as daemon:
        assert len(wait_messages(node, channel_id, 2)) == 2, daemon.output()
        with open(log_file, "a") as f:
            f.write(lines[2] + "\n" + lines[3] + "\n")
        got = wait_messages(node, channel_id, 4)
        assert len(got) == 4, daemon.output()
    assert [(m.app, m.procid, m.msg) for m in got] == [("app", "-", line) for line in lines]


def test_loggen_load_through_a_token_listener(bound, syslog_ng):
    """syslog-ng's loggen: thousands of octet-counted RFC 5424 messages with a
    BOM before MSG and a program name that is no token, on a --syslog-token
    listener: every one arrives, in order, under the token's name."""
    node = bound.node
    output = run_loggen(syslog_ng, bound.load_port, LOAD, "--rate=50000", "--size=200")
    assert f"count={LOAD}," in output, output
    got = wait_for(lambda: channel_messages(node, bound.load_channel, LOAD),
                   lambda got: len(got) >= LOAD, timeout=30)
    assert len(got) == LOAD
    assert {(m.app, m.procid) for m in got} == {("app", "1234")}
    # The BOM is not part of MSG: it comes out as plain text.
    assert all(m.msg.startswith("seq: ") for m in got), got[0]
    assert [int(m.msg[5:15]) for m in got] == list(range(LOAD))


def test_loggen_over_tls_to_a_token_listener(bound, syslog_ng):
    node = bound.node
    output = run_loggen(syslog_ng, bound.load_tls_port, 500, "--use-ssl", "--rate=50000", "--size=200")
    assert "count=500," in output, output
    got = wait_for(lambda: channel_messages(node, bound.load_tls_channel, 500),
                   lambda got: len(got) >= 500, timeout=20)
    assert [int(m.msg[5:15]) for m in got] == list(range(500))
    assert {m.app for m in got} == {"app"}


# -- logger ---------------------------------------------------------------------------------------
def test_logger_octet_counted_rfc5424(site, tmp_path):
    """examples/logger.sh: one message per argument list or per line of stdin,
    with logger's [timeQuality …] STRUCTURED-DATA kept out of MSG."""
    need_logger()
    node = site.node
    channel_id, tokens = node.channel("app")
    script = tmp_path / "logger.sh"
    script.write_text(render("logger.sh", HOST="127.0.0.1", PORT=node.syslog_port, TOKEN=tokens["app"]))
    lines = texts("logger", 4)
    send_logger([lines[0]], [], script=str(script))
    send_logger([], lines[1:], script=str(script))
    got = wait_messages(node, channel_id, 4)
    assert [(m.pri, m.app, m.procid, m.msg) for m in got] == [(13, "app", "-", line) for line in lines]


def test_logger_newline_framed_and_rfc3164(site):
    """logger without --octet-count frames with LF; --rfc3164 lines are routed
    when their TAG is a token and counted as malformed when it is not."""
    need_logger()
    node = site.node
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    server = ["--server", "127.0.0.1", "--port", str(node.syslog_port), "--tcp"]
    lines = texts("logger lf", 4)
    send_logger([*server, "--rfc5424", "--tag", token], lines[:2])
    send_logger([*server, "--rfc3164", "--tag", token, "--id=77"], lines[2:])
    got = wait_messages(node, channel_id, 4)
    assert [(m.app, m.procid, m.msg) for m in got] == \
        [("app", "-", lines[0]), ("app", "-", lines[1]), ("app", "77", lines[2]), ("app", "77", lines[3])]

    malformed = metric(node, "logplex_messages_malformed_total")
    send_logger([*server, "--rfc3164", "--tag", "t.not-a-known-token"], ["lost"])
    assert wait_for(lambda: metric(node, "logplex_messages_malformed_total") - malformed) == 1


# -- log-shuttle ----------------------------------------------------------------------------------
def test_log_shuttle_over_https(site, tmp_path):
    """examples/log-shuttle.sh, with a log-shuttle work-alike on PATH: chunked
    POST /logs over HTTPS to the certificate of examples/test-certificate.sh."""
    node = site.node
    channel_id, tokens = node.channel("app")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "log-shuttle"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{senders.__file__}" log-shuttle "$@"\n')
    shim.chmod(0o755)
    script = tmp_path / "log-shuttle.sh"
    script.write_text(render("log-shuttle.sh", HOST="localhost", PORT=site.https_port, TOKEN=tokens["app"]))
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               SSL_CERT_FILE=site.self_signed)
    lines = texts("log-shuttle", 5)
    done = subprocess.run(["sh", str(script)], input="".join(line + "\n" for line in lines).encode(),
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    got = wait_messages(node, channel_id, 5)
    assert [(m.pri, m.app, m.procid, m.msg) for m in got] == [(190, "app", "web.1", line) for line in lines]


def test_log_shuttle_dialect_gzip_bearer_and_loss_headers(site):
    """Basic auth from the URL and gzip; Bearer; the losses log-shuttle reports
    (Logplex-Drop-Count, Logplex-Lost-Count) are counted."""
    node = site.node
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    dropped = 'logplex_sender_losses_total{kind="dropped"}'
    lost = 'logplex_sender_losses_total{kind="lost"}'
    before = metric(node, dropped), metric(node, lost)
    lines = texts("shuttle dialect", 4)

    by_url = LogShuttle(f"https://token:{token}@localhost:{site.https_port}/logs", "app-name-unused",
                        procid="web.2", use_gzip=True, ca_file=site.self_signed)
    by_url.dropped = 3
    assert by_url.post(lines[:2]) == 204, by_url.answers
    bearer = LogShuttle(f"https://localhost:{site.https_port}/logs", token, procid="web.3",
                        bearer=True, ca_file=site.self_signed)
    bearer.lost = 2
    assert bearer.post(lines[2:]) == 204, bearer.answers

    got = wait_messages(node, channel_id, 4)
    assert [(m.pri, m.app, m.procid, m.msg) for m in got] == \
        [(190, "app", "web.2", lines[0]), (190, "app", "web.2", lines[1]),
         (190, "app", "web.3", lines[2]), (190, "app", "web.3", lines[3])]
    assert (metric(node, dropped) - before[0], metric(node, lost) - before[1]) == (3, 2)


# -- what real senders emit, byte for byte ------------------------------------------------------
def test_what_real_senders_emit_on_one_connection(site):
    """Octet counting and LF framing mixed, CRLF, NUL trailers, a BOM before MSG,
    with and without STRUCTURED-DATA, RFC 3164: one connection, in order; what
    cannot be routed is counted."""
    node = site.node
    channel_id, tokens = node.channel("app")
    token = tokens["app"]
    now = time.gmtime()
    bsd_time = time.strftime("%b ", now) + f"{now.tm_mday:2d}" + time.strftime(" %H:%M:%S", now)
    lines = texts("raw", 7)
    data = b"".join([
        octet(syslog_message(token, "web.1", lines[0], sd='[timeQuality tzKnown="1" isSynced="0"]')),
        octet(syslog_message(token, "web.1", "\ufeff" + lines[1])),
        syslog_message(token, "web.1", lines[2]) + b"\n",
        syslog_message(token, "web.1", lines[3]) + b"\r\n",
        octet(syslog_message(token, "web.1", lines[4]) + b"\x00"),
        syslog_message(token, "web.1", lines[5]) + b"\x00\n",
        f"<14>{bsd_time} myhost {token}[77]: {lines[6]}\n".encode(),
        f"<14>{bsd_time} myhost cron[1]: tag is no token\n".encode(),
        b"neither 5424 nor 3164\n",
        b"<14>1 truncated header\n",
    ])
    unknown = metric(node, "logplex_messages_unknown_token_total")
    malformed = metric(node, "logplex_messages_malformed_total")
    send_syslog(node.syslog_port, data)
    got = wait_messages(node, channel_id, 7)
    assert [(m.app, m.procid, m.msg) for m in got] == \
        [("app", "web.1", line) for line in lines[:6]] + [("app", "77", lines[6])]
    assert wait_for(lambda: (metric(node, "logplex_messages_unknown_token_total") - unknown,
                             metric(node, "logplex_messages_malformed_total") - malformed),
                    lambda counts: counts == (0, 3)) == (0, 3)


@pytest.mark.parametrize("listener", ["syslog", "https"])
def test_tls_listeners_refuse_tls_before_1_2(site, listener):
    """Both kinds of TLS listener (--syslog ssl:, --logs ssl:) speak TLS 1.2 or newer only."""
    port = site.tls_port if listener == "syslog" else site.https_port
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection((LOCALHOST, port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            old.wrap_socket(raw, server_hostname="localhost")
    if "NO_PROTOCOLS_AVAILABLE" in str(refused.value) or "no protocols available" in str(refused.value):
        pytest.skip("this Python's OpenSSL cannot offer TLS 1.1 at all: nothing to prove")
    good = ssl.create_default_context(
        cafile=site.ca.ca_path if listener == "syslog" else site.self_signed)
    with socket.create_connection((LOCALHOST, port), timeout=5) as raw:
        with good.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
