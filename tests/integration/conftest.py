"""Real nodes shared by a test module (the clients they use are in tests.harness.client).

One redis-server serves the whole session; each module gets its own nodes
on it, so channel names are made unique per test rather than per node.
"""

from __future__ import annotations

import uuid

import pytest

from tests.harness.client import create_credential, start_node, stop_node
from tests.harness.procs import RedisServer


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis(tmp_path_factory):
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(tmp_path_factory, redis):
    """The module's node: drains to loopback allowed, two syslog listeners."""
    n = start_node(tmp_path_factory, redis, "--allow-private-drains", syslog_listeners=2)
    yield n
    stop_node(n)


@pytest.fixture(scope="module")
def public_node(tmp_path_factory, redis):
    """A node as deployed on the internet: no drains to private addresses."""
    n = start_node(tmp_path_factory, redis)
    yield n
    stop_node(n)


@pytest.fixture(scope="module")
def small_body_node(tmp_path_factory, redis):
    n = start_node(tmp_path_factory, redis, "--max-body", "4096")
    yield n
    stop_node(n)


@pytest.fixture(scope="session")
def limited_credentials(redis):
    """{"api_only": (user, secret) with full_api only, "poster": any_channel only}."""
    creds = {
        "api_only": ("api-only-" + uuid.uuid4().hex[:8], "api-only-secret"),
        "poster": ("poster-" + uuid.uuid4().hex[:8], "poster-secret"),
    }
    create_credential(redis, *creds["api_only"], "full_api")
    create_credential(redis, *creds["poster"], "any_channel")
    return creds
