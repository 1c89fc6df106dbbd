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
from collections import deque
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


class LoginThrottle:
    """Failed logins per client address: past `limit` in `window` seconds, the
    address is refused (429) until its oldest failure leaves the window.

    Checked before the password is, so guessing costs the guesser time and
    the node no KDF work.
    """

    def __init__(self, clock, limit: int = 10, window: float = 60.0, max_addresses: int = 100_000) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> float | None:
        """Seconds until this address may try again, or None if it may now."""
        times = self.failures.get(address)
        if not times:
            return None
        now = self.clock.seconds()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self.failures[address]
            return None
        if len(times) < self.limit:
            return None
        return self.window - (now - times[0])

    def failed(self, address: str) -> None:
        if address not in self.failures and len(self.failures) >= self.max_addresses:
            # Under a flood of addresses, forget the oldest rather than grow.
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(address, deque()).append(self.clock.seconds())


BASIC_CHALLENGE = {b"www-authenticate": b"Basic realm=Logplex"}


async def login(auth: Authenticator, throttle: LoginThrottle, request, user: str, password: str) -> Credential:
    """The credential for user:password, or HttpError: 429 for a throttled address
    (checked first, so no KDF work is done for it), 401 for a wrong login."""
    from logplex.web import HttpError

    address = client_address(request)
    wait = throttle.retry_after(address)
    if wait is not None:
        raise HttpError(429, f"Too many failed logins from {address}; try again in {wait:.0f} s.",
                        {b"retry-after": b"%d" % max(1, round(wait))})
    cred = await auth.verify(user, password)
    if cred is None:
        throttle.failed(address)
        raise HttpError(401, "Invalid credentials.", BASIC_CHALLENGE)
    return cred


def client_address(request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", None) or str(address)
