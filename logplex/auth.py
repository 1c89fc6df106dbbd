"""HTTP Basic credentials: parsing, and checking them against the config cache.

Secrets are stored as slow KDF hashes; a node remembers which (credential,
secret digest) pairs it has verified against which stored hash, so the KDF is
paid once per credential and node, not once per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Callable

from twisted.internet import defer, threads

from logplex import secrets
from logplex.model import Credential
from logplex.redis.config import ConfigCache


def parse_basic(header: bytes | None) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic …` header, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def parse_bearer(header: bytes | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        return None
    try:
        return value.strip().decode("ascii")
    except UnicodeDecodeError:
        return None


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode("utf-8")).digest()


class Authenticator:
    def __init__(self, cache: ConfigCache, reactor, check: Callable | None = None) -> None:
        self.cache = cache
        self.reactor = reactor
        # The KDF runs in the reactor's thread pool: a 50 ms hash must not
        # stall every connection of the node.
        self._check = check or (
            lambda secret, stored: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), secrets.check_secret, secret, stored
            )
        )
        self._verified: dict[str, tuple[bytes, str]] = {}

    def verify(self, user: str, password: str) -> defer.Deferred:
        """Fires with the Credential, or None when the user or password is wrong."""
        cred: Credential | None = self.cache.creds.get(user)
        if cred is None:
            return defer.succeed(None)
        digest = _digest(password)
        known = self._verified.get(user)
        if known is not None and known[1] == cred.secret_hash:
            return defer.succeed(cred if hmac.compare_digest(known[0], digest) else None)

        def checked(ok: bool):
            if not ok:
                return None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[user] = (digest, cred.secret_hash)
            return cred

        return defer.maybeDeferred(self._check, password, cred.secret_hash).addCallback(checked)

    def from_header(self, header: bytes | None) -> defer.Deferred:
        pair = parse_basic(header)
        if pair is None:
            return defer.succeed(None)
        return self.verify(*pair)
