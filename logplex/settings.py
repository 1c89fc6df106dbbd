"""A node's settings: one frozen record per wing, built once from the `twistd logplex` options.

Every field names the option it comes from (`option` in its metadata) and
holds that option's default: the command line (logplex.tap) reads its
defaults from here, so each is written once. A constructor given a record
takes its values from it and repeats none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

# Two wings read --redis-timeout: the Redis connections and the drains' spools.
REDIS_TIMEOUT = 5.0


def _option(name: str, default: Any, converter=None):
    """A record field read from the option --name, with that option's default."""
    return attrs.field(default=default, metadata={"option": name}, converter=converter)


def _strings(value) -> tuple[str, ...]:
    return tuple(value)


def _pairs(value) -> tuple[tuple[str, str], ...]:
    # A worker's settings come through JSON, where a pair is a list.
    return tuple((a, b) for a, b in value)


@attrs.frozen
class NodeSettings:
    """This node in its cluster: its name, its data, its heartbeat and how it stops."""

    name: str = _option("node-name", "logplex")
    data_dir: str = _option("data-dir", "./logplex-data")
    heartbeat: float = _option("heartbeat", 5.0)
    reconcile_interval: float = _option("reconcile-interval", 30.0)
    stop_grace: float = _option("stop-grace", 5.0)


@attrs.frozen
class ListenSettings:
    """The listeners (endpoint descriptions) and the limits every connection to them lives under."""

    api: str = _option("api", "tcp:8001")
    logs: str = _option("logs", "tcp:8601")
    syslog: tuple[str, ...] = _option("syslog", ("tcp:6001",), _strings)
    syslog_token: tuple[tuple[str, str], ...] = _option("syslog-token", (), _pairs)
    max_connections: int = _option("max-connections", 10_000)
    max_frame: int = _option("max-frame", 64 * 1024)
    max_body: int = _option("max-body", 10 * 1024 * 1024)
    max_header_bytes: int = _option("max-header-bytes", 16 * 1024)
    syslog_idle_timeout: float = _option("syslog-idle-timeout", 3600.0)
    frame_timeout: float = _option("frame-timeout", 30.0)
    http_header_timeout: float = _option("http-header-timeout", 10.0)
    http_request_timeout: float = _option("http-request-timeout", 60.0)
    http_idle_timeout: float = _option("http-idle-timeout", 120.0)
    login_failures: int = _option("login-failures", 10)

    def all(self) -> list[tuple[str, str]]:
        """(kind, endpoint description) of every listener of logs and the API, in a fixed order."""
        out = [("api", self.api), ("logs", self.logs)]
        out += [("syslog", d) for d in self.syslog]
        out += [("syslog-token", d) for _, d in self.syslog_token]
        return out


@attrs.frozen
class RedisSettings:
    """Where the config and shard Redis are, and how the node talks to them."""

    config: str | None = _option("config-redis", None)  # None: an embedded redis-server
    shards: tuple[str, ...] = _option("shard-redis", (), _strings)
    namespace: str = _option("namespace", "lp")
    timeout: float = _option("redis-timeout", REDIS_TIMEOUT)
    password_file: str | None = _option("redis-password-file", None)


@attrs.frozen
class BacklogSettings:
    """Each channel's backlog: how long, how long kept, how often written."""

    history: int = _option("history", 1500)
    expiry: int = _option("backlog-expiry", 7 * 86400)
    flush_interval: float = _option("flush-interval", 0.05)
    flush_linger: float = _option("flush-linger", 0.5)


@attrs.frozen
class DrainSettings:
    """The drains: buffers, batches, retries, spools and pushback."""

    buffer: int = _option("drain-buffer", 1024)
    http_target_bytes: int = _option("http-drain-target-bytes", 100 * 1024)
    http_max_bytes: int = _option("http-drain-max-bytes", 1024 * 1024)
    tcp_target_bytes: int = _option("tcp-drain-target-bytes", 64 * 1024)
    http_linger: float = _option("http-drain-linger", 0.25)
    http_post_rate: int = _option("http-drain-post-rate", 1000)
    tcp_linger: float = 0.05  # no option: a syslog drain's writes are cheap
    http_timeout: float = _option("http-drain-timeout", 30.0)
    backoff_max: float = _option("drain-backoff-max", 30.0)
    spool_bytes: int = _option("drain-spool-bytes", 64 * 1024 * 1024)
    spool_total_bytes: int = _option("drain-spool-total-bytes", 1024 * 1024 * 1024)
    spool_age: float = _option("drain-spool-age", 86400.0)
    syslog_idle: float = _option("syslog-drain-idle", 300.0)
    redis_timeout: float = _option("redis-timeout", REDIS_TIMEOUT)
    pushback: float = _option("drain-pushback", 0.1)
    adopt_after: float = _option("spool-adopt-after", 60.0)
    ca_file: str | None = _option("drain-ca-file", None)
    allow_private: bool = _option("allow-private-drains", False, bool)


@attrs.frozen
class TailSettings:
    """What a slow tail may hold before L11 drops, and what one read may answer with."""

    buffer: int = _option("tail-buffer", 1024)
    buffer_bytes: int = _option("tail-buffer-bytes", 1024 * 1024)


@attrs.frozen
class ApiSettings:
    """The management API: its public URL, its credential at start, its limits."""

    url: str | None = _option("api-url", None)  # None: from the API listener's address
    auth: str | None = _option("auth", None)
    max_drains: int = _option("max-drains", 6)
    session_expiry: int = _option("session-expiry", 360)
    max_json: int = _option("max-json", 64 * 1024)
    metrics_auth: bool = _option("metrics-auth", False, bool)


@attrs.frozen
class AdminSettings:
    """The admin shell (SSH manhole): off unless an endpoint is given."""

    manhole: str | None = _option("manhole", None)
    manhole_keys: str | None = _option("manhole-keys", None)


@attrs.frozen
class Settings:
    """Everything a node runs with, wing by wing."""

    node: NodeSettings = attrs.field(factory=NodeSettings)
    listen: ListenSettings = attrs.field(factory=ListenSettings)
    redis: RedisSettings = attrs.field(factory=RedisSettings)
    backlog: BacklogSettings = attrs.field(factory=BacklogSettings)
    drains: DrainSettings = attrs.field(factory=DrainSettings)
    tails: TailSettings = attrs.field(factory=TailSettings)
    api: ApiSettings = attrs.field(factory=ApiSettings)
    admin: AdminSettings = attrs.field(factory=AdminSettings)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        """The settings the parsed options (or a mapping of option name to value) give."""
        wings = {}
        for wing in attrs.fields(cls):
            values = {field.name: options[name] for field, name in _options_of(wing.type)
                      if name in options}
            wings[wing.name] = wing.type(**values)
        return cls(**wings)

    def options(self) -> dict[str, Any]:
        """option name -> value: what from_options reads back (a --workers master hands it down as JSON)."""
        out = {}
        for wing in attrs.fields(type(self)):
            record = getattr(self, wing.name)
            for field, name in _options_of(wing.type):
                # --redis-timeout feeds two wings: the redis wing's is the option's.
                out.setdefault(name, getattr(record, field.name))
        return out

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """option name -> its default, for the command line."""
        return cls().options()


def _options_of(record: type) -> list[tuple[attrs.Attribute, str]]:
    return [(field, field.metadata["option"]) for field in attrs.fields(record) if "option" in field.metadata]


# The wings' types, not their names as strings: from_options makes each wing from its type.
attrs.resolve_types(Settings)
