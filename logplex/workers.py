"""`--workers N`: one master holds the listening sockets, N worker processes serve them.

Each worker is a full node and a cluster member of its own (named
<node>-<i>), so a machine's cores are used through the same mechanism as a
cluster's nodes. The master opens every listener once and passes the
sockets down; the kernel spreads new connections over the workers. The
master runs the embedded Redis when there is one, restarts a worker that
dies, and on a graceful stop lets every worker spill its drains first.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

from logplex.errors import StartFailed
from logplex.listen import LISTEN_BACKLOG, behind_proxy, description_fields, proxied, server_endpoint
from logplex.process import exit_status_at_exit
from logplex.redis.embedded import EmbeddedRedis, EmbeddedRedisError
from logplex.settings import Settings

log = Logger()

WORKER_ENV = "LOGPLEX_WORKER"

# Listeners the master can open once per worker on one address (SO_REUSEPORT),
# also behind haproxy:. Others (unix:, systemd:, plugins) it cannot share.
SHAREABLE_TYPES = ("tcp", "tcp6", "ssl")


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one, else the machine's.

    The mask is what taskset, numactl, systemd's CPUAffinity= and a
    container's cpuset leave this process; os.cpu_count() counts the host's
    CPUs, and workers beyond the mask would only take turns on the same cores.
    (A CPU quota such as docker --cpus is in neither: give --workers there.)
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this OS
        return max(1, os.cpu_count() or 1)


def shareable(description: str) -> bool:
    """Whether the master can hand each worker its own socket on the listener's address."""
    return description_fields(proxied(description)[1])[0] in SHAREABLE_TYPES


def single_process_reason(settings: Settings) -> str | None:
    """Why the node must run in one process, as a sentence; None when it owns its listeners."""
    for kind, description in settings.listen.all():
        if not shareable(description):
            return (f"the {kind} listener {description} cannot be shared between worker processes "
                    f"(only tcp:, tcp6: and ssl: ones can, also behind haproxy:)")
    if settings.admin.manhole:
        return "--manhole opens an admin shell into one process, which would see one worker's share only"
    return None


@attrs.frozen
class WorkerCount:
    """How many worker processes a node runs, and why (logged at start)."""

    count: int
    reason: str


def default_workers(settings: Settings, cpus: int) -> WorkerCount:
    """--workers when none is given: one per usable CPU when the node owns its listeners, else 1."""
    reason = single_process_reason(settings)
    if reason is not None:
        return WorkerCount(1, reason)
    return WorkerCount(cpus, f"one per CPU this process may use ({cpus})")


@functools.cache
def _ignoring_hup() -> tuple[str, ...]:
    """The command prefix that starts a program with SIGHUP ignored (GNU env 8.31+), or (); probed once."""
    env = shutil.which("env")
    if env is None:
        return ()
    prefix = (env, "--ignore-signal=HUP")
    try:
        works = subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        works = False
    return prefix if works else ()


def worker_environment(settings: Settings, fds: list[int]) -> str:
    # As option values: the worker reads them back as a command line's.
    return json.dumps({"options": settings.options(), "fds": fds})


def settings_from_environment(raw: str) -> tuple[Settings, list[int]]:
    doc = json.loads(raw)
    return Settings.from_options(doc["options"]), doc["fds"]


def inherited_listeners(settings: Settings, fds: list[int]) -> dict[str, int]:
    """Endpoint description -> the listening socket a --workers master handed down for it."""
    return dict(zip([d for _, d in settings.listen.all()], fds))


def reuseport_sockets(reactor, description: str, count: int) -> list[socket.socket]:
    """count listening sockets on the description's address, all with SO_REUSEPORT.

    The address comes from the endpoint Twisted parses from the description
    (TCP or TLS over TCP); a port of 0 becomes the port the first one got.
    """
    endpoint = server_endpoint(reactor, proxied(description)[1])
    port = getattr(endpoint, "_port", None)
    if port is None or not shareable(description):
        raise ValueError(f"--workers needs TCP (or TLS) listeners; {description!r} is neither.")
    interface = getattr(endpoint, "_interface", "") or ""
    backlog = getattr(endpoint, "_backlog", LISTEN_BACKLOG)
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    if port:
        # SO_REUSEPORT would let this node join another process's listeners
        # on the same port (same user) and take half its connections without
        # a word; a plain bind fails where anyone listens, as a single
        # process's listen does.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
    out = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        port = sock.getsockname()[1]
        sock.listen(backlog)
        sock.setblocking(False)
        out.append(sock)
    return out


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """A listener whose socket the --workers master opened: listening serves that socket."""

    def __init__(self, reactor, description: str, fd: int) -> None:
        self.reactor = reactor
        self.description = description
        self.fd = fd

    def listen(self, factory) -> defer.Deferred:
        return defer.execute(adopt, self.reactor, self.description, self.fd, factory)


def adopt(reactor, description: str, fd: int, factory):
    """Serve an inherited listening socket as the endpoint description would.

    TLS endpoints are recreated from the description for their context (under
    the node's TLS policy, as in one process); the socket itself comes from
    the master.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory

    is_proxied, inner = proxied(description)
    endpoint = server_endpoint(reactor, inner)
    context = getattr(endpoint, "_sslContextFactory", None)
    if is_proxied:
        factory = behind_proxy(factory, context)
    elif context is not None:
        factory = TLSMemoryBIOFactory(context, False, factory)
    family = socket.socket(fileno=os.dup(fd)).family
    return reactor.adoptStreamPort(fd, family, factory)


class _Worker(ProcessProtocol):
    def __init__(self, master: WorkerMaster, index: int) -> None:
        self.master = master
        self.index = index
        self.ended = defer.Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)
        self.master._ended(self)


class WorkerMaster(MultiService):
    """The master of a --workers node: the listening sockets, the embedded Redis, and the worker processes."""

    def __init__(self, settings: Settings, workers: int, reactor, reason: str = "--workers") -> None:
        super().__init__()
        self.settings = settings
        self.count = workers
        self.reason = reason
        self.reactor = reactor
        self.workers: dict[int, _Worker] = {}
        self.transports: dict[int, object] = {}
        self.stopping = False
        self.restarts: dict[int, int] = {}
        # Per worker, its listening sockets (one per listener), once opened.
        self.sockets: list[list[socket.socket]] = []
        self.embedded = None
        if settings.redis.config is None:
            self.embedded = EmbeddedRedis(settings.node.data_dir, reactor=reactor)
            self.embedded.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        # SIGHUP re-reads --redis-password-file in the workers; without a
        # handler it would end the master.
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._forward_hup))
        except ValueError:
            pass  # not the main thread
        defer.ensureDeferred(self._start()).addErrback(self._failed)

    def _forward_hup(self) -> None:
        for transport in list(self.transports.values()):
            try:
                transport.signalProcess("HUP")
            except Exception:
                pass  # a worker that just ended

    def _failed(self, failure) -> None:
        if failure.check(StartFailed, EmbeddedRedisError):
            # A cause the operator can fix: one line that says what to do, as a single process says it.
            log.critical("node_start_failed reason={reason}", reason=str(failure.value))
        else:
            log.failure("master_start_failed", failure)
        # twistd exits 0 whatever happened; a node that could not start exits 1.
        exit_status_at_exit(1)
        self.reactor.callWhenRunning(self.reactor.stop)

    async def _start(self) -> None:
        log.info("workers count={count} reason={reason!r}", count=self.count, reason=self.reason)
        if self.embedded is not None:
            await self.embedded.whenReady()
            self.settings = attrs.evolve(
                self.settings, redis=attrs.evolve(self.settings.redis, config=self.embedded.url))
        # One listening socket per worker and listener, all bound to the same
        # address with SO_REUSEPORT: the kernel spreads connections over them.
        # (Workers accepting on one shared socket pile connections onto
        # whichever wakes first.)
        self.sockets: list[list[socket.socket]] = [[] for _ in range(self.count)]
        for kind, description in self.settings.listen.all():
            try:
                socks = reuseport_sockets(self.reactor, description, self.count)
            except OSError as e:
                raise StartFailed(
                    f"The {kind} listener cannot listen on {description}: {e.strerror or e}. Stop what "
                    f"uses that address, or give the node another one (--{kind})."
                ) from None
            for index, sock in enumerate(socks):
                self.sockets[index].append(sock)
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        node = self.settings.node
        settings = attrs.evolve(self.settings, node=attrs.evolve(node, name=f"{node.name}-{index}"))
        child_fds = {0: "r", 1: 1, 2: 2}
        inherited = []
        for n, sock in enumerate(self.sockets[index]):
            child_fds[3 + n] = sock.fileno()
            inherited.append(3 + n)
        env = dict(os.environ)
        env[WORKER_ENV] = worker_environment(settings, inherited)
        worker = _Worker(self, index)
        # SIGHUP is ignored until the worker's node installs its handler: a HUP forwarded
        # while the worker starts and imports would end it (the password file is read at boot
        # anyway). GNU env ignores it from before Python starts; the first statement, where
        # env cannot, from once Python runs.
        argv = [sys.executable, "-c",
                "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "logplex"]
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # A worker whose master died (even by SIGKILL) stops too, instead
            # of serving on as an orphan nobody supervises.
            argv = [setpriv, "--pdeathsig", "TERM", "--", *argv]
        argv = [*_ignoring_hup(), *argv]
        self.transports[index] = self.reactor.spawnProcess(
            worker, argv[0], argv, env=env, childFDs=child_fds)
        self.workers[index] = worker
        log.info("worker_started index={index} pid={pid} node={node}", index=index,
                 pid=self.transports[index].pid, node=settings.node.name)

    def _ended(self, worker: _Worker) -> None:
        index = worker.index
        if self.workers.get(index) is worker:
            del self.workers[index]
            self.transports.pop(index, None)
        if self.stopping:
            return
        self.restarts[index] = self.restarts.get(index, 0) + 1
        delay = min(30.0, 0.5 * 2 ** min(self.restarts[index], 6))
        log.warn("worker_ended index={index} restart_in={delay:.1f}", index=index, delay=delay)
        self.reactor.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self._spawn(index)

    def stopService(self):
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        waits = []
        for index, worker in list(self.workers.items()):
            transport = self.transports.get(index)
            if transport is not None:
                try:
                    transport.signalProcess("TERM")
                except Exception:
                    pass
            waits.append(worker.ended)
        # The workers hold their own copies of the listening sockets: closing
        # the master's now means that once the last worker closes its
        # listeners after --stop-grace, new connections are refused (and
        # retried elsewhere) instead of queued on a socket nobody accepts on.
        self._close_sockets()
        if waits:
            # Each worker serves for --stop-grace seconds, then spills its drains.
            timeout = task.deferLater(self.reactor, self.settings.node.stop_grace + 30, lambda: None)
            await defer.DeferredList([defer.DeferredList(waits), timeout], fireOnOneCallback=True)
        for index, transport in list(self.transports.items()):
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
        self._close_sockets()
        await defer.maybeDeferred(super().stopService)

    def _close_sockets(self) -> None:
        for socks in self.sockets:
            for sock in socks:
                sock.close()
