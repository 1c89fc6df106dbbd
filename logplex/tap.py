"""The `twistd logplex` command line: options (with environment fallbacks) and makeService."""

from __future__ import annotations

import os
import socket

from twisted.logger import Logger
from twisted.python import usage

from logplex import __version__
from logplex.settings import Settings

ENV = {
    "config-redis": "LOGPLEX_CONFIG_REDIS_URL",
    "shard-redis": "LOGPLEX_SHARD_URLS",
    "auth": "LOGPLEX_AUTH",
}


log = Logger()

# One source for every default: option name -> what a node runs with when not given it.
DEFAULT = Settings.defaults()


def _checked(name: str, convert, kind: str, ok, rule: str):
    """A coerce function for usage.Options: a clear UsageError for --name when the value is wrong."""
    def check(value: str):
        try:
            number = convert(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be {kind}, not {value!r}.") from None
        if not ok(number):  # written so that NaN fails too
            raise usage.UsageError(f"--{name} must be {rule}.")
        return number

    return check


def _positive_int(name):
    return _checked(name, int, "a whole number", lambda n: n > 0, "greater than zero")


def _positive_float(name):
    return _checked(name, float, "a number", lambda n: n > 0, "greater than zero")


def _non_negative_float(name):
    return _checked(name, float, "a number", lambda n: 0 <= n < float("inf"), "zero or more")


def _namespace(value: str) -> str:
    """A coerce function for --namespace: a UsageError that says what a namespace may hold."""
    from logplex.redis.keys import BadNamespace, check_namespace

    try:
        return check_namespace(value)
    except BadNamespace as e:
        raise usage.UsageError(f"--namespace: {e}") from None


def _check_manhole(description: str) -> None:
    """A UsageError unless --manhole names a tcp:, tcp6: or unix: endpoint that parses."""
    from twisted.internet.endpoints import serverFromString

    from logplex.admin.manhole import MANHOLE_TYPES, loopback_only
    from logplex.listen import description_fields, normalised

    kind, _ = description_fields(description)
    if kind not in MANHOLE_TYPES:
        raise usage.UsageError(
            f"--manhole takes a tcp:, tcp6: or unix: endpoint (e.g. tcp:2222), not {kind}:.")
    try:
        # Parsed only, not listened on: a reactor is not needed yet.
        serverFromString(None, normalised(loopback_only(description)))
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(
            f"--manhole {description!r} is not an endpoint description ({e}). Write e.g. tcp:2222 or "
            "tcp6:2222:interface=\\:\\:1 (a colon inside a value is escaped with a backslash).") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a logplex node: syslog over TCP/TLS and HTTP in, channel backlogs in "
        "Redis, live tails and drains out, and the management API. With no "
        "--config-redis a node runs its own Redis in --data-dir."
    )

    optFlags = [
        ["allow-private-drains", None,
         "Allow drains to addresses that are not globally routable: loopback, private, link-local, shared (100.64/10) and reserved ones (tests, closed networks)."],
        ["metrics-auth", None, "GET /metrics asks for a full_api credential like the API."],
    ]

    optParameters = [
        ["api", None, DEFAULT["api"], "Management API listener (Twisted endpoint description)."],
        ["logs", None, DEFAULT["logs"], "HTTP log input listener for POST /logs (endpoint description)."],
        ["config-redis", None, None,
         "Config Redis URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://… (TLS), "
         "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB] or unix:///PATH "
         "(env LOGPLEX_CONFIG_REDIS_URL). Default: an embedded redis-server."],
        ["data-dir", None, DEFAULT["data-dir"], "Where the embedded Redis keeps its data."],
        ["node-name", None, socket.gethostname(), "This node's name in the cluster."],
        ["api-url", None, None,
         "Public base URL of the API, used in session URLs. Default: from --api."],
        ["auth", None, None,
         "USER:PASSWORD of a credential (full_api, any_channel) ensured at start (env LOGPLEX_AUTH)."],
        ["history", None, DEFAULT["history"], "Lines kept in each channel's backlog.", _positive_int("history")],
        ["backlog-expiry", None, DEFAULT["backlog-expiry"], "Seconds an idle channel's backlog is kept.",
         _positive_int("backlog-expiry")],
        ["max-drains", None, DEFAULT["max-drains"], "Drains allowed per channel.", _positive_int("max-drains")],
        ["session-expiry", None, DEFAULT["session-expiry"], "Seconds a session URL can be used.",
         _positive_int("session-expiry")],
        ["drain-buffer", None, DEFAULT["drain-buffer"], "Messages held in memory per drain.",
         _positive_int("drain-buffer")],
        ["http-drain-target-bytes", None, DEFAULT["http-drain-target-bytes"], "Target size of an HTTP drain batch.",
         _positive_int("http-drain-target-bytes")],
        ["http-drain-max-bytes", None, DEFAULT["http-drain-max-bytes"],
         "Largest HTTP drain batch: batches grow to it while a drain is backed up.", _positive_int("http-drain-max-bytes")],
        ["tcp-drain-target-bytes", None, DEFAULT["tcp-drain-target-bytes"], "Target size of a syslog drain write.",
         _positive_int("tcp-drain-target-bytes")],
        ["http-drain-linger", None, DEFAULT["http-drain-linger"],
         "Seconds an HTTP drain waits to fill a batch before sending a smaller one.",
         _positive_float("http-drain-linger")],
        ["http-drain-post-rate", None, DEFAULT["http-drain-post-rate"],
         "Lingered POSTs (batches under the target size) a second a node's HTTP drains aim at together; "
         "past it their linger grows, up to 5 s.",
         _positive_int("http-drain-post-rate")],
        ["http-drain-timeout", None, DEFAULT["http-drain-timeout"], "Seconds an HTTP drain waits for an answer.",
         _positive_float("http-drain-timeout")],
        ["drain-backoff-max", None, DEFAULT["drain-backoff-max"], "Longest wait between retries of a failing drain, seconds.",
         _positive_float("drain-backoff-max")],
        ["drain-spool-bytes", None, DEFAULT["drain-spool-bytes"],
         "Bytes a drain may spool in Redis (per node) before the oldest are dropped.",
         _positive_int("drain-spool-bytes")],
        ["drain-spool-total-bytes", None, DEFAULT["drain-spool-total-bytes"],
         "Bytes all of this node's drain spools may take together; past it, a drain that spools "
         "more drops its own oldest.",
         _positive_int("drain-spool-total-bytes")],
        ["drain-spool-age", None, DEFAULT["drain-spool-age"], "Seconds a spooled message may wait before it is dropped.",
         _positive_float("drain-spool-age")],
        ["drain-pushback", None, DEFAULT["drain-pushback"],
         "Hold back senders while a drain of their channel has a full buffer and a largest batch "
         "waiting, and its endpoint answers within this many seconds (the node, not the "
         "endpoint, is behind); 0: never.",
         _non_negative_float("drain-pushback")],
        ["drain-ca-file", None, None,
         "PEM bundle of CAs to verify drain endpoints with, instead of the system's."],
        ["syslog-drain-idle", None, DEFAULT["syslog-drain-idle"], "Seconds before an idle syslog drain connection is closed.",
         _positive_float("syslog-drain-idle")],
        ["tail-buffer", None, DEFAULT["tail-buffer"], "Lines held for a slow tail before L11 drops.",
         _positive_int("tail-buffer")],
        ["tail-buffer-bytes", None, DEFAULT["tail-buffer-bytes"],
         "Bytes of lines held for a slow tail before L11 drops (whichever of this and --tail-buffer comes first); "
         "also the most backlog bytes one session, tail page or logs read answers with.",
         _positive_int("tail-buffer-bytes")],
        ["max-frame", None, DEFAULT["max-frame"], "Largest syslog frame accepted, in bytes.",
         _positive_int("max-frame")],
        ["max-body", None, DEFAULT["max-body"], "Largest HTTP request body accepted, in bytes.",
         _positive_int("max-body")],
        ["max-header-bytes", None, DEFAULT["max-header-bytes"], "Largest HTTP request line plus headers, in bytes.",
         _positive_int("max-header-bytes")],
        ["max-json", None, DEFAULT["max-json"], "Largest JSON body the API reads, in bytes.",
         _positive_int("max-json")],
        ["max-connections", None, DEFAULT["max-connections"], "Open connections allowed per listener; more are refused.",
         _positive_int("max-connections")],
        ["syslog-idle-timeout", None, DEFAULT["syslog-idle-timeout"], "Seconds a syslog connection may stay silent.",
         _positive_float("syslog-idle-timeout")],
        ["frame-timeout", None, DEFAULT["frame-timeout"], "Seconds a syslog frame may take to arrive once it has started.",
         _positive_float("frame-timeout")],
        ["http-header-timeout", None, DEFAULT["http-header-timeout"], "Seconds an HTTP client has to send its request line and headers, from connecting (or from the first byte of a later keep-alive request).",
         _positive_float("http-header-timeout")],
        ["http-request-timeout", None, DEFAULT["http-request-timeout"], "Seconds an HTTP client has to send its whole request.",
         _positive_float("http-request-timeout")],
        ["http-idle-timeout", None, DEFAULT["http-idle-timeout"], "Seconds an idle HTTP keep-alive connection is kept.",
         _positive_float("http-idle-timeout")],
        ["login-failures", None, DEFAULT["login-failures"],
         "Failed logins per client address (IPv6: its /64), listener and minute before it is refused "
         "(429); a credential id is refused new secrets after ten times as many from any addresses.",
         _positive_int("login-failures")],
        ["flush-interval", None, DEFAULT["flush-interval"], "Seconds between backlog write batches.",
         _positive_float("flush-interval")],
        ["flush-linger", None, DEFAULT["flush-linger"],
         "Longest a backlog write batch waits past --flush-interval for more lines when it would write "
         "fewer than 8 lines per channel to more than 1,000 channels (a quarter of the writer's queue "
         "bound never waits).",
         _positive_float("flush-linger")],
        ["manhole", None, None,
         "Admin shell (SSH, keys only) endpoint, e.g. tcp:2222; a tcp: or tcp6: port without interface= "
         "binds to loopback (127.0.0.1, ::1). Off unless given."],
        ["manhole-keys", None, None, "authorized_keys file of the keys allowed into the admin shell."],
        ["heartbeat", None, DEFAULT["heartbeat"],
         "Seconds between this node's heartbeats; a node silent for 3 of them is gone from /v3/nodes.",
         _positive_float("heartbeat")],
        ["reconcile-interval", None, DEFAULT["reconcile-interval"],
         "Seconds between this node's checks that its config and shard map are the cluster's "
         "newest: a change notification it missed is caught within this time.",
         _positive_float("reconcile-interval")],
        ["spool-adopt-after", None, DEFAULT["spool-adopt-after"],
         "Seconds a node that spooled may be gone from the registry before a live node takes over "
         "its drain spools and delivers them.",
         _positive_float("spool-adopt-after")],
        ["stop-grace", None, DEFAULT["stop-grace"],
         "Seconds a stopping node (SIGTERM) keeps accepting and serving while /healthcheck already "
         "answers 503, so a load balancer moves traffic away first; 0 closes the listeners at once.",
         _non_negative_float("stop-grace")],
        ["workers", None, None,
         "Worker processes sharing this node's listeners, each a cluster member <node-name>-<i>; "
         "1 runs the node in one process. Default: one per CPU this process may use, or 1 where a "
         "listener is not tcp:, tcp6: or ssl: (also behind haproxy:) or --manhole is given.",
         _positive_int("workers")],
        ["redis-timeout", None, DEFAULT["redis-timeout"], "Seconds a Redis command may take before it counts as failed.",
         _positive_float("redis-timeout")],
        ["namespace", None, DEFAULT["namespace"],
         "Prefix of every Redis key and pub/sub channel of this cluster (1-32 letters, digits, "
         "'_' or '-'): clusters sharing one Redis server need different namespaces or dbs.",
         _namespace],
        ["redis-password-file", None, None,
         "File whose content is the password of every Redis URL that has none; read again on "
         "SIGHUP and on every reconnect, so a rotated password needs no restart."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["syslog"] = []
        self["syslog-token"] = []
        self["shard-redis"] = []

    def opt_syslog(self, description: str) -> None:
        """Syslog TCP/TLS listener (repeatable; default tcp:6001)."""
        self["syslog"].append(description)

    def opt_syslog_token(self, value: str) -> None:
        """TOKEN=ENDPOINT: a syslog listener whose every message goes to TOKEN's channel (repeatable)."""
        token, sep, description = value.partition("=")
        if not sep or not token.startswith("t.") or not description:
            raise usage.UsageError(
                "--syslog-token takes TOKEN=ENDPOINT, e.g. t.6c1f…=tcp:6010:interface=127.0.0.1")
        self["syslog-token"].append((token, description))

    def opt_shard_redis(self, urls: str) -> None:
        """Shard Redis URL (repeatable or comma-separated; env LOGPLEX_SHARD_URLS). Default: the config Redis."""
        self["shard-redis"].extend(u.strip() for u in urls.split(",") if u.strip())

    def opt_version(self) -> None:
        print(f"logplex {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if not self["syslog"]:
            self["syslog"] = list(DEFAULT["syslog"])
        if self["config-redis"] is None:
            self["config-redis"] = os.environ.get(ENV["config-redis"]) or None
        if not self["shard-redis"] and os.environ.get(ENV["shard-redis"]):
            self.opt_shard_redis(os.environ[ENV["shard-redis"]])
        if self["auth"] is None:
            self["auth"] = os.environ.get(ENV["auth"]) or None
        if self["auth"] is not None:
            user, sep, password = self["auth"].partition(":")
            if not sep or not user or not password:
                raise usage.UsageError("--auth must be USER:PASSWORD, both non-empty.")
        if self["drain-ca-file"]:
            from logplex.drains.http import load_trust_root
            try:
                load_trust_root(self["drain-ca-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--drain-ca-file: {e}") from None
        if self["manhole"]:
            _check_manhole(self["manhole"])
        if self["manhole"] and not self["manhole-keys"]:
            raise usage.UsageError("--manhole needs --manhole-keys FILE (authorized_keys format).")
        if self["manhole-keys"] and not os.path.isfile(self["manhole-keys"]):
            raise usage.UsageError(f"--manhole-keys {self['manhole-keys']}: no such file.")
        self._check_redis_urls()
        self._check_workers()

    def _check_workers(self) -> None:
        from logplex.workers import single_process_reason

        if self["workers"] is not None and self["workers"] > 1:
            reason = single_process_reason(Settings.from_options(self))
            if reason is not None:
                raise usage.UsageError(f"--workers {self['workers']} cannot be used: {reason}. "
                                       "Give --workers 1, or change that option.")

    def _check_redis_urls(self) -> None:
        from logplex.redis.address import BadRedisURL, check_redis_url

        password_file = self["redis-password-file"]
        if password_file is not None and not self["config-redis"]:
            raise usage.UsageError(
                "--redis-password-file needs --config-redis: the embedded Redis has no password.")
        if password_file is not None:
            try:
                with open(password_file, encoding="utf-8") as f:
                    if not f.read().strip():
                        raise usage.UsageError(f"--redis-password-file {password_file} is empty.")
            except (OSError, UnicodeDecodeError) as e:
                raise usage.UsageError(
                    f"--redis-password-file {password_file} cannot be read ({e}).") from None
        for url in filter(None, [self["config-redis"], *self["shard-redis"]]):
            try:
                address = check_redis_url(url)
            except BadRedisURL as e:
                raise usage.UsageError(str(e)) from None
            if address.username and address.password is None and password_file is None:
                raise usage.UsageError(
                    f"Redis URL {address.describe()} names user {address.username!r} but no "
                    "password: write USER:PASSWORD@ or give --redis-password-file.")


def makeService(options: Options, reactor=None):
    """The service `twistd logplex` runs: a node in this process, or a --workers master of several."""
    from logplex.node import LogplexNode, embedded_redis
    from logplex.workers import (
        WORKER_ENV,
        WorkerCount,
        WorkerMaster,
        default_workers,
        settings_from_environment,
        usable_cpus,
    )

    if reactor is None:
        from twisted.internet import reactor
    inherited = os.environ.get(WORKER_ENV)
    if inherited:
        # A worker of a --workers master: its settings and sockets come from it.
        settings, fds = settings_from_environment(inherited)
        return LogplexNode(settings, reactor, inherited_fds=fds, embedded=embedded_redis(settings, reactor))
    settings = Settings.from_options(options)
    if options["workers"] is not None:
        workers = WorkerCount(options["workers"], "--workers")
    else:
        workers = default_workers(settings, usable_cpus())
    if workers.count > 1:
        return WorkerMaster(settings, workers.count, reactor, workers.reason)
    if options["workers"] is None:
        log.info("workers count=1 reason={reason!r}", reason=workers.reason)
    return LogplexNode(settings, reactor, exit_on_failure=True, embedded=embedded_redis(settings, reactor))
