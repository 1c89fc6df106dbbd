"""Redis URLs, the connection handshake and the password file, without a Redis (logplex/redis/connection.py)."""

from __future__ import annotations

import string
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from logplex.metrics import Metrics
from logplex.redis import connection
from tests.helpers import captured_log
from logplex.redis.connection import (
    BadRedisURL,
    RedisAddress,
    RedisClusterRefused,
    RedisSecrets,
    check_redis_url,
    parse_redis_url,
    refuse_cluster_mode,
)


# -- the URL forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6380/2", RedisAddress(host="127.0.0.1", port=6380, db=2)),
    ("redis://:p%40ss@h", RedisAddress(host="h", password="p@ss")),
    ("redis://app:secret@h:7000", RedisAddress(host="h", port=7000, username="app", password="secret")),
    ("redis://app@h", RedisAddress(host="h", username="app")),
    ("redis://[::1]:7000/1", RedisAddress(host="::1", port=7000, db=1)),
    ("rediss://h", RedisAddress(host="h", tls=True)),
    ("rediss://h:6390/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
     RedisAddress(host="h", port=6390, tls=True, ca_certs="/ca.pem", certfile="/c.pem", keyfile="/k.pem")),
    ("rediss://h?ssl_cert_reqs=none", RedisAddress(host="h", tls=True, verify=False)),
    ("redis+sentinel://a:26380,b,[::1]:5/primary/3?sentinel_password=s%26p",
     RedisAddress(sentinels=(("a", 26380), ("b", 26379), ("::1", 5)), service="primary", db=3,
                  sentinel_password="s&p")),
    ("rediss+sentinel://u:p@a:1/svc", RedisAddress(sentinels=(("a", 1),), service="svc", tls=True,
                                                  username="u", password="p")),
    ("unix:///run/redis.sock?db=4", RedisAddress(path="/run/redis.sock", db=4)),
    ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
])
def test_each_url_form(url, expected):
    address = parse_redis_url(url)
    assert address == expected
    assert (address.password, address.sentinel_password) == (expected.password, expected.sentinel_password)


@pytest.mark.parametrize("url, says", [
    ("http://h", "must have one of the forms"),
    ("h:6379", "must have one of the forms"),
    ("redis://", "names no host"),
    ("redis://h:0", "port that is not a number from 1 to 65535"),
    ("redis://h:99999", "port that is not a number from 1 to 65535"),
    ("redis://h:", "port that is not a number"),
    ("redis://h/one", "database number that is not a whole number"),
    ("redis://a,b", "only redis+sentinel:// takes a list"),
    ("redis://h?ssl_ca_certs=/x", "does not take"),
    ("rediss://h?ssl_ca_cert=/x", "'ssl_ca_cert' that rediss:// does not take"),
    ("rediss://h?ssl_certfile=/c", "a client certificate needs both"),
    ("rediss://h?ssl_cert_reqs=optional", "use required (the default) or none"),
    ("rediss://h?ssl_ca_certs=", "without a path"),
    ("rediss://h?ssl_cert_reqs=none&ssl_cert_reqs=none", "twice"),
    ("redis+sentinel://a:1", "names no Sentinel service"),
    ("redis+sentinel://a:1,,b:2/svc", "names no host"),
    ("unix://relative.sock", "names no socket path"),
    ("unix:///s.sock?db=x", "database number"),
    ("redis://[::1/0", "without its closing ]"),
])
def test_a_wrong_url_is_one_sentence_saying_what_is_wrong(url, says):
    with pytest.raises(BadRedisURL) as caught:
        parse_redis_url(url)
    assert says in str(caught.value)
    assert str(caught.value).endswith(".")


def test_tls_files_that_cannot_be_read_fail_at_start(tmp_path):
    with pytest.raises(BadRedisURL, match="No such file or directory"):
        check_redis_url(f"rediss://h?ssl_ca_certs={tmp_path}/missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate")
    with pytest.raises(BadRedisURL, match="holds no PEM certificate"):
        check_redis_url(f"rediss://h?ssl_ca_certs={empty}")


# -- hypothesis: malformed URLs, and secrets never shown -----------------------------------------
SECRET = "Zq9SECRETx7"
_printable = st.text(alphabet=string.printable + "é€", max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://", "unix://", ""]),
       _printable, _printable, _printable)
def test_any_text_parses_or_is_refused_with_bad_redis_url(scheme, a, b, c):
    url = f"{scheme}{a}:{SECRET}@{b}/{c}"
    try:
        address = parse_redis_url(url)
    except BadRedisURL as e:
        assert SECRET not in str(e)
    else:
        assert SECRET not in address.describe() and SECRET not in repr(address)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(alphabet=string.ascii_letters + "-_", max_size=12),
       st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65535),
       st.integers(0, 15), st.booleans())
def test_a_well_formed_url_round_trips(password, user, host, port, db, tls):
    url = f"{'rediss' if tls else 'redis'}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"
    address = parse_redis_url(url)
    assert (address.username or "", address.password, address.host, address.port, address.db, address.tls) == (
        user, password, host, port, db, tls)
    if len(password) >= 4:
        assert password not in address.describe().split("@")[-1]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "!$&'()*+;=._~-", min_size=3, max_size=20))
def test_errors_never_show_a_password_or_sentinel_password(text):
    password = "ZQX" + text  # nothing else in the URLs looks like it
    for url in (f"redis://u:{password}@h:notaport/0", f"redis+sentinel://:{password}@a:1",
                f"rediss+sentinel://a:1/svc/x?sentinel_password={password}"):
        with pytest.raises(BadRedisURL) as caught:
            parse_redis_url(url)
        assert password not in str(caught.value)


# -- the handshake -------------------------------------------------------------------------------
def handshake(url: str, secrets: RedisSecrets | None = None, protocol=connection._Protocol):
    """A protocol of ours on a StringTransport, its handshake started."""
    clock = Clock()
    secrets = secrets or RedisSecrets(metrics=Metrics(), clock=clock)
    address = parse_redis_url(url, secrets=secrets)
    p = protocol(charset=None, convertNumbers=False)
    # txredisapi reads what follows a bulk reply one reactor turn later.
    p.callLater = clock.callLater
    p.factory = SimpleNamespace(redis_address=address, redis_reactor=clock, handshake_timeout=5.0)
    transport = StringTransport()
    p.makeConnection(transport)
    ready = p.whenConnected()
    return p, transport, ready, secrets, clock


def feed(p, clock: Clock, data: bytes) -> None:
    p.dataReceived(data)
    for _ in range(20):
        clock.advance(0)


def sent(transport: StringTransport) -> bytes:
    value = transport.value()
    transport.clear()
    return value


def test_an_acl_user_authenticates_with_its_name():
    p, transport, ready, _, _ = handshake("redis://app:pw@h/2")
    assert sent(transport) == b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$2\r\npw\r\n"
    p.dataReceived(b"+OK\r\n")
    assert sent(transport) == b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
    p.dataReceived(b"+OK\r\n")
    assert ready.called and not transport.disconnecting


def test_a_refused_password_closes_the_connection_and_counts_but_never_stops_retrying():
    p, transport, ready, secrets, _ = handshake("redis://:wrong@h")
    p.dataReceived(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    assert transport.disconnecting and not ready.called
    assert secrets.metrics.get("logplex_redis_auth_failures_total") == 1
    # txredisapi would have called factory.stopTrying(): the SimpleNamespace factory has none.


def test_a_server_that_wants_a_password_the_url_lacks_is_an_auth_failure():
    p, transport, ready, secrets, _ = handshake("redis://h")
    assert sent(transport) == b"*1\r\n$4\r\nPING\r\n"
    p.dataReceived(b"-NOAUTH Authentication required.\r\n")
    assert transport.disconnecting and secrets.metrics.get("logplex_redis_auth_failures_total") == 1


def test_a_handshake_without_an_answer_times_out():
    p, transport, ready, _, clock = handshake("redis://h")
    clock.advance(5.0)
    assert transport.disconnecting and not ready.called


def test_the_password_file_is_read_on_every_connection(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("first\n")
    secrets = RedisSecrets(str(secret), Metrics(), Clock())
    _, transport, _, _, _ = handshake("redis://app@h", secrets)
    assert b"first" in sent(transport)
    secret.write_text("second")
    _, transport, _, _, _ = handshake("redis://app@h", secrets)
    assert b"second" in sent(transport)
    # A password in the URL wins over the file.
    _, transport, _, _, _ = handshake("redis://app:own@h", secrets)
    assert b"own" in sent(transport)


def test_an_unreadable_password_file_keeps_the_last_password(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("kept")
    secrets = RedisSecrets(str(secret), Metrics(), Clock())
    secret.unlink()
    assert secrets.reload() is False
    assert secrets.password_for(parse_redis_url("redis://h")) == "kept"


def test_auth_failures_are_logged_at_most_once_per_interval():
    clock = Clock()
    secrets = RedisSecrets(metrics=Metrics(), clock=clock, log_every=30)
    address = parse_redis_url("redis://:pw@h")
    with captured_log() as events:
        for _ in range(10):
            secrets.auth_failed(address, "WRONGPASS")
            clock.advance(1)
        clock.advance(30)
        secrets.auth_failed(address, "WRONGPASS")
    failed = [e for e in events if "redis_auth_failed" in e.get("log_format", "")]
    assert len(failed) == 2 and failed[1]["suppressed"] == 9
    assert secrets.metrics.get("logplex_redis_auth_failures_total") == 11


def test_behind_sentinel_a_replica_is_left_before_any_command():
    p, transport, ready, _, clock = handshake("redis+sentinel://s:1/svc")
    feed(p, clock, b"+PONG\r\n")
    assert sent(transport).endswith(b"$4\r\nROLE\r\n")
    feed(p, clock, b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:10\r\n")
    assert transport.disconnecting and not ready.called


def test_behind_sentinel_the_primary_is_used():
    p, transport, ready, _, clock = handshake("redis+sentinel://s:1/svc")
    feed(p, clock, b"+PONG\r\n")
    feed(p, clock, b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
    assert ready.called and not transport.disconnecting


def test_behind_sentinel_a_demoted_primary_is_left_at_its_first_readonly():
    p, transport, ready, _, clock = handshake("redis+sentinel://s:1/svc")
    feed(p, clock, b"+PONG\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n")
    errors = []
    p.execute_command("LPUSH", b"k", b"v").addErrback(errors.append)
    feed(p, clock, b"-READONLY You can't write against a read only replica.\r\n")
    assert transport.disconnecting
    assert "READONLY" in errors[0].getErrorMessage()


# -- Redis Cluster -------------------------------------------------------------------------------
class _InfoPool:
    def __init__(self, reply):
        self.reply = reply

    def execute_command(self, *args):
        if isinstance(self.reply, Exception):
            return defer.fail(self.reply)
        return defer.succeed(self.reply)


def test_a_cluster_mode_redis_is_refused():
    address = parse_redis_url("redis://h")
    d = defer.ensureDeferred(refuse_cluster_mode(_InfoPool(b"# Cluster\r\ncluster_enabled:1\r\n"), address, 1, Clock()))
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(RedisClusterRefused)
    assert "runs in cluster mode (cluster_enabled:1)" in failure[0].getErrorMessage()


@pytest.mark.parametrize("reply", [b"# Cluster\r\ncluster_enabled:0\r\n",
                                   connection.txredisapi.ResponseError("NOPERM this user has no permissions")])
def test_a_standalone_redis_or_one_that_hides_info_is_accepted(reply):
    d = defer.ensureDeferred(refuse_cluster_mode(_InfoPool(reply), parse_redis_url("redis://h"), 1, Clock()))
    results = []
    d.addBoth(results.append)
    assert results == [None]


# -- Sentinel: which primary -------------------------------------------------------------------
class _Answers(connection._PrimaryWatch):
    """A watch whose sentinels answer from a table: (config epoch, primary), None, or an error."""

    def __init__(self, answers, clock):
        address = parse_redis_url("redis+sentinel://a:1,b:2,c:3/svc")
        super().__init__(clock, address, timeout=1.0)
        self.answers = answers

    async def _ask(self, host, port):
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_sentinel_with_the_newest_configuration_is_believed():
    clock = Clock()
    watch = _Answers({"a": (3, ("old", 1)), "b": (4, ("new", 2)), "c": ConnectionRefusedError()}, clock)
    d = defer.ensureDeferred(watch.discover())
    assert d.result == ("new", 2)


def test_a_replica_being_promoted_is_the_primary_until_the_sentinels_confirm_or_time_out():
    clock = Clock()
    watch = _Answers({"a": (3, ("old", 1)), "b": (3, ("old", 1)), "c": (3, ("old", 1))}, clock)
    pool = SimpleNamespace(pool=[], stopped=False)
    endpoint = SimpleNamespace(factory=pool, seen=[], primary_is=lambda p: endpoint.seen.append(p))
    watch.endpoints.append(endpoint)
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6379 @ other 10.0.0.1 6379")
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)  # another service's
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6380 @ svc 10.0.0.1 6379")
    assert endpoint.seen == [("10.0.0.2", 6380)]
    assert defer.ensureDeferred(watch.discover()).result == ("10.0.0.2", 6380)
    # An aborted failover: after promotion_wait the sentinels' answer counts again.
    clock.advance(watch.promotion_wait)
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)
    watch.promoting(b"slave 10.0.0.2:6379 10.0.0.2 6380 @ svc 10.0.0.1 6379")
    watch.switched(b"svc 10.0.0.1 6379 10.0.0.2 6380")
    assert defer.ensureDeferred(watch.discover()).result == ("old", 1)  # as the table says


def test_no_sentinel_naming_a_primary_is_an_error_that_says_why():
    clock = Clock()
    watch = _Answers({"a": None, "b": ConnectionRefusedError("refused"), "c": None}, clock)
    failures = []
    defer.ensureDeferred(watch.discover()).addErrback(failures.append)
    assert failures[0].check(connection.txredisapi.MasterNotFoundError)
    assert "a:1: no healthy primary" in failures[0].getErrorMessage()


# -- the command line ----------------------------------------------------------------------------
def options(*argv: str):
    from logplex.tap import Options

    o = Options()
    o.parseOptions(list(argv))
    return o


def test_the_command_line_refuses_a_wrong_redis_url_in_one_sentence():
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match=r"^Redis URL 'rediss://:\*\*\*@h/0\?ssl_cert_reqs=maybe' has "):
        options("--config-redis", "rediss://:pw@h/0?ssl_cert_reqs=maybe")
    with pytest.raises(UsageError, match="redis://h:notaport/0. has a port"):
        options("--shard-redis", "redis://h/0,redis://h:notaport/0")


def test_an_acl_user_without_a_password_needs_the_password_file(tmp_path):
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="names user 'app' but no password"):
        options("--config-redis", "redis://app@h/0")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    parsed = options("--config-redis", "redis://app@h/0", "--redis-password-file", str(secret))
    assert parsed["redis-password-file"] == str(secret)


def test_a_password_file_that_cannot_be_used_is_refused_at_start(tmp_path):
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="cannot be read"):
        options("--config-redis", "redis://h", "--redis-password-file", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        options("--config-redis", "redis://h", "--redis-password-file", str(empty))
    with pytest.raises(UsageError, match="needs --config-redis"):
        options("--redis-password-file", str(empty))
