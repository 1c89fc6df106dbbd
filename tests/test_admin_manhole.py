"""The admin shell's endpoint: loopback unless an interface is named, in every spelling of tcp and tcp6."""

import pytest
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.python import usage

from logplex.admin.manhole import loopback_only
from logplex.listen import normalised
from logplex.tap import Options


def bound(description: str) -> tuple[type, str]:
    endpoint = serverFromString(None, normalised(loopback_only(description)))
    return type(endpoint), endpoint._interface


@pytest.mark.parametrize("description, expected", [
    ("tcp:2222", (TCP4ServerEndpoint, "127.0.0.1")),
    ("TCP:2222", (TCP4ServerEndpoint, "127.0.0.1")),
    ("tcp6:2222", (TCP6ServerEndpoint, "::1")),
    ("TCP6:2222", (TCP6ServerEndpoint, "::1")),
    ("Tcp6:2222:backlog=5", (TCP6ServerEndpoint, "::1")),
    ("tcp6:2222:50", (TCP6ServerEndpoint, "::1")),
    # Named, by keyword or position: kept as given.
    ("tcp:2222:interface=0.0.0.0", (TCP4ServerEndpoint, "0.0.0.0")),
    ("tcp:2222:10.0.0.1", (TCP4ServerEndpoint, "10.0.0.1")),
    ("tcp6:2222:interface=\\:\\:", (TCP6ServerEndpoint, "::")),
    ("tcp6:2222:50:\\:\\:", (TCP6ServerEndpoint, "::")),
])
def test_a_tcp_shell_binds_loopback_unless_an_interface_is_named(description, expected):
    assert bound(description) == expected


def test_other_types_are_left_alone():
    assert loopback_only("unix:/run/logplex-admin.sock") == "unix:/run/logplex-admin.sock"


@pytest.mark.parametrize("description, says", [
    ("ssl:2222", "takes a tcp:, tcp6: or unix: endpoint"),
    ("tcp6:2222:interface=::1", "a colon inside a value is escaped with a backslash"),
    ("tcp:notaport", "is not an endpoint description"),
])
def test_a_shell_endpoint_that_cannot_work_is_refused_with_a_sentence(tmp_path, description, says):
    keys = tmp_path / "authorized_keys"
    keys.write_text("")
    with pytest.raises(usage.UsageError, match=says.replace(":", ".")):
        Options().parseOptions(["--manhole", description, "--manhole-keys", str(keys)])
