"""Shared pytest fixtures: the repository root on sys.path and a real Redis per test."""

import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from tests.harness.procs import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    """A started redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(str(tmp_path / "redis"))
    server.start()
    yield server
    server.stop()


def pytest_terminal_summary(terminalreporter):
    """One line at the end naming what was skipped for lack of a tool (README: 'Running the tests')."""
    from tests.tools import missing_tools

    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reasons.append(str(report.longrepr[2]))
    missing = missing_tools(reasons)
    if missing:
        listed = "; ".join(f"{what}: {n} test{'s' if n > 1 else ''}" for what, n in sorted(missing.items()))
        terminalreporter.write_line(f"skipped for lack of a tool: {listed}")
