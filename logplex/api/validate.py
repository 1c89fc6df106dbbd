"""Checks of what API callers send: channel ids, token names, drain URLs, numbers."""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from logplex.web import HttpError

CHANNEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
# A token name becomes APP-NAME: RFC 5424 allows 1-48 printable ASCII, no space.
TOKEN_NAME = re.compile(r"[!-~]{1,48}")
# A syslog header field to filter on (PROCID is up to 128 printable ASCII).
FIELD = re.compile(r"[!-~]{1,128}")
# A count as JSON clients send it, number or string: ASCII digits only (str.isdigit
# would take "²", which int() refuses).
NUMBER = re.compile(r"-?[0-9]{1,9}")
DRAIN_SCHEMES = {"http", "https", "syslog", "syslog+tls", "syslog+udp"}


def channel_id(value: str) -> str:
    if not CHANNEL_ID.fullmatch(value):
        raise HttpError(
            422,
            "A channel id is 1-128 characters: letters, digits and . _ : @ -, "
            "starting with a letter or digit.",
        )
    return value


def token_name(value: object) -> str:
    if not isinstance(value, str) or not TOKEN_NAME.fullmatch(value):
        raise HttpError(
            422, "A token name is a string of 1-48 printable ASCII characters without spaces."
        )
    return value


def token_names(value: object) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise HttpError(422, "'tokens' must be a list of token names.")
    return sorted({token_name(v) for v in value})


def json_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise HttpError(422, "The body must be a JSON object.")
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


def drain_url(value: object, allow_private: bool) -> str:
    """A drain destination, or 422 saying what is wrong with it."""
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise HttpError(422, "Invalid drain destination: 'url' must be a URL string.")
    if not value.isascii() or not value.isprintable() or " " in value:
        raise HttpError(
            422, "Invalid drain destination: a URL is printable ASCII without spaces "
                 "(percent-encode anything else).")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise HttpError(422, f"Invalid drain destination: {value!r} is not a URL.") from None
    if parts.scheme not in DRAIN_SCHEMES:
        raise HttpError(
            422,
            "Invalid drain destination: the scheme must be one of "
            + ", ".join(sorted(DRAIN_SCHEMES)) + ".",
        )
    host = parts.hostname
    if not host:
        raise HttpError(422, "Invalid drain destination: the URL names no host.")
    if parts.scheme.startswith("syslog") and port is None:
        raise HttpError(422, "Invalid drain destination: a syslog drain needs a port.")
    if not allow_private and is_private_host(host):
        raise HttpError(
            422,
            "Invalid drain destination: loopback, link-local and private addresses are refused.",
        )
    return value


def is_private_host(host: str) -> bool:
    """Whether host is, literally, an address a tenant must not point the router at."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
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
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_multicast or address.is_reserved or address.is_unspecified
    )
