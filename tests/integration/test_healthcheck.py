"""/healthcheck names each Redis dependency's state, and answers 503 only while the node cannot route logs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from tests.harness.client import http_request, make_key, ssh, start_node, stop_node, wait_for
from tests.harness.procs import REPO_ROOT, NodeProcess, RedisServer, free_port


def health(port: int, path: str = "/healthcheck"):
    try:
        answer = http_request(port, "GET", path, timeout=2)
    except OSError:
        return None
    return answer


def state(port: int, path: str = "/healthcheck") -> tuple[int, dict] | None:
    answer = health(port, path)
    return None if answer is None else (answer.status, answer.json())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A config Redis, one shard Redis and a node; the node stops with a grace of 1 s."""
    config = RedisServer(str(tmp_path_factory.mktemp("config")))
    shard = RedisServer(str(tmp_path_factory.mktemp("shard")))
    config.start()
    shard.start()
    node = NodeProcess(str(tmp_path_factory.mktemp("node")), config.url,
                       ["--shard-redis", shard.url, "--stop-grace", "1"])
    try:
        node.start()
        yield config, shard, node
    finally:
        node.kill()
        shard.stop()
        config.stop()


def test_a_serving_node_is_normal_with_every_redis_up(cluster):
    _, _, node = cluster
    expected = (200, {"status": "normal", "config_redis": "up", "shards": {"shard-0": "up"}})
    assert state(node.api_port) == expected
    assert state(node.api_port, "/v3/healthcheck") == expected
    answer = health(node.logs_port)
    assert (answer.status, answer.body) == (200, b"OK")


def test_a_shard_down_is_named_and_the_node_stays_in_the_balancer(cluster):
    _, shard, node = cluster
    shard.stop()
    try:
        seen = wait_for(lambda: state(node.api_port), lambda s: s and s[1]["shards"] == {"shard-0": "down"})
        # Tails and drains still get every line: 200, so a balancer keeps the
        # node (every node shares the shard: taking all out would lose all).
        assert seen == (200, {"status": "degraded", "config_redis": "up", "shards": {"shard-0": "down"}})
        answer = health(node.logs_port)
        assert (answer.status, answer.body) == (200, b"OK")
    finally:
        shard.restart()
    seen = wait_for(lambda: state(node.api_port), lambda s: s and s[1]["status"] == "normal", timeout=10)
    assert seen == (200, {"status": "normal", "config_redis": "up", "shards": {"shard-0": "up"}})


def test_the_config_redis_down_is_named(cluster):
    config, _, node = cluster
    config.stop()
    try:
        seen = wait_for(lambda: state(node.api_port), lambda s: s and s[1]["config_redis"] == "down")
        assert seen == (200, {"status": "degraded", "config_redis": "down", "shards": {"shard-0": "up"}})
    finally:
        config.restart()
    seen = wait_for(lambda: state(node.api_port), lambda s: s and s[1]["status"] == "normal", timeout=10)
    assert seen[1] == {"status": "normal", "config_redis": "up", "shards": {"shard-0": "up"}}


def test_a_booting_node_answers_503_booting_with_its_config_redis_down(tmp_path):
    node = NodeProcess(str(tmp_path), f"redis://127.0.0.1:{free_port()}/0", ["--redis-timeout", "0.5"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
    with open(node.out_path, "ab") as out:
        proc = subprocess.Popen(node.command(), cwd=str(tmp_path), env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        seen = wait_for(lambda: state(node.api_port), lambda s: s is not None, timeout=30)
        assert seen == (503, {"status": "booting", "config_redis": "down", "shards": {}}), node.log_text()[-2000:]
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_is_503_stopping_on_both_listeners(cluster):
    # Last in this module: it stops the module's node.
    _, _, node = cluster
    node._proc.send_signal(signal.SIGTERM)
    seen = wait_for(lambda: state(node.api_port), lambda s: s and s[0] == 503, timeout=1)
    assert seen == (503, {"status": "stopping", "config_redis": "up", "shards": {"shard-0": "up"}})
    answer = health(node.logs_port)
    assert (answer.status, answer.body) == (503, b"STOPPING")
    assert node.stop() in (0, -signal.SIGTERM)


@pytest.mark.skipif(shutil.which("ssh") is None and not os.environ.get("CI"), reason="OpenSSH client not installed")
def test_the_admin_shells_ingress_switch_takes_the_node_out_of_the_balancer(tmp_path_factory, redis):
    keys = tmp_path_factory.mktemp("keys")
    key = make_key(str(keys / "admin"))
    authorized = keys / "authorized_keys"
    authorized.write_bytes(open(key + ".pub", "rb").read())
    port = free_port()
    node = start_node(tmp_path_factory, redis, "--manhole", f"tcp:{port}", "--manhole-keys", str(authorized))
    try:
        assert ssh(port, key, "deny_logs_ingress(True)").returncode == 0
        seen = state(node.api_port)
        assert seen[0] == 503 and seen[1]["status"] == "ingress off", seen
        answer = health(node.logs_port)
        assert (answer.status, answer.body) == (503, b"INGRESS OFF")
        assert ssh(port, key, "deny_logs_ingress(False)").returncode == 0
        assert state(node.api_port)[1]["status"] == "normal"
    finally:
        stop_node(node)
