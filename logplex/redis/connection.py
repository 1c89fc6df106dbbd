"""Redis URLs (redis, rediss, Sentinel, unix) and the txredisapi connections made from them.

Every connection keeps values as bytes, answers within a timeout, and does
its own handshake (AUTH, SELECT, and ROLE behind Sentinel) so that a refused
password is retried with backoff for ever instead of ending the pool.

What we take from txredisapi 1.6, and where we go around it:

- its pool (`RedisFactory.startConnecting`: one `ClientService` per slot, with
  backoff) and its TLS endpoint (`_makeEndpoint` wraps `_TLSEndpoint`, whose
  `TLSMemoryBIOFactory` accepts both Twisted's `optionsForClientTLS` creators,
  which check the host name, and old-style `CertificateOptions`);
- its `username=` for AUTH is not used: its `connectionMade` calls
  `factory.stopTrying()` when AUTH or SELECT fails, so one failed AUTH during a
  password rotation stopped the pool for good. `_Handshake` does AUTH itself;
- its `Sentinel` is not used: it keeps one connection per sentinel with the
  same TLS options for every host (no per-host name check) and the same
  stop-on-AUTH-failure, its master endpoint connects without TLS, it waits 10 s
  for a master before giving up, and its ROLE check compares the reply with a
  str, so with `charset=None` (our bytes) every primary looks like a replica.
  `_PrimaryWatch` asks the sentinels (TLS and `sentinel_password` as the URL
  says) over short-lived connections, reusing txredisapi's parsing of
  `SENTINEL MASTERS`, and follows their failover events over a subscription
  made with txredisapi's `SubscriberProtocol`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, unquote

import attrs
import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from logplex import hotpath

log = Logger()

SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "unix")
FORMS = (
    "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://… (TLS), "
    "redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB], "
    "rediss+sentinel://… or unix:///PATH[?db=N]"
)
SENTINEL_PORT = 26379
# Which query parameters each kind of URL takes; anything else is a typo we refuse.
_TLS_PARAMS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"}
_PARAMS = {
    "redis": set(),
    "rediss": _TLS_PARAMS,
    "redis+sentinel": {"sentinel_password"},
    "rediss+sentinel": _TLS_PARAMS | {"sentinel_password"},
    "unix": {"db"},
}
# Replies to AUTH (or to a first command without AUTH) that mean the secret is wrong.
_AUTH_ERRORS = ("WRONGPASS", "NOAUTH", "invalid password", "invalid username-password",
                "AUTH <password> called without")


class BadRedisURL(ValueError):
    """A Redis URL that cannot be used; the message is one sentence for the operator."""


class RedisClusterRefused(RuntimeError):
    """A Redis URL that leads to a Redis Cluster node, which logplex does not speak."""


@attrs.frozen
class RedisAddress:
    """Where a Redis is and how to log in to it, parsed from a URL."""

    host: str | None = None
    port: int = 6379
    path: str | None = None  # a unix socket, when set
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None
    tls: bool = False
    verify: bool = True  # the server's certificate and host name (rediss)
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()  # set: ask them for SERVICE's primary
    service: str | None = None
    sentinel_password: str | None = attrs.field(default=None, repr=False)
    # Where a password comes from when the URL has none, and who hears of a refused
    # one; not part of the address's identity.
    secrets: RedisSecrets | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """The address without any secret: this string goes to logs, metrics and the admin shell."""
        if self.path:
            return f"unix:{self.path}/{self.db}"
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username}@" if self.username else ""
        if self.sentinels:
            hosts = ",".join(_hostport(h, p) for h, p in self.sentinels)
            return f"{scheme}+sentinel://{user}{hosts}/{self.service}/{self.db}"
        return f"{scheme}://{user}{_hostport(self.host or '', self.port)}/{self.db}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- parsing -----------------------------------------------------------------------------------------
def redact(url: str) -> str:
    """The URL with its password and sentinel_password replaced by ***, for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The userinfo ends at the last "@" (as urlsplit reads it), which may be
    # past a raw "/" or "?" in a badly written password: redact all of it.
    userinfo, at, tail = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # Without "://" there is no telling a user name from a password.
        shown = f"{user}:***" if colon and sep else "***"
        rest = f"{shown}@{tail}"
    # A sentinel password with a raw "&" runs on into what looks like more
    # parameters: hide the rest of the query too.
    return re.sub(r"(sentinel_password=).*", r"\1***", f"{scheme}{sep}{rest}")


def parse_redis_url(url: str, secrets: RedisSecrets | None = None) -> RedisAddress:
    """Parse one of FORMS; BadRedisURL (one sentence, no password in it) when it is wrong.

    secrets: where the password comes from when the URL has none (--redis-password-file).
    """
    address = _parse(url)
    return address if secrets is None else attrs.evolve(address, secrets=secrets)


def _parse(url: str) -> RedisAddress:
    shown = repr(redact(url))
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise BadRedisURL(f"Redis URL {shown} must have one of the forms {FORMS}.")
    rest, _, _fragment = rest.partition("#")
    query = ""
    if scheme == "unix":
        rest, _, query = rest.partition("?")
        params = _params(query, scheme, shown)
        userinfo, at, path = rest.rpartition("@")
        if not path.startswith("/") or path == "/":
            raise BadRedisURL(f"Redis URL {shown} names no socket path: write unix:///PATH/TO/redis.sock.")
        _, password = _userinfo(userinfo, shown) if at else (None, None)
        return RedisAddress(path=unquote(path), db=_db(params.get("db", "0"), shown), password=password)
    # The userinfo may hold any character once percent-encoded; the last "@"
    # before the path ends it.
    authority_and_path, _, query = rest.partition("?")
    params = _params(query, scheme, shown)
    userinfo, at, hostpart = authority_and_path.rpartition("@")
    username, password = _userinfo(userinfo, shown) if at else (None, None)
    hosts, slash, path = hostpart.partition("/")
    tls = scheme.startswith("rediss")
    tls_fields = _tls(params, tls, shown)
    if scheme.endswith("+sentinel"):
        sentinels = tuple(_host_port(h, SENTINEL_PORT, shown) for h in hosts.split(","))
        service, _, db = path.partition("/")
        if not service:
            raise BadRedisURL(
                f"Redis URL {shown} names no Sentinel service: write "
                "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB].")
        sentinel_password = params.get("sentinel_password")
        return RedisAddress(
            sentinels=sentinels, service=unquote(service), db=_db(db.strip("/") or "0", shown),
            username=username, password=password, tls=tls,
            sentinel_password=unquote(sentinel_password) if sentinel_password else None,
            **tls_fields,
        )
    if "," in hosts:
        raise BadRedisURL(
            f"Redis URL {shown} names several hosts: only redis+sentinel:// takes a list (of sentinels).")
    host, port = _host_port(hosts, 6379, shown)
    return RedisAddress(
        host=host, port=port, db=_db(path.strip("/") or "0", shown), username=username,
        password=password, tls=tls, **tls_fields,
    )


def _params(query: str, scheme: str, shown: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise BadRedisURL(f"Redis URL {shown} has a query that is not NAME=VALUE&….") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMS[scheme]:
            allowed = ", ".join(sorted(_PARAMS[scheme])) or "none"
            # Only a name that looks like one is repeated: a misplaced secret is not.
            named = repr(name) if re.fullmatch(r"[a-z_]{1,30}", name) else "(not a name)"
            raise BadRedisURL(
                f"Redis URL {shown} has a parameter {named} that {scheme}:// does not take "
                f"(it takes: {allowed}).")
        if name in params:
            raise BadRedisURL(f"Redis URL {shown} gives {name!r} twice.")
        params[name] = value
    return params


def _userinfo(userinfo: str, shown: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    # USER@ alone is an ACL user whose password comes from --redis-password-file.
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(text: str, default: int, shown: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, after = text[1:].partition("]")
        if not bracket or not host:
            raise BadRedisURL(f"Redis URL {shown} has an IPv6 address without its closing ].")
        if after and not after.startswith(":"):
            raise BadRedisURL(f"Redis URL {shown} has something other than :PORT after [{host}].")
        port_text = after[1:] if after else ""
    else:
        host, colon, port_text = text.partition(":")
        if colon and not port_text:
            port_text = "x"  # "host:" is a port left out by mistake
    if not host or any(c in host for c in " @/?#[]"):
        raise BadRedisURL(f"Redis URL {shown} names no host (or a host that is not a name or address).")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRedisURL(f"Redis URL {shown} has a port that is not a number from 1 to 65535.")
    return host, int(port_text)


def _db(text: str, shown: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 1_000_000:
        raise BadRedisURL(f"Redis URL {shown} has a database number that is not a whole number.")
    return int(text)


def _tls(params: dict[str, str], tls: bool, shown: str) -> dict[str, Any]:
    if not tls:
        return {}
    reqs = params.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("none", "required"):
        raise BadRedisURL(f"Redis URL {shown} has ssl_cert_reqs={reqs!r}: use required (the default) or none.")
    certfile, keyfile = params.get("ssl_certfile"), params.get("ssl_keyfile")
    if bool(certfile) != bool(keyfile):
        raise BadRedisURL(
            f"Redis URL {shown} gives only one of ssl_certfile and ssl_keyfile: a client certificate needs both.")
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if name in params and not params[name]:
            raise BadRedisURL(f"Redis URL {shown} gives {name} without a path.")
    return {"verify": reqs == "required", "ca_certs": params.get("ssl_ca_certs"),
            "certfile": certfile, "keyfile": keyfile}


def check_redis_url(url: str, secrets: RedisSecrets | None = None) -> RedisAddress:
    """parse_redis_url, then read the TLS files it names, so a wrong path fails at start."""
    address = parse_redis_url(url, secrets)
    if address.tls:
        try:
            _tls_options(address, address.host or "localhost")
        except (OSError, ValueError) as e:
            raise BadRedisURL(
                f"Redis URL {redact(url)!r}: its TLS files cannot be used ({_reason(e)}).") from None
    return address


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) or e.__class__.__name__


# -- secrets -----------------------------------------------------------------------------------------
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
                     path=self.password_file, reason=_reason(e))
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


def _secrets(address: RedisAddress) -> RedisSecrets:
    global _DEFAULT_SECRETS
    if address.secrets is not None:
        return address.secrets
    if _DEFAULT_SECRETS is None:
        _DEFAULT_SECRETS = RedisSecrets()
    return _DEFAULT_SECRETS


def _is_auth_error(text: str) -> bool:
    return any(marker in text for marker in _AUTH_ERRORS)


# -- TLS ---------------------------------------------------------------------------------------------
def _tls_options(address: RedisAddress, host: str):
    """Client TLS options for one host: verified (name and chain) unless ssl_cert_reqs=none."""
    from twisted.internet import ssl

    client = None
    if address.certfile:
        with open(address.certfile, "rb") as f:
            cert_pem = f.read()
        with open(address.keyfile, "rb") as f:
            key_pem = f.read()
        client = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    if not address.verify:
        if client is None:
            return ssl.CertificateOptions(verify=False)
        return ssl.CertificateOptions(privateKey=client.privateKey.original,
                                      certificate=client.original, verify=False)
    trust = ssl.platformTrust()
    if address.ca_certs:
        with open(address.ca_certs, "rb") as f:
            bundle = f.read()
        pems = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", bundle, re.S)
        if not pems:
            raise ValueError(f"{address.ca_certs} holds no PEM certificate")
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(p) for p in pems])
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


_warned_unverified: set[str] = set()


def _endpoint(reactor, address: RedisAddress, host: str, port: int, timeout: float):
    """TCP, or TLS through txredisapi's own TLS endpoint, to one host."""
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not address.tls:
        return endpoint
    if not address.verify and address.describe() not in _warned_unverified:
        _warned_unverified.add(address.describe())
        log.warn("redis_tls_unverified address={address}: ssl_cert_reqs=none, so any server "
                 "certificate is accepted", address=address.describe())
    return txredisapi._TLSEndpoint(endpoint, _tls_options(address, host))


# -- the protocol --------------------------------------------------------------------------------------
class _Handshake:
    """AUTH, SELECT and, behind Sentinel, ROLE, done before a connection joins its pool.

    A failure closes the connection and leaves the pool's ClientService to try
    again with backoff, however long the secret stays wrong; txredisapi's own
    handshake would stop the pool for good instead.
    """

    factory: Any
    transport: Any

    def connectionMade(self):
        d = defer.ensureDeferred(self._handshake())
        d.addErrback(lambda f: log.failure("redis_handshake_crashed", f))
        return d

    async def _handshake(self) -> None:
        address: RedisAddress = self.factory.redis_address
        secrets = _secrets(address)
        reactor = self.factory.redis_reactor
        timeout = self.factory.handshake_timeout
        password = secrets.password_for(address)
        if password is None and address.username:
            secrets.auth_failed(address, f"no password for user {address.username!r} "
                                         "(neither in the URL nor in --redis-password-file)")
            self.transport.loseConnection()
            return
        # txredisapi's connectionMade below must not AUTH or SELECT again.
        self.password, self.dbid = None, None
        try:
            if password is not None:
                args = (address.username, password) if address.username else (password,)
                await self.execute_command("AUTH", *args).addTimeout(timeout, reactor)
            else:
                # Without a password, PING tells "the server wants one" (NOAUTH) now.
                await self.execute_command("PING").addTimeout(timeout, reactor)
            secrets.auth_succeeded(address)
            if address.db:
                await self.execute_command("SELECT", address.db).addTimeout(timeout, reactor)
            if address.is_sentinel:
                role = await self.execute_command("ROLE").addTimeout(timeout, reactor)
                if not role or role[0] != b"master":
                    secrets.handshake_failed(address, f"not the primary (ROLE says {role and role[0]!r})")
                    self.transport.loseConnection()
                    return
        except txredisapi.ResponseError as e:
            reason = str(e).strip()
            if _is_auth_error(reason):
                secrets.auth_failed(address, reason)
            else:
                secrets.handshake_failed(address, reason)
            self.transport.loseConnection()
            return
        except Exception as e:
            # A TLS failure shows here as a lost connection: say what TLS said.
            lost = getattr(self, "_lost_reason", None)
            reason = lost.getErrorMessage() if lost is not None else str(e) or e.__class__.__name__
            secrets.handshake_failed(address, reason)
            if self.transport is not None:
                self.transport.abortConnection()
            return
        await super().connectionMade()

    def connectionLost(self, why):
        self._lost_reason = why
        return super().connectionLost(why)

    def replyReceived(self, reply):
        # A primary demoted to replica answers writes with READONLY: leave it
        # and ask the sentinels again rather than fail every write after.
        if (isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY")
                and self.factory.redis_address.is_sentinel and self.transport is not None):
            log.warn("redis_primary_demoted address={address} action=reconnecting",
                     address=self.factory.redis_address.describe())
            self.transport.loseConnection()
        return super().replyReceived(reply)


class _Protocol(_Handshake, txredisapi.RedisProtocol):
    """txredisapi's protocol with our handshake and a leaner command encoder.

    A backlog flush is one LPUSH of thousands of lines: building it argument
    by argument through txredisapi's general encoder was a quarter of a busy
    node's time. Bytes (nearly every argument here) go straight through.
    """

    def _build_command(self, *args, **kwargs):
        out = [b"*%d\r\n" % len(args)]
        append = out.append
        for arg in args:
            if arg.__class__ is not bytes:
                arg = self._encode_value(arg)
            append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(out)


_pure_build_command = _Protocol._build_command
if (_hot := hotpath.compiled()) is not None:
    # The same encoding in C: a backlog flush is one command of thousands of lines.
    def _compiled_build_command(self, *args, **kwargs):
        return _hot.build_command(args, self._encode_value)

    _Protocol._build_command = _compiled_build_command


class SubscriberProtocol(_Handshake, txredisapi.SubscriberProtocol):
    """txredisapi's subscriber with our handshake: for pub/sub factories started with start_connecting."""


class _Factory(txredisapi.RedisFactory):
    protocol = _Protocol


# -- Sentinel ----------------------------------------------------------------------------------------
class _SentinelQuery(txredisapi.RedisProtocol):
    """One short conversation with a sentinel: txredisapi parses SENTINEL MASTERS (str values)."""

    def __init__(self) -> None:
        super().__init__(charset="utf-8", convertNumbers=False)
        self.ready: defer.Deferred = defer.Deferred()

    def connectionMade(self):
        self.connected = 1
        self.ready.callback(self)


PROMOTING = b"+failover-state-send-slaveof-noone"
SWITCHED = b"+switch-master"


class _SwitchListener(SubscriberProtocol):
    """A subscriber to a sentinel's failover events: a replica being promoted, a new primary."""

    def connectionMade(self):
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda p: p.subscribe([PROMOTING, SWITCHED])).addErrback(
            lambda f: log.warn("redis_sentinel_subscribe_failed error={e}", e=f.getErrorMessage()))
        return d

    def messageReceived(self, pattern, channel, message):
        if channel == PROMOTING:
            self.factory.watch.promoting(message)
        elif channel == SWITCHED:
            self.factory.watch.switched(message)


class _SwitchFactory(txredisapi.RedisFactory):
    protocol = _SwitchListener


class _PrimaryWatch:
    """Which node is the primary of one Sentinel service, for every pool of it in this process.

    The sentinels are asked at every connection attempt, every second, and
    when one announces +switch-master; every sentinel is asked and the answer
    with the highest config epoch wins, since one that has not heard of a
    failover yet still names the old primary. Asking at connection attempts
    alone is not enough: a primary demoted while still running (SENTINEL
    FAILOVER) goes on taking writes until the sentinels reconfigure it,
    seconds later, and all of those are lost when it resyncs from the new
    one. So the pools leave it as soon as a sentinel starts promoting a
    replica (+failover-state-send-slaveof-noone).
    """

    interval = 1.0
    # After the first answer, how long the other sentinels have to give theirs.
    grace = 0.3
    # How long a replica being promoted is taken for the primary before the
    # sentinels confirm it (+switch-master); past it, a failover that was
    # aborted leaves the pools to the sentinels' answer again.
    promotion_wait = 10.0

    def __init__(self, reactor, address: RedisAddress, timeout: float) -> None:
        from twisted.internet.task import LoopingCall

        self.reactor = reactor
        self.address = address
        self.timeout = timeout
        self.endpoints: list[_SentinelEndpoint] = []
        # A poll that fails unexpectedly must not end the polling.
        self._loop = LoopingCall(lambda: defer.ensureDeferred(self._poll()).addErrback(
            lambda f: log.failure("redis_sentinel_poll_failed", f)))
        self._loop.clock = reactor
        self._polling = False
        self._again = False
        self._listeners: list[_SwitchFactory] = []
        self._promoting: tuple[tuple[str, int], float] | None = None

    def add(self, endpoint: _SentinelEndpoint) -> None:
        self.endpoints.append(endpoint)
        if not self._loop.running:
            self._loop.start(self.interval, now=False)
            self._listen()

    def _listen(self) -> None:
        a = self.address
        secrets = RedisSecrets(metrics=a.secrets.metrics, clock=self.reactor) if a.secrets else None
        for host, port in a.sentinels:
            factory = _SwitchFactory(None, None, 1, isLazy=True, charset=None, convertNumbers=False)
            factory.watch = self
            sentinel = RedisAddress(host=host, port=port, password=a.sentinel_password, tls=a.tls,
                                    verify=a.verify, ca_certs=a.ca_certs, certfile=a.certfile,
                                    keyfile=a.keyfile, secrets=secrets)
            start_connecting(factory, sentinel, self.reactor, self.timeout)
            self._listeners.append(factory)

    def promoting(self, message: bytes) -> None:
        """The replica a sentinel is promoting: leave the old primary now.

        From here the old primary still takes writes, but its replica no longer
        copies them: whatever it takes until the sentinels reconfigure it is
        lost. The pools' writes wait in their queues for the new primary instead
        (its ROLE says replica until the promotion is done, so they retry).
        """
        # "slave <ip>:<port> <ip> <port> @ <service> <old ip> <old port>"
        parts = message.decode("utf-8", "replace").split()
        try:
            at = parts.index("@")
            service, new = parts[at + 1], (parts[2], int(parts[3]))
        except (ValueError, IndexError):
            return
        if service != self.address.service:
            return
        log.info("redis_sentinel_promoting address={address} new={new} action=leaving_old_primary",
                 address=self.address.describe(), new=_hostport(*new))
        self._promoting = (new, self.reactor.seconds() + self.promotion_wait)
        for endpoint in self.endpoints:
            endpoint.primary_is(new)

    def switched(self, message: bytes) -> None:
        # "<service> <old ip> <old port> <new ip> <new port>"
        if message.split(b" ", 1)[0].decode("utf-8", "replace") != self.address.service:
            return
        self._promoting = None  # the sentinels' answer is the truth again
        log.info("redis_sentinel_switch address={address} announced={announced}",
                 address=self.address.describe(), announced=message.decode("utf-8", "replace"))
        self.poll_now()

    def poll_now(self) -> None:
        if self._polling:
            self._again = True  # the poll under way may have asked before the switch
            return
        defer.ensureDeferred(self._poll()).addErrback(lambda f: log.failure("redis_sentinel_poll_failed", f))

    async def _poll(self) -> None:
        # Pools that were disconnected leave; the last one out stops the poll.
        self.endpoints = [e for e in self.endpoints if not e.factory.stopped]
        if not self.endpoints:
            self._loop.stop()
            _WATCHES.pop(self.address, None)
            for listener in self._listeners:
                listener.disconnect()
            return
        if self._polling or not any(e.factory.pool for e in self.endpoints):
            return  # reconnecting pools ask for themselves
        self._polling = True
        try:
            primary = await self.discover()
        except Exception:
            return  # said by the next connection attempt, if it matters
        finally:
            self._polling = False
            if self._again:
                self._again = False
                self.reactor.callLater(0, self.poll_now)
        for endpoint in self.endpoints:
            endpoint.primary_is(primary)

    async def _ask(self, host: str, port: int) -> tuple[int, tuple[str, int]] | None:
        address, timeout = self.address, self.timeout
        endpoint = _endpoint(self.reactor, address, host, port, timeout)
        factory = Factory.forProtocol(_SentinelQuery)
        factory.noisy = False  # one per question: no start/stop lines
        conn = await endpoint.connect(factory).addTimeout(timeout, self.reactor)
        try:
            await conn.ready
            if address.sentinel_password:
                await conn.execute_command("AUTH", address.sentinel_password).addTimeout(timeout, self.reactor)
            masters = await conn.sentinel_masters().addTimeout(timeout, self.reactor)
        finally:
            conn.transport.loseConnection()
        state = masters.get(address.service)
        if not state or not state["is_master"] or state["is_sdown"] or state["is_odown"]:
            return None
        return int(state.get("config-epoch") or 0), (state["ip"], int(state["port"]))

    async def discover(self) -> tuple[str, int]:
        if self._promoting is not None:
            new, until = self._promoting
            if self.reactor.seconds() < until:
                return new
            self._promoting = None
        answers: list[tuple[int, tuple[str, int]]] = []
        errors: list[str] = []
        settled: defer.Deferred = defer.Deferred()
        pending = len(self.address.sentinels)

        def done(result, where: str) -> None:
            nonlocal pending
            pending -= 1
            if isinstance(result, tuple):
                answers.append(result)
                if len(answers) == 1 and pending:
                    self.reactor.callLater(self.grace, lambda: settled.called or settled.callback(None))
            else:
                reason = result.getErrorMessage() if result is not None else "no healthy primary"
                errors.append(f"{where}: {reason}")
            if not pending and not settled.called:
                settled.callback(None)

        for host, port in self.address.sentinels:
            d = defer.ensureDeferred(self._ask(host, port))
            d.addBoth(done, _hostport(host, port))
        await settled
        if not answers:
            raise txredisapi.MasterNotFoundError(
                f"no sentinel named a healthy primary of {self.address.service!r} ({'; '.join(errors)})")
        return max(answers)[1]


_WATCHES: dict[RedisAddress, _PrimaryWatch] = {}


@implementer(IStreamClientEndpoint)
class _SentinelEndpoint:
    """Connects a pool to the primary the sentinels name, asking them before every attempt."""

    def __init__(self, reactor, address: RedisAddress, factory, timeout: float) -> None:
        self.address = address
        self.factory = factory
        self.timeout = timeout
        self.reactor = reactor
        self.primary: tuple[str, int] | None = None
        # One poll per sentinel service in this process, whatever the number of pools.
        watch = _WATCHES.get(address)
        if watch is None:
            watch = _WATCHES[address] = _PrimaryWatch(reactor, address, timeout)
        self.watch = watch
        watch.add(self)

    def primary_is(self, primary: tuple[str, int]) -> None:
        if self.primary is None or primary == self.primary:
            return
        log.info("redis_primary_changed address={address} old={old} new={new} action=reconnecting",
                 address=self.address.describe(), old=_hostport(*self.primary), new=_hostport(*primary))
        self.primary = primary
        # Each connection reconnects through connect(), which asks again.
        for conn in list(self.factory.pool):
            conn.transport.loseConnection()

    def connect(self, protocolFactory):
        return defer.ensureDeferred(self._connect(protocolFactory))

    async def _connect(self, protocolFactory):
        try:
            primary = await self.watch.discover()
        except txredisapi.MasterNotFoundError as e:
            log.warn("redis_sentinel_no_primary address={address} reason={reason}",
                     address=self.address.describe(), reason=str(e))
            raise
        self.primary_is(primary)
        self.primary = primary
        return await _endpoint(self.reactor, self.address, *primary, self.timeout).connect(protocolFactory)


# -- connecting --------------------------------------------------------------------------------------
def start_connecting(factory: txredisapi.RedisFactory, address: RedisAddress, reactor=None,
                     timeout: float = 5.0) -> None:
    """Start a txredisapi factory (whose protocol has our handshake) on the address's endpoint."""
    if reactor is None:
        from twisted.internet import reactor
    factory.redis_address = address
    factory.redis_reactor = reactor
    factory.handshake_timeout = timeout
    factory.reconnect = True
    # Come back quickly after a Redis restart or failover (txredisapi waits
    # up to 10 s): routing, the bus and drains' spools all wait on these.
    factory.initialDelay = 0.2
    factory.maxDelay = 2.0
    if address.path:
        endpoint = UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    elif address.is_sentinel:
        endpoint = _SentinelEndpoint(reactor, address, factory, timeout)
    else:
        endpoint = _LazyTLSEndpoint(reactor, address, timeout)
    factory.startConnecting(endpoint)


@implementer(IStreamClientEndpoint)
class _LazyTLSEndpoint:
    """TCP or TLS to one host, reading the TLS files on every attempt (a renewed certificate is used)."""

    def __init__(self, reactor, address: RedisAddress, timeout: float) -> None:
        self.reactor, self.address, self.timeout = reactor, address, timeout

    def connect(self, protocolFactory):
        try:
            endpoint = _endpoint(self.reactor, self.address, self.address.host, self.address.port,
                                 self.timeout)
        except (OSError, ValueError) as e:
            log.warn("redis_tls_files_unusable address={address} reason={reason}",
                     address=self.address.describe(), reason=_reason(e))
            return defer.fail(e)
        return endpoint.connect(protocolFactory)


def connect(address: RedisAddress, *, poolsize: int = 2, reply_timeout: float = 5.0, reactor=None):
    """A lazy, reconnecting pool; commands answer within reply_timeout or fail."""
    handler = txredisapi.UnixConnectionHandler if address.path else txredisapi.ConnectionHandler
    factory = _Factory(
        address.describe(), None, poolsize, True, handler, None, None, reply_timeout, False,
    )
    start_connecting(factory, address, reactor, timeout=reply_timeout)
    return factory.handler


async def refuse_cluster_mode(pool, address: RedisAddress, timeout: float, reactor) -> None:
    """RedisClusterRefused if the Redis behind pool runs in cluster mode (INFO cluster says so)."""
    try:
        info = await bounded(pool.execute_command("INFO", "cluster"), timeout, reactor)
    except txredisapi.ResponseError as e:
        # An ACL user without +info: the check cannot be made, and says so.
        log.warn("redis_cluster_check_skipped address={address} reason={reason}",
                 address=address.describe(), reason=str(e).strip())
        return
    if isinstance(info, bytes):
        info = info.decode("utf-8", "replace")
    if re.search(r"^cluster_enabled:1\s*$", info or "", re.M):
        raise RedisClusterRefused(
            f"Redis at {address.describe()} runs in cluster mode (cluster_enabled:1): logplex does "
            "not speak Redis Cluster. Give it standalone Redis servers (or Sentinel-managed "
            "primaries) as config and shard Redis; logplex spreads channels over shards itself.")


def bounded(d: defer.Deferred, seconds: float, reactor) -> defer.Deferred:
    """txredisapi waits for a connection without limit while Redis is down: bound it."""
    return d.addTimeout(seconds, reactor)
