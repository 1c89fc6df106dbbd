"""README's quick start, as a newcomer runs it: the CLI, logger, a tail and a drain to examples/drain-receiver.py."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys

import pytest

from tests.harness.cluster import wait_until
from tests.harness.procs import REPO_ROOT, NodeProcess, free_port
from tests.tools import skip_missing


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def quickstart_node(tmp_path, redis):
    node = NodeProcess(str(tmp_path / "node"), redis.url, ["--allow-private-drains"])
    node.start()
    yield node
    node.stop()


def test_a_channel_a_line_a_tail_and_a_drain_as_the_readme_shows(quickstart_node, tmp_path):
    if shutil.which("logger") is None:
        skip_missing("logger", "apt-get install bsdutils")
    node = quickstart_node
    env = dict(node.environment(), LOGPLEX_AUTH="admin:secret", LOGPLEX_URL=node.api_url)

    def logplex(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "logplex.admin.cli", *args], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def logger(text: str) -> None:
        subprocess.run(["logger", "--server", "127.0.0.1", "--port", str(node.syslog_port), "--tcp",
                        "--octet-count", "--rfc5424", "--tag", token, text], check=True, timeout=30)

    channel = f"myapp-{free_port()}"
    token = re.search(r"^\s*app\s+(t\.\S+)$", logplex("channels", "create", channel, "--token", "app"), re.M)[1]
    logger("hello")
    lines = wait_until(lambda: logplex("logs", channel), lambda out: "app: hello" in out, 10, "the line in logs")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+\+00:00 app: hello\n", lines), lines

    port = free_port()
    receiver = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "examples", "drain-receiver.py"), str(port)],
                                stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: listening(port), bool, 10, "the receiver listening")
        logplex("drains", "add", channel, f"syslog://127.0.0.1:{port}")
        logger("to the drain too")
        assert select.select([receiver.stdout], [], [], 10)[0], "the receiver printed nothing within 10 s"
        received = receiver.stdout.readline()
        assert re.fullmatch(r"<13>1 \S+ d\.\S+ app - - - to the drain too\n", received), received
    finally:
        receiver.kill()
        receiver.wait()
