"""--workers: the default count (one per usable CPU when the node owns its listeners) and the master's sockets."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from logplex import workers
from logplex.settings import Settings
from logplex.node import LogplexNode
from logplex.tap import Options, makeService
from logplex.workers import WorkerMaster, default_workers, reuseport_sockets, shareable, usable_cpus


@pytest.mark.parametrize("changes", [
    {},
    {"syslog": ("tcp:6001", "tcp6:6002:interface=\\:\\:1")},
    {"api": "ssl:8001:privateKey=k.pem:certKey=c.pem"},
    {"logs": "haproxy:tcp:8601"},
    {"syslog-token": (("t.abc", "TCP:6010:interface=127.0.0.1"),)},
])
def test_a_node_that_owns_its_listeners_runs_one_worker_per_cpu(changes):
    choice = default_workers(Settings.from_options(changes), cpus=6)
    assert choice.count == 6 and choice.reason == "one per CPU this process may use (6)"


@pytest.mark.parametrize("changes, named", [
    ({"syslog": ("tcp:6001", "unix:/run/logplex.sock")}, "syslog listener unix:/run/logplex.sock"),
    ({"api": "systemd:domain=INET:index=0"}, "api listener systemd:domain=INET:index=0"),
    ({"logs": "haproxy:unix:/run/logs.sock"}, "logs listener haproxy:unix:/run/logs.sock"),
    ({"manhole": "tcp:2222", "manhole-keys": "keys"}, "--manhole"),
])
def test_a_node_that_cannot_share_its_listeners_or_has_a_manhole_runs_one_process(changes, named):
    choice = default_workers(Settings.from_options(changes), cpus=6)
    assert choice.count == 1 and named in choice.reason


def test_shareable_listeners_are_tcp_tcp6_and_ssl_also_behind_haproxy():
    assert [shareable(d) for d in ("tcp:1", "TCP6:1", "ssl:1", "haproxy:ssl:1", "unix:/x", "systemd:index=0")] \
        == [True, True, True, True, False, False]


def test_usable_cpus_are_the_affinity_mask_not_the_machines_count(monkeypatch):
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
    assert usable_cpus() == 2
    # Where the OS has no affinity call: the machine's count (and never 0).
    monkeypatch.delattr(workers.os, "sched_getaffinity")
    assert usable_cpus() == 64
    monkeypatch.setattr(workers.os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


def _service(args, monkeypatch, cpus=3):
    monkeypatch.delenv(workers.WORKER_ENV, raising=False)
    monkeypatch.setattr(workers, "usable_cpus", lambda: cpus)
    options = Options()
    options.parseOptions(args)
    return makeService(options, MemoryReactorClock())


def test_twistd_logplex_with_no_workers_option_is_a_master_of_one_worker_per_cpu(monkeypatch, tmp_path):
    service = _service(["--data-dir", str(tmp_path)], monkeypatch)
    # No --config-redis: the master runs the embedded Redis its workers use.
    assert isinstance(service, WorkerMaster) and service.count == 3 and service.embedded is not None


def test_an_explicit_workers_option_wins_and_one_is_a_single_process(monkeypatch, tmp_path):
    assert _service(["--data-dir", str(tmp_path), "--workers", "5"], monkeypatch).count == 5
    assert isinstance(_service(["--data-dir", str(tmp_path), "--workers", "1"], monkeypatch), LogplexNode)
    # One CPU: one process, not a master of one worker.
    assert isinstance(_service(["--data-dir", str(tmp_path)], monkeypatch, cpus=1), LogplexNode)


def test_a_node_that_must_be_one_process_is_one_by_default(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    service = _service(["--data-dir", str(tmp_path), "--manhole", "tcp:2222", "--manhole-keys", str(keys)],
                       monkeypatch)
    assert isinstance(service, LogplexNode)


def test_asking_for_workers_where_they_cannot_work_is_a_usage_error_that_says_why(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("")
    for args, said in ((["--manhole", "tcp:2222", "--manhole-keys", str(keys)], "--manhole opens an admin shell"),
                       (["--syslog", "unix:/run/x.sock"], "the syslog listener unix:/run/x.sock cannot be shared")):
        with pytest.raises(usage.UsageError) as refused:
            Options().parseOptions(["--workers", "2", *args])
        assert said in str(refused.value) and "Give --workers 1" in str(refused.value)
        Options().parseOptions(["--workers", "1", *args])


def test_the_master_opens_one_socket_per_worker_on_one_port():
    socks = reuseport_sockets(MemoryReactorClock(), "tcp:0:interface=127.0.0.1", 3)
    try:
        assert len({s.getsockname() for s in socks}) == 1 and len(socks) == 3
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("reuse_port", [False, True])
def test_the_master_does_not_join_another_processs_listener_on_its_port(reuse_port):
    # Another node's master listens there with SO_REUSEPORT, or anything else without it.
    with socket.socket() as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError) as refused:
            reuseport_sockets(MemoryReactorClock(), f"tcp:{port}:interface=127.0.0.1", 2)
        assert refused.value.errno == errno.EADDRINUSE
