"""A node that cannot start says why in one line and exits non-zero, instead of a traceback and 0."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.harness.client import wait_for
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


def test_a_worker_that_is_still_booting_answers_requests_once_booted_never_503(tmp_path, redis):
    # Under --workers every worker's socket takes connections from the start. Worker 1 is
    # stopped in its boot while worker 0 serves: the connections the kernel gives worker 1
    # wait in its socket, and once it runs again it used to answer them 503 SYSTEM BOOTING,
    # to a client whose last request worker 0 had just served.
    node = NodeProcess(str(tmp_path / "node"), redis.url, workers=2)
    starting = threading.Thread(target=node.start)
    starting.start()
    found = wait_for(lambda: re.search(r"worker_started index=1 pid=(\d+)", node.log_text()), timeout=30)
    assert found, node.log_text()
    worker = int(found.group(1))
    os.kill(worker, signal.SIGSTOP)
    try:
        starting.join()
        assert node.process is not None, "worker 0 did not become healthy"
        assert "node_ready" in node.log_text() and node.log_text().count("node_ready") == 1

        def put(n: int) -> int:
            # From an address of its own: the login throttle lets one address hash only
            # two logins at a time, and worker 1 has verified none yet.
            connection = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=30,
                                                    source_address=(f"127.0.0.{n + 2}", 0))
            try:
                connection.request("PUT", f"/v3/channels/booting-{n}", json.dumps({"tokens": ["app"]}),
                                   {"Authorization": "Basic " + base64.b64encode(b"admin:secret").decode()})
                return connection.getresponse().status
            finally:
                connection.close()

        with ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(put, n) for n in range(16)]
            # Each on a connection of its own: the ones worker 1 got wait for it.
            wait_for(lambda: sum(a.done() for a in answers), lambda n: n >= 1, timeout=10)
            waiting = sum(not a.done() for a in answers)
            os.kill(worker, signal.SIGCONT)
            statuses = [a.result() for a in answers]
        assert waiting > 0, "no request reached the stopped worker"
        assert statuses == [201] * 16
    finally:
        os.kill(worker, signal.SIGCONT)
        node.stop()
