"""Tests for logplex.http.auth (header parsing, the memoizing Authenticator) and logplex.secrets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from logplex import secrets
from logplex.http.auth import Authenticator, parse_basic, parse_bearer
from logplex.model import ANY_CHANNEL, Credential
from logplex.config.cache import ConfigCache

# Cheap scrypt parameters: the tests are about behaviour, not cost.
N = 2**4


def basic(raw: bytes) -> bytes:
    return b"Basic " + base64.b64encode(raw)


# --- parse_basic / parse_bearer ---------------------------------------------


@pytest.mark.parametrize("header, expected", [
    (basic(b"token:t.abc"), ("token", "t.abc")),
    (basic(b"user:pa:ss"), ("user", "pa:ss")),          # only the first colon splits
    (basic(b"user:"), ("user", "")),
    (basic(b":secret"), ("", "secret")),
    (basic("jos\u00e9:p\u00e4ss".encode()), ("jos\u00e9", "p\u00e4ss")),
    (b"basic " + base64.b64encode(b"a:b"), ("a", "b")),  # the scheme is case-insensitive
    (b"  Basic   " + base64.b64encode(b"a:b") + b"  ", ("a", "b")),
])
def test_parse_basic_good(header, expected):
    assert parse_basic(header) == expected


@pytest.mark.parametrize("header", [
    None,
    b"",
    b"Basic",
    b"Basic ",
    b"Basic !!!!",                      # not base64
    b"Basic " + base64.b64encode(b"a:b")[:-1],  # bad padding
    basic(b"no-colon"),
    basic(b"\xff\xfe:\x80"),             # not UTF-8
    b"Bearer t.abc",
    b"Digest " + base64.b64encode(b"a:b"),
    b"Basic\t" + base64.b64encode(b"a:b"),
])
def test_parse_basic_bad(header):
    assert parse_basic(header) is None


@pytest.mark.parametrize("header, expected", [
    (b"Bearer t.abc", "t.abc"),
    (b"bearer   t.abc  ", "t.abc"),
    (b"Bearer", None),
    (b"Bearer    ", None),
    (b"Bearer t.\xff", None),             # not ASCII
    (basic(b"token:t.abc"), None),
    (b"", None),
    (None, None),
])
def test_parse_bearer(header, expected):
    assert parse_bearer(header) == expected


@settings(max_examples=300)
@given(st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=60).map(lambda raw: b"Basic " + base64.b64encode(raw)),
    st.binary(max_size=60).map(lambda raw: b"Bearer " + raw),
))
def test_header_parsers_never_raise(header):
    pair = parse_basic(header)
    assert pair is None or (isinstance(pair[0], str) and isinstance(pair[1], str))
    token = parse_bearer(header)
    assert token is None or (isinstance(token, str) and token)


# --- secrets -----------------------------------------------------------------


def test_check_secret_accepts_the_right_secret_only():
    stored = secrets.hash_secret("s3cret", n=N)
    assert secrets.check_secret("s3cret", stored) is True
    assert secrets.check_secret("s3cret ", stored) is False
    assert secrets.check_secret("", stored) is False


def test_hashes_are_salted():
    assert secrets.hash_secret("same", n=N) != secrets.hash_secret("same", n=N)


def test_a_unicode_secret_round_trips():
    stored = secrets.hash_secret("p\u00e4ss\u2603", n=N)
    assert secrets.check_secret("p\u00e4ss\u2603", stored)
    assert not secrets.check_secret("pass\u2603", stored)


def _mangled(stored: str) -> list[str]:
    scheme, n, r, p, salt, digest = stored.split("$")
    return [
        "", "garbage", "$$$$$", "scrypt$16$8$1$salt",
        f"bcrypt${n}${r}${p}${salt}${digest}",
        f"scrypt$x${r}${p}${salt}${digest}",
        f"scrypt$15${r}${p}${salt}${digest}",          # n not a power of two
        f"scrypt$-16${r}${p}${salt}${digest}",
        f"scrypt${2**70}${r}${p}${salt}${digest}",
        f"scrypt${n}${r}${2**64}${salt}${digest}",
        f"scrypt${n}${r}${p}${salt}$",                # empty digest
        f"scrypt${n}${r}${p}${salt}$\u00e9\u00e9",     # not base64
        f"scrypt${n}${r}${p}${salt}${digest}$extra",
    ]


@pytest.mark.parametrize("stored", _mangled(secrets.hash_secret("s", n=N)))
def test_garbage_stored_strings_are_false_not_errors(stored):
    assert secrets.check_secret("s", stored) is False


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=0, max_size=7).map("$".join), st.text(max_size=8))
def test_check_secret_never_raises(stored, secret):
    assert secrets.check_secret(secret, stored) in (True, False)


def test_check_secret_rejects_a_lone_surrogate_secret_quietly():
    assert secrets.check_secret("\ud800", secrets.hash_secret("x", n=N)) is False


# --- Authenticator -------------------------------------------------------------


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cache = ConfigCache()
        self.cache.set_credential(
            "shuttle", Credential("shuttle", secrets.hash_secret("right", n=N), frozenset({ANY_CHANNEL})))
        self.checks: list[tuple[str, str]] = []
        self.auth = Authenticator(self.cache, reactor=None, check=self.counting_check)
        self.cache.set_credential(
            "other", Credential("other", secrets.hash_secret("other-secret", n=N), frozenset({ANY_CHANNEL})))

    def counting_check(self, secret: str, stored: str) -> bool:
        self.checks.append((secret, stored))
        return secrets.check_secret(secret, stored)

    def test_the_right_secret_is_checked_once_then_remembered(self):
        for _ in range(3):
            cred = self.successResultOf(self.auth.verify("shuttle", "right"))
            self.assertEqual(cred, self.cache.creds["shuttle"])
        self.assertEqual(len(self.checks), 1)

    def test_a_wrong_secret_is_none_even_after_the_right_one_was_remembered(self):
        self.assertIsNone(self.successResultOf(self.auth.verify("shuttle", "wrong")))
        self.successResultOf(self.auth.verify("shuttle", "right"))
        self.assertIsNone(self.successResultOf(self.auth.verify("shuttle", "wrong")))
        self.assertIsNotNone(self.successResultOf(self.auth.verify("shuttle", "right")))

    def test_an_unknown_user_pays_the_same_kdf_as_a_known_one(self):
        self.assertIsNone(self.successResultOf(self.auth.verify("nobody", "right")))
        ((secret, stored),) = self.checks
        # Against a dummy hash with the production cost, which no secret matches.
        self.assertEqual(stored.split("$")[:4], secrets.hash_secret("x").split("$")[:4])
        self.assertNotEqual(stored, self.cache.creds["shuttle"].secret_hash)
        self.assertFalse(secrets.check_secret("right", stored))

    def test_a_wrong_secret_pays_the_kdf_even_when_the_right_one_is_remembered(self):
        self.successResultOf(self.auth.verify("shuttle", "right"))
        self.assertIsNone(self.successResultOf(self.auth.verify("shuttle", "wrong")))
        self.assertEqual(len(self.checks), 2)

    def test_a_credential_rotated_while_its_hash_runs_is_refused(self):
        pending = defer.Deferred()
        auth = Authenticator(self.cache, reactor=None, check=lambda secret, stored: pending)
        d = auth.verify("shuttle", "right")
        self.cache.set_credential(
            "shuttle", Credential("shuttle", secrets.hash_secret("new", n=N), frozenset({ANY_CHANNEL})))
        pending.callback(True)
        self.assertIsNone(self.successResultOf(d))
        self.assertIsNone(auth.remembered("shuttle", "right"))

    def test_a_rotated_credential_is_checked_again(self):
        self.successResultOf(self.auth.verify("shuttle", "right"))
        self.cache.set_credential(
            "shuttle", Credential("shuttle", secrets.hash_secret("new", n=N), frozenset({ANY_CHANNEL})))
        self.assertIsNone(self.successResultOf(self.auth.verify("shuttle", "right")))
        self.assertIsNotNone(self.successResultOf(self.auth.verify("shuttle", "new")))
        self.assertIsNotNone(self.successResultOf(self.auth.verify("shuttle", "new")))
        self.assertEqual(len(self.checks), 3)

    def test_a_deleted_credential_is_refused_at_once(self):
        self.successResultOf(self.auth.verify("shuttle", "right"))
        self.cache.set_credential("shuttle", None)
        self.assertIsNone(self.successResultOf(self.auth.verify("shuttle", "right")))

    def test_an_asynchronous_check_is_awaited(self):
        pending = defer.Deferred()
        auth = Authenticator(self.cache, reactor=None, check=lambda secret, stored: pending)
        d = auth.verify("shuttle", "right")
        self.assertNoResult(d)
        pending.callback(True)
        self.assertEqual(self.successResultOf(d).id, "shuttle")

    def test_login_refuses_a_throttled_address_before_any_kdf_work(self):
        from twisted.internet.task import Clock
        from twisted.web.test.requesthelper import DummyRequest

        from logplex.http.auth import LoginThrottle, login
        from logplex.http.routing import HttpError

        from twisted.internet.address import IPv4Address

        throttle = LoginThrottle(Clock(), limit=2)
        request = DummyRequest([b""])
        request.client = IPv4Address("TCP", "192.0.2.9", 40000)

        def attempt(password):
            return defer.ensureDeferred(login(self.auth, throttle, request, "shuttle", password))

        self.assertEqual(self.successResultOf(attempt("right")).id, "shuttle")
        for _ in range(2):
            failure = self.failureResultOf(attempt("wrong"), HttpError)
            self.assertEqual(failure.value.status, 401)
            self.assertIn(b"www-authenticate", failure.value.headers)
        checks = len(self.checks)
        failure = self.failureResultOf(attempt("right"), HttpError)
        self.assertEqual(failure.value.status, 429)
        self.assertEqual(failure.value.headers[b"retry-after"], b"60")
        self.assertEqual(len(self.checks), checks)


def test_failed_logins_are_throttled_per_address_on_a_clock():
    from twisted.internet.task import Clock

    from logplex.http.auth import LoginThrottle

    clock = Clock()
    throttle = LoginThrottle(clock, limit=3, window=60)
    for _ in range(3):
        assert throttle.retry_after("192.0.2.1") is None
        throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 60
    assert throttle.retry_after("192.0.2.2") is None  # other addresses are not affected
    clock.advance(59)
    assert throttle.retry_after("192.0.2.1") == 1
    clock.advance(1)
    assert throttle.retry_after("192.0.2.1") is None


def test_the_throttle_forgets_the_oldest_address_rather_than_grow():
    from twisted.internet.task import Clock

    from logplex.http.auth import LoginThrottle

    throttle = LoginThrottle(Clock(), limit=1, max_addresses=100)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle.failures) == 100


# --- the throttle: charged before the KDF, per address (/64), per credential ------------------


def _request(host: str):
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([b""])
    request.client = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
    return request


class PendingChecks:
    """A KDF that answers only when told: (secret, stored, Deferred) per check in flight."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, defer.Deferred]] = []

    def __call__(self, secret: str, stored: str) -> defer.Deferred:
        d = defer.Deferred()
        self.pending.append((secret, stored, d))
        return d

    def answer_all(self) -> None:
        pending, self.pending = self.pending, []
        for secret, stored, d in pending:
            d.callback(secrets.check_secret(secret, stored))


class LoginThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from logplex.metrics import Metrics

        self.clock = Clock()
        self.cache = ConfigCache()
        for user in ("shuttle", "other"):
            self.cache.set_credential(
                user, Credential(user, secrets.hash_secret(user + "-secret", n=N), frozenset({ANY_CHANNEL})))
        self.kdf = PendingChecks()
        self.auth = Authenticator(self.cache, reactor=None, check=self.kdf,
                                  dummy_hash=secrets.hash_secret("dummy", n=N))
        self.metrics = Metrics()
        from logplex.http.auth import LoginThrottle

        self.throttle = LoginThrottle(self.clock, limit=10, metrics=self.metrics, listener="api")

    def login(self, user: str, password: str, host: str = "192.0.2.1") -> defer.Deferred:
        from logplex.http.auth import login

        return defer.ensureDeferred(login(self.auth, self.throttle, _request(host), user, password))

    def status(self, d: defer.Deferred) -> int:
        from logplex.http.routing import HttpError

        from twisted.python.failure import Failure

        self.assertTrue(d.called, "the login is still waiting")
        if isinstance(d.result, Failure):
            return self.failureResultOf(d, HttpError).value.status
        self.successResultOf(d)
        return 200

    def test_concurrent_guesses_hash_at_most_two_at_a_time_the_rest_are_429_at_once(self):
        guesses = [self.login("shuttle", f"guess-{n}") for n in range(1000)]
        self.assertEqual(len(self.kdf.pending), 2)
        refused = [d for d in guesses if d.called]
        self.assertEqual(len(refused), 998)
        self.assertEqual({self.status(d) for d in refused}, {429})
        self.assertEqual(self.metrics.get("logplex_logins_throttled_total", listener="api", reason="concurrent"), 998)
        # Another address and another credential are not held up.
        other = self.login("other", "other-secret", host="192.0.2.2")
        self.assertEqual(len(self.kdf.pending), 3)
        self.kdf.answer_all()
        self.assertEqual(self.successResultOf(other).id, "other")
        self.assertEqual([self.status(d) for d in guesses if d not in refused], [401, 401])
        self.assertEqual(self.metrics.get("logplex_logins_failed_total", listener="api"), 2)

    def test_failures_are_charged_before_the_hash_and_a_success_is_refunded(self):
        for round_ in range(5):
            attempts = [self.login("shuttle", f"guess-{round_}-{n}") for n in range(2)]
            # The charges stand while the hashes run.
            self.assertEqual(len(self.throttle.failures["192.0.2.1"]), 2 * round_ + 2)
            self.kdf.answer_all()
            self.assertEqual([self.status(d) for d in attempts], [401, 401])
        wait = self.login("shuttle", "shuttle-secret")
        self.assertEqual(self.status(wait), 429)
        self.assertEqual(self.kdf.pending, [])
        self.clock.advance(60)
        right = self.login("shuttle", "shuttle-secret")
        self.assertEqual(len(self.throttle.failures["192.0.2.1"]), 1)  # charged up front...
        self.kdf.answer_all()
        self.assertEqual(self.successResultOf(right).id, "shuttle")
        self.assertNotIn("192.0.2.1", self.throttle.failures)  # ... and refunded

    def test_a_remembered_secret_needs_no_hash_and_no_charge(self):
        d = self.login("shuttle", "shuttle-secret")
        self.kdf.answer_all()
        self.successResultOf(d)
        for _ in range(50):
            self.assertEqual(self.successResultOf(self.login("shuttle", "shuttle-secret")).id, "shuttle")
        self.assertEqual(self.kdf.pending, [])
        self.assertEqual(self.throttle.failures, {})

    def test_a_credential_guessed_from_many_addresses_is_refused_new_secrets_but_not_its_known_one(self):
        known = self.login("shuttle", "shuttle-secret", host="198.51.100.1")
        self.kdf.answer_all()
        self.successResultOf(known)
        statuses = []
        for n in range(30):
            d = self.login("shuttle", "guess", host=f"203.0.113.{n}")
            self.kdf.answer_all()
            statuses.append(self.status(d))
        self.assertEqual(statuses, [401] * 30)
        for n in range(30, 110):
            d = self.login("shuttle", "guess", host=f"203.0.113.{n}")
            self.kdf.answer_all()
            statuses.append(self.status(d))
        self.assertEqual(statuses.count(401), 100)  # ten times the per-address limit
        self.assertEqual(statuses[-10:], [429] * 10)
        self.assertEqual(self.metrics.get("logplex_logins_throttled_total", listener="api", reason="credential"), 10)
        # A new secret (the right one too, if this node has not seen it) waits;
        # the secret the node verified is accepted, and other ids are not affected.
        self.assertEqual(self.status(self.login("shuttle", "another", host="198.51.100.2")), 429)
        self.assertEqual(self.successResultOf(self.login("shuttle", "shuttle-secret", host="198.51.100.3")).id,
                         "shuttle")
        other = self.login("other", "other-secret", host="198.51.100.4")
        self.kdf.answer_all()
        self.assertEqual(self.successResultOf(other).id, "other")

    def test_an_ipv6_client_is_throttled_by_its_64(self):
        for n in range(10):
            d = self.login("shuttle", "guess", host=f"2001:db8:1:2::{n + 1:x}")
            self.kdf.answer_all()
            self.assertEqual(self.status(d), 401)
        self.assertEqual(self.status(self.login("shuttle", "guess", host="2001:db8:1:2:ffff::9")), 429)
        d = self.login("shuttle", "guess", host="2001:db8:1:3::1")
        self.kdf.answer_all()
        self.assertEqual(self.status(d), 401)

    def test_the_throttles_of_two_listeners_are_separate(self):
        from logplex.http.auth import LoginThrottle, login

        logs = LoginThrottle(self.clock, limit=10, listener="logs")
        statuses = []
        for _ in range(12):
            d = defer.ensureDeferred(login(self.auth, logs, _request("192.0.2.1"), "shuttle", "guess"))
            self.kdf.answer_all()
            statuses.append(self.status(d))
        self.assertEqual(statuses, [401] * 10 + [429] * 2)
        api = self.login("shuttle", "shuttle-secret")
        self.kdf.answer_all()
        self.assertEqual(self.successResultOf(api).id, "shuttle")


@settings(max_examples=200)
@given(st.ip_addresses(v=6), st.integers(min_value=0, max_value=2**64 - 1))
def test_every_address_of_an_ipv6_64_is_one_client(address, low):
    import ipaddress

    from logplex.http.auth import throttle_key

    if address.ipv4_mapped is not None:
        assert throttle_key(str(address)) == str(address.ipv4_mapped)
        return
    same = ipaddress.IPv6Address((int(address) >> 64 << 64) | low)
    prefix = ipaddress.IPv6Address(int(address) >> 64 << 64)
    assert throttle_key(str(address)) == throttle_key(str(same)) == f"{prefix}/64"
    neighbour = ipaddress.IPv6Address(int(address) ^ (1 << 64))
    assert throttle_key(str(neighbour)) != throttle_key(str(address))


@pytest.mark.parametrize("host, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::1", "::/64"),
    ("/run/logplex.sock", "/run/logplex.sock"),
])
def test_throttle_keys(host, key):
    from logplex.http.auth import throttle_key

    assert throttle_key(host) == key
