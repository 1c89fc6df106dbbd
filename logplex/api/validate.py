"""Checks of what API callers send: channel ids, token names, drain URLs, numbers."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from logplex.http.routing import HttpError

CHANNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# A token name becomes APP-NAME: RFC 5424 allows 1-48 printable ASCII, no space.
TOKEN_NAME = re.compile(r"[!-~]{1,48}")
# A syslog header field to filter on (PROCID is up to 128 printable ASCII).
FIELD = re.compile(r"[!-~]{1,128}")
# A count as JSON clients send it, number or string: ASCII digits only (str.isdigit
# would take "²", which int() refuses).
NUMBER = re.compile(r"-?[0-9]{1,9}")
DRAIN_SCHEMES = {"http", "https", "syslog", "syslog+tls"}
# UDP syslog (RFC 5426) loses datagrams without a trace: no acknowledgement,
# no backpressure, no way to count a loss. Refused with a sentence that says so.
UDP_SCHEMES = {"syslog+udp", "udpsyslog"}


def channel_id(value: str) -> str:
    if not CHANNEL_ID.fullmatch(value):
        raise HttpError(
            422,
            "A channel id is 1-128 characters: letters, digits and . _ : @ -, "
            "starting with a letter or digit.",
        )
    return value


def token_name(value: object, missing: int = 422) -> str:
    """A token name; no name at all (or not a string) is `missing` (logplex's v1 and v3 answer 400)."""
    if not isinstance(value, str):
        raise HttpError(missing, "A token needs a 'name': a string of 1-48 printable ASCII characters "
                                 "without spaces.")
    if not TOKEN_NAME.fullmatch(value):
        raise HttpError(
            422, "A token name is a string of 1-48 printable ASCII characters without spaces."
        )
    return value


def token_names(value: object, malformed: int = 422) -> list[str]:
    """Token names; what is not a list of strings is `malformed` (logplex's v3 answers 400)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise HttpError(malformed, "invalid payload: 'tokens' must be a list of token names.")
    return sorted({token_name(v, missing=malformed) for v in value})


def json_object(body: object, status: int = 422) -> dict:
    """The body as a JSON object, or HttpError(status): logplex's v3 answers 400 "invalid payload", v2 422."""
    if not isinstance(body, dict):
        raise HttpError(status, "invalid payload: the body must be a JSON object.")
    return body


def number(value: object, name: str, default: int, low: int, high: int) -> int:
    """An integer given as a JSON number or a numeric string (logplex clients send "100")."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise HttpError(422, f"'{name}' must be a number.")
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int):
        raise HttpError(422, f"'{name}' must be a number.")
    return max(low, min(high, value))


def drain_url(value: object, allow_private: bool, malformed: int = 422) -> str:
    """A drain destination, or an HttpError saying what is wrong with it: `malformed` (logplex's
    v3 answers 400, v2 422) for what is not a drain URL at all, 422 for one that is refused."""
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise HttpError(malformed, "Invalid drain destination: 'url' must be a URL string.")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise HttpError(
            malformed, "Invalid drain destination: a URL is printable ASCII without spaces "
                       "(percent-encode anything else).")
    try:
        parts = urlsplit(value)
        parts.port  # a port that is not a number raises here
    except ValueError:
        raise HttpError(malformed, f"Invalid drain destination: {value!r} is not a URL.") from None
    if parts.scheme in UDP_SCHEMES:
        raise HttpError(
            422,
            "Invalid drain destination: UDP syslog drains are not supported, because a datagram "
            "lost on the way is lost without a trace; use syslog:// (TCP) or syslog+tls:// instead.",
        )
    if parts.scheme not in DRAIN_SCHEMES:
        raise HttpError(
            malformed,
            "Invalid drain destination: the scheme must be one of "
            + ", ".join(sorted(DRAIN_SCHEMES)) + ".",
        )
    host = parts.hostname
    if not host:
        raise HttpError(malformed, "Invalid drain destination: the URL names no host.")
    if not allow_private and is_private_host(host):
        raise HttpError(
            422,
            f"Invalid drain destination: {host} is not a public internet address (loopback, private, "
            "link-local, shared and reserved addresses are refused); point the drain at a public host, "
            "or run the node with --allow-private-drains.",
        )
    return value


# Blocks that Python's ipaddress (3.11) counts as global although IANA's
# special-purpose registries do not: 6to4 (deprecated, RFC 7526) and its relay
# anycast, site-local (RFC 3879), NAT64 local use (RFC 8215), documentation
# (RFC 9637) and SRv6 SIDs (RFC 9602). Newer Pythons agree; older ones need this.
_NOT_GLOBAL = tuple(ipaddress.ip_network(n) for n in (
    "2002::/16", "192.88.99.0/24", "fec0::/10", "64:ff9b:1::/48", "3fff::/20", "5f00::/16"))
# NAT64's well-known prefix (RFC 6052): a gateway connects to the IPv4
# address in the last 32 bits, so that address is the one to judge.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether address is globally routable unicast: the only kind a tenant may point the router at.

    An IPv4 address carried in IPv6 (IPv4-mapped, NAT64) is judged as the
    IPv4 address a connection reaches; 6to4, Teredo and IPv4-compatible
    addresses are refused outright (deprecated, and they would hide one).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if not address.is_global or address.is_multicast or address.is_reserved:
        return False
    return not any(address in network for network in _NOT_GLOBAL)


def is_private_host(host: str) -> bool:
    """Whether host is, literally, an address (or a name of this machine) a tenant must not point the router at."""
    name = host.lower().rstrip(".")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        # The resolver also reads the old inet_aton spellings ("127.1",
        # "2130706433", "0x7f.0.0.1", "0"): so must we.
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError, UnicodeError):
            return False
    return not is_public_address(address)


def query_number(request, name: bytes, default: int, low: int, high: int) -> int:
    """A number from the query string, clamped; as logplex, one that is not a number is ignored."""
    raw = request.args.get(name, [None])[0]
    try:
        return number(None if raw is None else raw.decode("latin-1"), name.decode(), default, low, high)
    except HttpError:
        return default
