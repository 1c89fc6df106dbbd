"""What the API accepts as channel ids, token names, numbers and drain URLs."""

import pytest

from logplex.api import validate
from logplex.web import HttpError


@pytest.mark.parametrize("url", [
    "https://logs.example.com/drain?key=1", "http://user:pw@example.com:8080/x",
    "syslog://logs.example.com:514", "syslog+tls://logs.example.com:6514",
])
def test_good_drain_urls(url):
    assert validate.drain_url(url, allow_private=False) == url


@pytest.mark.parametrize("url", [
    "", "example.com", "ftp://example.com/", "syslog://example.com", "https://",
    "http://example.com:notaport/", 42, None,
])
def test_bad_drain_urls_are_422(url):
    with pytest.raises(HttpError) as e:
        validate.drain_url(url, allow_private=True)
    assert e.value.status == 422


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost:80/", "http://10.0.0.1/", "http://192.168.1.1/",
    "http://172.16.0.1/", "http://169.254.169.254/latest/meta-data", "syslog://[::1]:514",
    "http://[::ffff:10.0.0.1]/", "http://0.0.0.0/", "http://app.localhost/",
])
def test_private_destinations_are_refused_unless_allowed(url):
    with pytest.raises(HttpError) as e:
        validate.drain_url(url, allow_private=False)
    assert e.value.status == 422
    assert validate.drain_url(url, allow_private=True) == url


def test_token_names_become_app_names():
    assert validate.token_names(["web", "app", "web"]) == ["app", "web"]
    for bad in (["has space"], [""], ["x" * 49], [1], "app"):
        with pytest.raises(HttpError):
            validate.token_names(bad)


def test_numbers_accept_numeric_strings_and_clamp():
    assert validate.number("100", "num", 100, 0, 1500) == 100
    assert validate.number(None, "num", 100, 0, 1500) == 100
    assert validate.number(99999, "num", 100, 0, 1500) == 1500
    for bad in ("ten", True, 1.5, [1]):
        with pytest.raises(HttpError):
            validate.number(bad, "num", 100, 0, 1500)


def test_channel_ids():
    assert validate.channel_id("app-d23d5262-1234") == "app-d23d5262-1234"
    for bad in ("", "-x", "a b", "x" * 129, "a/b"):
        with pytest.raises(HttpError):
            validate.channel_id(bad)
