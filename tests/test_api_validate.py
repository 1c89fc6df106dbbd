"""What the API accepts as channel ids, token names, numbers and drain URLs."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logplex.api import validate
from logplex.http.routing import HttpError


@pytest.mark.parametrize("url", [
    "https://logs.example.com/drain?key=1", "http://user:pw@example.com:8080/x",
    "syslog://logs.example.com:514", "syslog+tls://logs.example.com:6514",
    "syslog://logs.example.com", "syslog+tls://logs.example.com",  # ports 601 and 6514, as in logplex
])
def test_good_drain_urls(url):
    assert validate.drain_url(url, allow_private=False) == url


@pytest.mark.parametrize("url", [
    "", "example.com", "ftp://example.com/", "https://",
    "http://example.com:notaport/", 42, None,
])
def test_bad_drain_urls_are_422(url):
    with pytest.raises(HttpError) as e:
        validate.drain_url(url, allow_private=True)
    assert e.value.status == 422


@pytest.mark.parametrize("url", ["syslog+udp://logs.example.com:514", "udpsyslog://logs.example.com"])
def test_udp_drains_are_refused_saying_why_and_what_to_use(url):
    with pytest.raises(HttpError) as e:
        validate.drain_url(url, allow_private=True)
    assert e.value.status == 422
    assert "lost without a trace" in e.value.message and "syslog+tls://" in e.value.message


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


@pytest.mark.parametrize("url", [
    "http://100.100.100.200/latest/meta-data", "https://100.64.0.1/", "http://100.127.255.255/",
    "http://[2002:7f00:1::]/", "http://[2002:808:808::1]/", "http://[fec0::1]/", "http://[fec0::1%25eth0]/",
    "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/", "http://[64:ff9b:1::808:808]/",
    "http://[::ffff:100.100.100.200]/", "http://[::7f00:1]/", "http://[::ffff:0:7f00:1]/",
    "http://[2001::1]/", "http://[2001:db8::1]/", "http://[3fff::1]/", "http://198.18.0.1/",
    "http://192.0.0.170/", "http://192.0.2.1/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://224.0.0.1/", "http://[ff0e::1]/", "http://192.88.99.1/", "http://localhost./",
])
def test_addresses_that_are_not_globally_routable_are_refused(url):
    with pytest.raises(HttpError) as e:
        validate.drain_url(url, allow_private=False)
    assert e.value.status == 422
    assert "--allow-private-drains" in e.value.message
    assert validate.drain_url(url, allow_private=True) == url


@pytest.mark.parametrize("url", [
    "http://8.8.8.8/", "http://[2606:4700::1]/", "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::808:808]/",
    "http://192.0.0.9/",
])
def test_public_addresses_are_accepted(url):
    assert validate.drain_url(url, allow_private=False) == url


def embeddings(v4: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 addresses that carry v4: IPv4-mapped, NAT64, 6to4, IPv4-compatible."""
    n = int(v4)
    return [ipaddress.IPv6Address((0xFFFF << 32) | n),
            ipaddress.IPv6Address((0x64FF9B << 96) | n),
            ipaddress.IPv6Address((0x2002 << 112) | (n << 80)),
            ipaddress.IPv6Address(n)]


@given(st.ip_addresses(v=4))
def test_an_address_refused_in_ipv4_is_refused_in_every_ipv6_embedding(v4):
    if validate.is_public_address(v4):
        return
    for v6 in embeddings(v4):
        assert not validate.is_public_address(v6), v6
        assert validate.is_private_host(f"[{v6}]"), v6


@given(st.ip_addresses())
def test_what_is_public_is_global_unicast(address):
    if validate.is_public_address(address):
        assert address.is_global and not address.is_multicast
        assert not validate.is_private_host(str(address))


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
