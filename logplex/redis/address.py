"""Redis URLs (redis, rediss, Sentinel, unix): what a RedisAddress is, parsed and checked, and its TLS options."""

from __future__ import annotations

import re
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote

import attrs

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


class PasswordSource(Protocol):
    """Where a password comes from when the URL has none, and who hears how logging in went
    (logplex.redis.password.RedisSecrets is the one the node uses)."""

    metrics: Any

    def password_for(self, address: RedisAddress) -> str | None: ...

    def auth_failed(self, address: RedisAddress, reason: str) -> None: ...

    def handshake_failed(self, address: RedisAddress, reason: str) -> None: ...

    def auth_succeeded(self, address: RedisAddress) -> None: ...


class BadRedisURL(ValueError):
    """A Redis URL that cannot be used; the message is one sentence for the operator."""


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
    secrets: PasswordSource | None = attrs.field(default=None, eq=False, repr=False)

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
            hosts = ",".join(hostport(h, p) for h, p in self.sentinels)
            return f"{scheme}+sentinel://{user}{hosts}/{self.service}/{self.db}"
        return f"{scheme}://{user}{hostport(self.host or '', self.port)}/{self.db}"


def hostport(host: str, port: int) -> str:
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


def parse_redis_url(url: str, secrets: PasswordSource | None = None) -> RedisAddress:
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


def check_redis_url(url: str, secrets: PasswordSource | None = None) -> RedisAddress:
    """parse_redis_url, then read the TLS files it names, so a wrong path fails at start."""
    address = parse_redis_url(url, secrets)
    if address.tls:
        try:
            tls_options(address, address.host or "localhost")
        except (OSError, ValueError) as e:
            raise BadRedisURL(
                f"Redis URL {redact(url)!r}: its TLS files cannot be used ({error_reason(e)}).") from None
    return address


def error_reason(e: BaseException) -> str:
    """What went wrong, in a few words: an OSError names its file."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) or e.__class__.__name__


# -- TLS ---------------------------------------------------------------------------------------------
def tls_options(address: RedisAddress, host: str):
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
