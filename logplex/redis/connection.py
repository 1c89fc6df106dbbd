"""Redis URLs and txredisapi connections that keep values as bytes and never wait forever."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import txredisapi
from twisted.internet.defer import Deferred


class BadRedisURL(ValueError):
    pass


@attrs.frozen
class RedisAddress:
    host: str | None = None
    port: int = 6379
    path: str | None = None  # a unix socket, when set
    db: int = 0
    password: str | None = None

    def describe(self) -> str:
        # Never show the password: this string goes to logs and the admin shell.
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{where}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """redis://[:password@]host[:port][/db] or unix:///path/to/socket[?db=N]."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    if parts.scheme == "unix":
        if not parts.path:
            raise BadRedisURL(f"Redis URL {url!r} names no socket path.")
        db = parse_qs(parts.query).get("db", ["0"])[0]
        return RedisAddress(path=parts.path, db=_db(db, url), password=password)
    if parts.scheme != "redis":
        raise BadRedisURL(
            f"Redis URL {url!r} must start with redis:// or unix:// (rediss:// is not supported)."
        )
    if not parts.hostname:
        raise BadRedisURL(f"Redis URL {url!r} names no host.")
    try:
        port = parts.port or 6379
    except ValueError:
        raise BadRedisURL(f"Redis URL {url!r} has a port that is not a number.") from None
    return RedisAddress(
        host=parts.hostname, port=port, db=_db(parts.path.strip("/") or "0", url),
        password=password,
    )


def _db(text: str, url: str) -> int:
    if not text.isdigit():
        raise BadRedisURL(f"Redis URL {url!r} has a database number that is not a number.")
    return int(text)


def connect(address: RedisAddress, *, poolsize: int = 2, reply_timeout: float = 5.0):
    """A lazy, reconnecting pool; commands answer within reply_timeout or fail."""
    common = dict(
        dbid=address.db,
        poolsize=poolsize,
        reconnect=True,
        charset=None,
        convertNumbers=False,
        password=address.password,
        replyTimeout=reply_timeout,
    )
    if address.path:
        return txredisapi.lazyUnixConnectionPool(address.path, **common)
    return txredisapi.lazyConnectionPool(
        address.host, address.port, connectTimeout=reply_timeout, **common
    )


def bounded(d: Deferred, seconds: float, reactor) -> Deferred:
    """txredisapi waits for a connection without limit while Redis is down: bound it."""
    return d.addTimeout(seconds, reactor)
