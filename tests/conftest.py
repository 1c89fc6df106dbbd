"""Shared pytest fixtures: the repository root on sys.path and a real Redis per test."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.integration.procs import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A started redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(str(tmp_path / "redis"))
    server.start()
    yield server
    server.stop()
