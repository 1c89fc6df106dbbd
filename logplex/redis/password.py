"""RedisSecrets: the password file behind Redis URLs without a password, and what a refused password does."""

from __future__ import annotations

from twisted.logger import Logger

from logplex.redis.address import PasswordSource, RedisAddress, error_reason

log = Logger()


class RedisSecrets:
    """Where a Redis password comes from when its URL has none, and what a refused one does.

    The password file is read again on every connection attempt and on SIGHUP
    (reload), so a rotated secret takes effect without a restart.
    """

    def __init__(self, password_file: str | None = None, metrics=None, clock=None,
                 log_every: float = 30.0) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.password_file = password_file
        self.metrics = metrics
        self.clock = clock
        self.log_every = log_every
        self._password: str | None = None
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._failing: set[str] = set()
        if password_file:
            self.reload()

    def reload(self) -> bool:
        """Read the password file again; False (and the previous password kept) if it cannot be read."""
        if not self.password_file:
            return True
        try:
            with open(self.password_file, encoding="utf-8") as f:
                self._password = f.read().strip() or None
        except (OSError, UnicodeDecodeError) as e:
            log.warn("redis_password_file_unreadable path={path} reason={reason}",
                     path=self.password_file, reason=error_reason(e))
            return False
        return True

    def password_for(self, address: RedisAddress) -> str | None:
        if address.password is not None:
            return address.password
        self.reload()
        return self._password

    def auth_failed(self, address: RedisAddress, reason: str) -> None:
        where = address.describe()
        if self.metrics is not None:
            self.metrics.inc("logplex_redis_auth_failures_total")
        self._failing.add(where)
        suppressed = self._limit("auth " + where)
        if suppressed is not None:
            log.error(
                "redis_auth_failed address={address} reason={reason} action=retrying "
                "suppressed={suppressed} hint={hint}",
                address=where, reason=reason, suppressed=suppressed,
                hint="fix the password in the URL or --redis-password-file (then SIGHUP)")

    def handshake_failed(self, address: RedisAddress, reason: str) -> None:
        """A connection lost before it was ready (TLS refused, a replica, an error): logged, limited."""
        where = address.describe()
        suppressed = self._limit(f"handshake {where} {reason}")
        if suppressed is not None:
            log.warn("redis_handshake_failed address={address} reason={reason} action=retrying "
                     "suppressed={suppressed}", address=where, reason=reason, suppressed=suppressed)

    def _limit(self, key: str) -> int | None:
        """None to stay silent, else how many of these were not logged since the last one.

        One line per kind and address per log_every seconds: a node retries every
        couple of seconds per connection, for as long as the cause lasts.
        """
        now = self.clock.seconds()
        if now - self._last_log.get(key, float("-inf")) < self.log_every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last_log[key] = now
        return self._suppressed.pop(key, 0)

    def auth_succeeded(self, address: RedisAddress) -> None:
        where = address.describe()
        if where in self._failing:
            self._failing.discard(where)
            self._last_log.pop("auth " + where, None)
            self._suppressed.pop("auth " + where, None)
            log.info("redis_auth_recovered address={address}", address=where)


_DEFAULT_SECRETS: RedisSecrets | None = None


def secrets_of(address: RedisAddress) -> PasswordSource:
    """The address's password source, else one shared by the addresses that have none (no file)."""
    global _DEFAULT_SECRETS
    if address.secrets is not None:
        return address.secrets
    if _DEFAULT_SECRETS is None:
        _DEFAULT_SECRETS = RedisSecrets()
    return _DEFAULT_SECRETS
