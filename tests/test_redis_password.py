"""The password file and refused passwords, without a Redis (logplex/redis/password.py)."""

from __future__ import annotations

from twisted.internet.task import Clock

from logplex.metrics import Metrics
from logplex.redis.address import parse_redis_url
from logplex.redis.password import RedisSecrets
from tests.helpers import captured_log

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
