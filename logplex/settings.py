"""A node's settings: the parsed command line, with SPEC.md's defaults."""

from __future__ import annotations

import attrs


@attrs.frozen
class Settings:
    api: str = "tcp:8001"
    logs: str = "tcp:8601"
    syslog: tuple[str, ...] = ("tcp:6001",)
    syslog_token: tuple[tuple[str, str], ...] = ()
    config_redis: str | None = None
    shard_redis: tuple[str, ...] = ()
    data_dir: str = "./logplex-data"
    node_name: str = "logplex"
    api_url: str | None = None
    auth: str | None = None
    history: int = 1500
    backlog_expiry: int = 7 * 86400
    max_drains: int = 6
    session_expiry: int = 360
    drain_buffer: int = 1024
    http_drain_target_bytes: int = 100 * 1024
    http_drain_max_bytes: int = 1024 * 1024
    tcp_drain_target_bytes: int = 64 * 1024
    http_drain_linger: float = 0.25
    http_drain_post_rate: int = 1000
    http_drain_timeout: float = 30.0
    drain_backoff_max: float = 30.0
    drain_spool_bytes: int = 64 * 1024 * 1024
    drain_spool_total_bytes: int = 1024 * 1024 * 1024
    drain_spool_age: float = 86400.0
    drain_pushback: float = 0.1
    drain_ca_file: str | None = None
    syslog_drain_idle: float = 300.0
    tail_buffer: int = 1024
    tail_buffer_bytes: int = 1024 * 1024
    max_frame: int = 64 * 1024
    max_body: int = 10 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_json: int = 64 * 1024
    max_connections: int = 10_000
    syslog_idle_timeout: float = 3600.0
    frame_timeout: float = 30.0
    http_header_timeout: float = 10.0
    http_request_timeout: float = 60.0
    http_idle_timeout: float = 120.0
    login_failures: int = 10
    flush_interval: float = 0.05
    redis_timeout: float = 5.0
    redis_password_file: str | None = None
    namespace: str = "lp"
    heartbeat: float = 5.0
    reconcile_interval: float = 30.0
    spool_adopt_after: float = 60.0
    stop_grace: float = 5.0
    manhole: str | None = None
    manhole_keys: str | None = None
    allow_private_drains: bool = False
    metrics_auth: bool = False

    @classmethod
    def from_options(cls, options) -> Settings:
        values = {}
        for field in attrs.fields(cls):
            key = field.name.replace("_", "-")
            if key in options:
                value = options[key]
                if isinstance(value, list):
                    value = tuple(value)
                values[field.name] = value
        values["allow_private_drains"] = bool(options["allow-private-drains"])
        values["metrics_auth"] = bool(options["metrics-auth"])
        return cls(**values)
