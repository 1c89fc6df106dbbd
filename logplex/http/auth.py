"""HTTP Basic credentials: parsing, and checking them against the config cache.

Secrets are stored as slow KDF hashes; a node remembers which (credential,
secret digest) pairs it has verified against which stored hash, so the KDF is
paid once per credential and node, not once per request. Guessing is
throttled per listener, client address (IPv6: its /64) and credential id,
and charged before the KDF runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from collections import deque
from typing import Callable

import attrs
from twisted.internet import defer, threads

from logplex import secrets
from logplex.model import Credential
from logplex.config.cache import ConfigCache
from logplex.http.routing import HttpError


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


def _dummy_hash() -> str:
    """A stored hash no secret matches, at the cost new secrets are hashed with.

    Checking an unknown credential id against it takes as long as checking a
    real one, so the time of a 401 does not tell which ids exist. Random
    bytes in place of a digest: nothing needs to be hashed to make it.
    """
    # secrets.hash_secret's own default cost, so the two take the same time.
    salt, digest = (base64.urlsafe_b64encode(os.urandom(n)).decode().rstrip("=") for n in (16, 32))
    return f"scrypt${secrets._N}${secrets._R}${secrets._P}${salt}${digest}"


class Authenticator:
    """Checks user:password against the config cache's credentials.

    A secret this node has verified for a credential (and its current hash)
    is remembered as a digest and accepted without the KDF; every other
    secret pays the KDF, also for an unknown id (against a dummy hash), so
    that how long a refusal takes tells nothing.
    """

    def __init__(self, cache: ConfigCache, reactor, check: Callable | None = None,
                 dummy_hash: str | None = None) -> None:
        self.cache = cache
        self.reactor = reactor
        # The KDF runs in the reactor's thread pool: a 50 ms hash must not
        # stall every connection of the node.
        self._check = check or (
            lambda secret, stored: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), secrets.check_secret, secret, stored
            )
        )
        self._dummy_hash = dummy_hash or _dummy_hash()
        self._verified: dict[str, tuple[bytes, str]] = {}

    def remembered(self, user: str, password: str) -> Credential | None:
        """The Credential if this node has verified exactly this secret for it; no KDF."""
        cred: Credential | None = self.cache.creds.get(user)
        known = self._verified.get(user)
        if cred is None or known is None or known[1] != cred.secret_hash:
            return None
        return cred if hmac.compare_digest(known[0], _digest(password)) else None

    def check(self, user: str, password: str) -> defer.Deferred:
        """Fires with the Credential, or None; always pays one KDF run."""
        cred: Credential | None = self.cache.creds.get(user)
        digest = _digest(password)

        def checked(ok: bool):
            # Deleted or rotated while the hash ran: the answer is about a
            # credential that no longer is.
            if not ok or cred is None or self.cache.creds.get(user) != cred:
                return None
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[user] = (digest, cred.secret_hash)
            return cred

        stored = cred.secret_hash if cred is not None else self._dummy_hash
        return defer.maybeDeferred(self._check, password, stored).addCallback(checked)

    def verify(self, user: str, password: str) -> defer.Deferred:
        """Fires with the Credential, or None when the user or password is wrong."""
        cred = self.remembered(user, password)
        if cred is not None:
            return defer.succeed(cred)
        return self.check(user, password)


def throttle_key(host: str) -> str:
    """What a throttle counts a client by: an IPv4 address, or an IPv6 client's /64.

    One IPv6 host is routinely given a whole /64, so counting single
    addresses would give it 2**64 fresh starts.
    """
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host  # a unix socket or something else without an IP
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Window:
    """Timestamps of charged failures per key within a sliding window, bounded in keys."""

    def __init__(self, clock, limit: int, window: float, max_keys: int) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.times: dict[object, deque[float]] = {}

    def retry_after(self, key) -> float | None:
        """Seconds until key may be charged again, or None if it may now."""
        times = self.times.get(key)
        if not times:
            return None
        now = self.clock.seconds()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self.times[key]
            return None
        if len(times) < self.limit:
            return None
        return self.window - (now - times[0])

    def charge(self, key) -> float:
        if key not in self.times and len(self.times) >= self.max_keys:
            # Under a flood of keys, forget the oldest rather than grow.
            self.times.pop(next(iter(self.times)))
        stamp = self.clock.seconds()
        self.times.setdefault(key, deque()).append(stamp)
        return stamp

    def refund(self, key, stamp: float) -> None:
        times = self.times.get(key)
        if times is None:
            return
        try:
            times.remove(stamp)
        except ValueError:
            return  # already out of the window
        if not times:
            del self.times[key]

    def clear(self) -> None:
        self.times.clear()


@attrs.frozen
class Attempt:
    """A login that was let through to the KDF: what it was charged, to refund on success."""

    address: str
    credential: bytes
    address_stamp: float
    credential_stamp: float


class Throttled(Exception):
    """A login refused before any hashing: why, and for how long."""

    def __init__(self, reason: str, message: str, wait: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.wait = wait


class LoginThrottle:
    """Failed logins on one listener, counted per client address and per credential id.

    A login that needs the KDF is charged as a failure before the hash runs
    and refunded if it succeeds, so concurrent guesses cannot all get in
    before the first one has failed; and only `max_hashing` of them from one
    address may hash at a time, the rest are refused at once rather than
    queued in front of other clients' logins.

    Past `limit` failures in `window` seconds an address is refused (429)
    until its oldest failure leaves the window, whatever it sends. Past
    `credential_limit` failures from any addresses, a credential id is
    refused for every secret that still needs the KDF; a secret this node
    has verified for it is still accepted, so a guesser spread over many
    addresses cannot lock out the credential's users who are signed in.
    """

    def __init__(self, clock, limit: int, window: float = 60.0, max_addresses: int = 100_000, *,
                 credential_limit: int | None = None, max_hashing: int = 2, metrics=None,
                 listener: str = "api") -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_hashing = max_hashing
        self.metrics = metrics
        self.listener = listener
        self.addresses = _Window(clock, limit, window, max_addresses)
        self.credentials = _Window(clock, credential_limit or 10 * limit, window, max_addresses)
        self.hashing: dict[str, int] = {}

    @property
    def failures(self) -> dict:
        """The failures counted per address (for inspection)."""
        return self.addresses.times

    def clear(self) -> None:
        self.addresses.clear()
        self.credentials.clear()

    def retry_after(self, address: str) -> float | None:
        """Seconds until this address may try again, or None if it may now."""
        return self.addresses.retry_after(address)

    def failed(self, address: str) -> None:
        self.addresses.charge(address)

    def check_address(self, address: str) -> None:
        """Throttled if this address may not log in at all right now."""
        wait = self.addresses.retry_after(address)
        if wait is not None:
            self._refused("address", f"Too many failed logins from {address}; try again in {wait:.0f} s.", wait)

    def begin(self, address: str, user: str) -> Attempt:
        """Charge a login that needs the KDF, or Throttled."""
        self.check_address(address)
        if self.hashing.get(address, 0) >= self.max_hashing:
            self._refused("concurrent", f"Too many logins from {address} at once; wait for the answers to "
                          "those in progress, then try again.", 1.0)
        credential = _credential_key(user)
        wait = self.credentials.retry_after(credential)
        if wait is not None:
            self._refused("credential", f"Too many failed logins for this credential id; try again in "
                          f"{wait:.0f} s, or sign in with a secret this node has accepted before.", wait)
        self.hashing[address] = self.hashing.get(address, 0) + 1
        return Attempt(address, credential, self.addresses.charge(address), self.credentials.charge(credential))

    def end(self, attempt: Attempt, ok: bool) -> None:
        """The attempt's hash is done: a success is refunded, a failure stays counted."""
        left = self.hashing.get(attempt.address, 1) - 1
        if left > 0:
            self.hashing[attempt.address] = left
        else:
            self.hashing.pop(attempt.address, None)
        if ok:
            self.addresses.refund(attempt.address, attempt.address_stamp)
            self.credentials.refund(attempt.credential, attempt.credential_stamp)
        elif self.metrics is not None:
            self.metrics.inc("logplex_logins_failed_total", listener=self.listener)

    def _refused(self, reason: str, message: str, wait: float):
        if self.metrics is not None:
            self.metrics.inc("logplex_logins_throttled_total", listener=self.listener, reason=reason)
        raise Throttled(reason, message, wait)


def _credential_key(user: str) -> bytes:
    # Any id a client sends is counted, known or not (so a 429 does not tell
    # which ids exist), under a short digest so a long one costs no memory.
    return hashlib.blake2b(user.encode("utf-8", "surrogatepass"), digest_size=16).digest()


BASIC_CHALLENGE = {b"www-authenticate": b"Basic realm=Logplex"}


async def login(auth: Authenticator, throttle: LoginThrottle, request, user: str, password: str) -> Credential:
    """The credential for user:password, or HttpError: 429 when the throttle refuses
    (decided before any KDF work), 401 for a wrong login."""
    address = client_address(request)
    try:
        throttle.check_address(address)
        cred = auth.remembered(user, password)
        if cred is not None:
            return cred
        attempt = throttle.begin(address, user)
    except Throttled as e:
        raise HttpError(429, e.message, {b"retry-after": b"%d" % max(1, round(e.wait))}) from None
    cred = None
    try:
        cred = await auth.check(user, password)
    finally:
        throttle.end(attempt, cred is not None)
    if cred is None:
        raise HttpError(401, "Invalid credentials.", BASIC_CHALLENGE)
    return cred


def client_address(request) -> str:
    """The key the throttle counts this request's client by."""
    address = request.getClientAddress()
    return throttle_key(getattr(address, "host", None) or str(address))
