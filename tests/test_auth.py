"""Tests for logplex.auth (header parsing, the memoizing Authenticator) and logplex.secrets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from logplex import secrets
from logplex.auth import Authenticator, parse_basic, parse_bearer
from logplex.model import ANY_CHANNEL, Credential
from logplex.redis.config import ConfigCache

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

    def test_an_unknown_user_is_none_without_a_check(self):
        self.assertIsNone(self.successResultOf(self.auth.verify("nobody", "right")))
        self.assertEqual(self.checks, [])

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

        from logplex.auth import LoginThrottle, login
        from logplex.web import HttpError

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

    from logplex.auth import LoginThrottle

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

    from logplex.auth import LoginThrottle

    throttle = LoginThrottle(Clock(), limit=1, max_addresses=100)
    for n in range(1000):
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle.failures) == 100
