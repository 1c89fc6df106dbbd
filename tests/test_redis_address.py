"""Redis URLs: their forms, their errors in one sentence without a secret, and at the command line (logplex/redis/address.py)."""

from __future__ import annotations

import string
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logplex.redis.address import BadRedisURL, RedisAddress, check_redis_url, parse_redis_url

# -- the URL forms -------------------------------------------------------------------------------
@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6380/2", RedisAddress(host="127.0.0.1", port=6380, db=2)),
    ("redis://:p%40ss@h", RedisAddress(host="h", password="p@ss")),
    ("redis://app:secret@h:7000", RedisAddress(host="h", port=7000, username="app", password="secret")),
    ("redis://app@h", RedisAddress(host="h", username="app")),
    ("redis://[::1]:7000/1", RedisAddress(host="::1", port=7000, db=1)),
    ("rediss://h", RedisAddress(host="h", tls=True)),
    ("rediss://h:6390/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
     RedisAddress(host="h", port=6390, tls=True, ca_certs="/ca.pem", certfile="/c.pem", keyfile="/k.pem")),
    ("rediss://h?ssl_cert_reqs=none", RedisAddress(host="h", tls=True, verify=False)),
    ("redis+sentinel://a:26380,b,[::1]:5/primary/3?sentinel_password=s%26p",
     RedisAddress(sentinels=(("a", 26380), ("b", 26379), ("::1", 5)), service="primary", db=3,
                  sentinel_password="s&p")),
    ("rediss+sentinel://u:p@a:1/svc", RedisAddress(sentinels=(("a", 1),), service="svc", tls=True,
                                                  username="u", password="p")),
    ("unix:///run/redis.sock?db=4", RedisAddress(path="/run/redis.sock", db=4)),
    ("unix:///run/redis.sock", RedisAddress(path="/run/redis.sock")),
])
def test_each_url_form(url, expected):
    address = parse_redis_url(url)
    assert address == expected
    assert (address.password, address.sentinel_password) == (expected.password, expected.sentinel_password)


@pytest.mark.parametrize("url, says", [
    ("http://h", "must have one of the forms"),
    ("h:6379", "must have one of the forms"),
    ("redis://", "names no host"),
    ("redis://h:0", "port that is not a number from 1 to 65535"),
    ("redis://h:99999", "port that is not a number from 1 to 65535"),
    ("redis://h:", "port that is not a number"),
    ("redis://h/one", "database number that is not a whole number"),
    ("redis://a,b", "only redis+sentinel:// takes a list"),
    ("redis://h?ssl_ca_certs=/x", "does not take"),
    ("rediss://h?ssl_ca_cert=/x", "'ssl_ca_cert' that rediss:// does not take"),
    ("rediss://h?ssl_certfile=/c", "a client certificate needs both"),
    ("rediss://h?ssl_cert_reqs=optional", "use required (the default) or none"),
    ("rediss://h?ssl_ca_certs=", "without a path"),
    ("rediss://h?ssl_cert_reqs=none&ssl_cert_reqs=none", "twice"),
    ("redis+sentinel://a:1", "names no Sentinel service"),
    ("redis+sentinel://a:1,,b:2/svc", "names no host"),
    ("unix://relative.sock", "names no socket path"),
    ("unix:///s.sock?db=x", "database number"),
    ("redis://[::1/0", "without its closing ]"),
])
def test_a_wrong_url_is_one_sentence_saying_what_is_wrong(url, says):
    with pytest.raises(BadRedisURL) as caught:
        parse_redis_url(url)
    assert says in str(caught.value)
    assert str(caught.value).endswith(".")


def test_tls_files_that_cannot_be_read_fail_at_start(tmp_path):
    with pytest.raises(BadRedisURL, match="No such file or directory"):
        check_redis_url(f"rediss://h?ssl_ca_certs={tmp_path}/missing.pem")
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate")
    with pytest.raises(BadRedisURL, match="holds no PEM certificate"):
        check_redis_url(f"rediss://h?ssl_ca_certs={empty}")


# -- hypothesis: malformed URLs, and secrets never shown -----------------------------------------
SECRET = "Zq9SECRETx7"
_printable = st.text(alphabet=string.printable + "é€", max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://", "unix://", ""]),
       _printable, _printable, _printable)
def test_any_text_parses_or_is_refused_with_bad_redis_url(scheme, a, b, c):
    url = f"{scheme}{a}:{SECRET}@{b}/{c}"
    try:
        address = parse_redis_url(url)
    except BadRedisURL as e:
        assert SECRET not in str(e)
    else:
        assert SECRET not in address.describe() and SECRET not in repr(address)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(alphabet=string.ascii_letters + "-_", max_size=12),
       st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65535),
       st.integers(0, 15), st.booleans())
def test_a_well_formed_url_round_trips(password, user, host, port, db, tls):
    url = f"{'rediss' if tls else 'redis'}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"
    address = parse_redis_url(url)
    assert (address.username or "", address.password, address.host, address.port, address.db, address.tls) == (
        user, password, host, port, db, tls)
    if len(password) >= 4:
        assert password not in address.describe().split("@")[-1]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + "!$&'()*+;=._~-", min_size=3, max_size=20))
def test_errors_never_show_a_password_or_sentinel_password(text):
    password = "ZQX" + text  # nothing else in the URLs looks like it
    for url in (f"redis://u:{password}@h:notaport/0", f"redis+sentinel://:{password}@a:1",
                f"rediss+sentinel://a:1/svc/x?sentinel_password={password}"):
        with pytest.raises(BadRedisURL) as caught:
            parse_redis_url(url)
        assert password not in str(caught.value)


# -- the command line ----------------------------------------------------------------------------
def options(*argv: str):
    from logplex.tap import Options

    o = Options()
    o.parseOptions(list(argv))
    return o


def test_the_command_line_refuses_a_wrong_redis_url_in_one_sentence():
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match=r"^Redis URL 'rediss://:\*\*\*@h/0\?ssl_cert_reqs=maybe' has "):
        options("--config-redis", "rediss://:pw@h/0?ssl_cert_reqs=maybe")
    with pytest.raises(UsageError, match="redis://h:notaport/0. has a port"):
        options("--shard-redis", "redis://h/0,redis://h:notaport/0")


def test_an_acl_user_without_a_password_needs_the_password_file(tmp_path):
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="names user 'app' but no password"):
        options("--config-redis", "redis://app@h/0")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    parsed = options("--config-redis", "redis://app@h/0", "--redis-password-file", str(secret))
    assert parsed["redis-password-file"] == str(secret)


def test_a_password_file_that_cannot_be_used_is_refused_at_start(tmp_path):
    from twisted.python.usage import UsageError

    with pytest.raises(UsageError, match="cannot be read"):
        options("--config-redis", "redis://h", "--redis-password-file", str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        options("--config-redis", "redis://h", "--redis-password-file", str(empty))
    with pytest.raises(UsageError, match="needs --config-redis"):
        options("--redis-password-file", str(empty))
