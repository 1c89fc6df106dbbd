"""The connection handshake: AUTH, SELECT and ROLE, without a Redis (logplex/redis/handshake.py)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from logplex.metrics import Metrics
from logplex.redis import connection
from logplex.redis.address import parse_redis_url
from logplex.redis.password import RedisSecrets

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
