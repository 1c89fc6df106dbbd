"""A node that cannot start says why in one line and exits non-zero, instead of a traceback and 0."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request

from tests.harness.procs import NodeProcess


def run_to_exit(node: NodeProcess, timeout: float = 60) -> tuple[int, str]:
    """Run the node's command until it exits by itself: (exit status, what it logged)."""
    os.makedirs(node.dir, exist_ok=True)
    done = subprocess.run(node.command(), cwd=node.dir, env=node.environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)
    with open(node.log_path, encoding="utf-8", errors="replace") as f:
        return done.returncode, f.read() + done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def test_a_port_in_use_is_one_clear_line_and_a_non_zero_exit(tmp_path):
    node = NodeProcess(str(tmp_path / "node"), None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node.api_port))
        taken.listen()
        status, logged = run_to_exit(node)
    assert status == 1, logged
    failures = [line for line in logged.splitlines() if "node_start_failed" in line]
    assert len(failures) == 1, logged
    assert (f"The api listener cannot listen on tcp:{node.api_port}:interface=127.0.0.1: "
            "[Errno 98] Address already in use.") in failures[0]
    assert "(--api)" in failures[0]
    assert "Traceback" not in logged


def test_a_second_node_on_the_same_data_dir_exits_and_the_first_serves_on(tmp_path):
    first = NodeProcess(str(tmp_path / "first"), None)
    first.start()
    try:
        second = NodeProcess(str(tmp_path / "second"), None)
        second.data_dir = first.data_dir
        status, logged = run_to_exit(second)
        assert status == 1, logged
        assert "another logplex node (or its orphaned redis-server) is using the data directory" in logged
        assert "Traceback" not in logged
        # It bound none of its listeners and left the first node's Redis alone.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", second.api_port)) != 0
        with urllib.request.urlopen(f"{first.api_url}/healthcheck", timeout=5) as answer:
            assert answer.status == 200
    finally:
        first.stop()


def test_a_node_without_auth_says_the_api_will_refuse_everything_and_names_its_url(tmp_path):
    node = NodeProcess(str(tmp_path / "node"), None)
    command = node.command()
    at = command.index("--auth")
    del command[at:at + 2]
    os.makedirs(node.dir, exist_ok=True)
    proc = subprocess.Popen(command, cwd=node.dir, env=node.environment(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        logged = ""
        while "node_has_no_api_credential" not in logged and time.monotonic() < deadline:
            time.sleep(0.1)
            if os.path.exists(node.log_path):
                with open(node.log_path, encoding="utf-8", errors="replace") as f:
                    logged = f.read()
        assert "every API call will be refused (401) until one exists; start the node with --auth" in logged
        assert f"api_url=http://127.0.0.1:{node.api_port}" in logged
    finally:
        proc.terminate()
        proc.wait(30)
