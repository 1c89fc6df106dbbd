"""Real redis-server and logplex node processes on free loopback ports, for integration tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from logplex.redis.embedded import find_redis_server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POLL = 0.05


def free_port() -> int:
    """A TCP port that nothing on this host binds right now, below the ephemeral range.

    A port the kernel hands out for bind(0) comes from the range it also gives
    outgoing connections, so one of them (a node dialling its Redis) could take
    it between this answer and the listener's bind: "Address already in use".
    Ports below that range are only ever taken by a bind that asks for them.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _ports.randrange(max(1024, low - 16384), low)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port below {low} after 200 tries")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    """Whether port can be bound on every IPv4 and IPv6 address (tests listen on either)."""
    families = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if socket.has_ipv6 else [])
    for family, host in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((host, port))
        except OSError:
            if family == socket.AF_INET:
                return False
            # A host without IPv6 cannot bind "::" at all: that says nothing of the port.
            if _ipv6_usable():
                return False
    return True


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


# Seeded apart per process: two test runs at once start from different ports.
_ports = random.Random(os.getpid() ^ time.time_ns())


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


class RedisServer:
    """A real redis-server on a free loopback TCP port, in a temp dir, with no persistence."""

    def __init__(self, tmpdir: str, binary: str | None = None) -> None:
        self.dir = os.path.abspath(str(tmpdir))
        self.binary = binary  # a redis-server to run; None: the one logplex's embedded Redis finds
        self.log_path = os.path.join(self.dir, "redis.log")
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def process(self) -> subprocess.Popen | None:
        """The running redis-server (bench/ reads its CPU from /proc and polls it)."""
        return self._proc

    def start(self, timeout: float = 15) -> None:
        """Start on a new free port, retrying when another process took it."""
        os.makedirs(self.dir, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            if self._launch(timeout):
                return
        raise RuntimeError(
            f"redis-server did not start on a free port after 5 tries:\n"
            f"{_tail(self.log_path)}"
        )

    def restart(self, timeout: float = 15) -> None:
        """Stop and start again on the same port (clients see a dropped connection)."""
        self.stop()
        if not self._launch(timeout):
            raise RuntimeError(
                f"redis-server did not restart on port {self.port}:\n"
                f"{_tail(self.log_path)}"
            )

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def _end(self, sig: int) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        _wait_exit(proc, 10)

    def _launch(self, timeout: float) -> bool:
        """Start on self.port; False if redis-server exited (port taken)."""
        args = [
            self.binary or find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", self.log_path,
        ]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if _redis_pings(self.port):
                return True
            time.sleep(POLL)
        self.kill()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{timeout} s:\n{_tail(self.log_path)}"
        )


def _twistd_command() -> list[str]:
    # `python -m twisted` is the newer `twist` runner, not twistd.
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class NodeProcess:
    """A real `twistd -n logplex` process with its api, logs and syslog
    listeners on free loopback ports.

    Give each node its own tmpdir: it holds node.log, node.out (stdout and
    stderr) and data/ (the embedded Redis when redis_url is None).
    """

    def __init__(
        self,
        tmpdir: str,
        redis_url: str | None,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        *,
        workers: int | None = 1,
        cpus: Sequence[int] | None = None,
        code: str | None = None,
        session: bool = False,
        data_dir: str | None = None,
        logfile: bool = True,
    ) -> None:
        self.dir = os.path.abspath(str(tmpdir))
        self.redis_url = redis_url
        self.extra_args = list(extra_args)
        # --workers to pass when extra_args has none; None: the node's own default (one per CPU).
        self.workers = workers
        # The CPUs the node may run on (its affinity mask); None: this process's.
        self.cpus = None if cpus is None else list(cpus)
        # The tree whose logplex/ runs (first on PYTHONPATH); None: this checkout.
        self.code = code or REPO_ROOT
        # A session (and process group) of its own, so that bench/ can sum the CPU of its workers.
        self.session = session
        self.out_path = os.path.join(self.dir, "node.out")
        # twistd's log in a file of its own, or (logfile=False) on stdout with what the workers
        # print, all in node.out: bench/ counts the workers' ready lines there.
        self.logfile = logfile
        self.log_path = os.path.join(self.dir, "node.log") if logfile else self.out_path
        # A node restarted in another tmpdir keeps its data when given the same data_dir.
        self.data_dir = data_dir or os.path.join(self.dir, "data")
        self._pick_ports()
        self.name = name or f"node-{self.api_port}"
        self._proc: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def logs_url(self) -> str:
        """Base URL of the HTTP ingress listener (POST to logs_url + "/logs")."""
        return f"http://127.0.0.1:{self.logs_port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def process(self) -> subprocess.Popen | None:
        return self._proc

    def _pick_ports(self) -> None:
        self.api_port = free_port()
        self.logs_port = free_port()
        self.syslog_port = free_port()

    def command(self) -> list[str]:
        args = [
            *_twistd_command(),
            "-n",
            "--pidfile=",
            *([f"--logfile={self.log_path}"] if self.logfile else []),
            "logplex",
            "--api", f"tcp:{self.api_port}:interface=127.0.0.1",
            "--logs", f"tcp:{self.logs_port}:interface=127.0.0.1",
            "--syslog", f"tcp:{self.syslog_port}:interface=127.0.0.1",
        ]
        if self.redis_url is not None:
            args += ["--config-redis", self.redis_url]
        args += [
            "--data-dir", self.data_dir,
            "--auth", "admin:secret",
            "--node-name", self.name,
            # Tests stop many nodes: no grace period unless a test asks for one
            # (a later --stop-grace in extra_args wins).
            "--stop-grace", "0",
        ]
        if self.workers is not None and not any(arg.startswith("--workers") for arg in self.extra_args):
            # One process, as the tests were written for (per-process /metrics,
            # logs, pids), unless a test asks for workers: the node's default
            # is one worker per CPU.
            args += ["--workers", str(self.workers)]
        return [*args, *self.extra_args]

    def start(self, timeout: float = 30) -> None:
        """Start and wait until /healthcheck answers 200; on failure raise
        with the tail of node.log.  Ports are picked again if one was taken."""
        os.makedirs(self.dir, exist_ok=True)
        for attempt in range(3):
            if attempt:
                self._pick_ports()
            if self._launch(timeout):
                return
            if "Address already in use" not in self.log_text():
                break
        raise RuntimeError(
            f"logplex node {self.name} did not become healthy "
            f"(command: {' '.join(self.command())}).\n"
            f"--- node.out\n{_tail(self.out_path)}\n"
            f"--- node.log\n{_tail(self.log_path)}"
        )

    def environment(self) -> dict[str, str]:
        """The environment a node runs in: its code (this checkout) first on PYTHONPATH."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.code, env.get("PYTHONPATH")) if p)
        return env

    def healthy(self) -> bool:
        """Whether /healthcheck answers 200 now (a subclass asks as its API listener wants)."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/healthcheck", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _launch(self, timeout: float) -> bool:
        with open(self.out_path, "ab") as out:
            cpus = self.cpus
            self._proc = subprocess.Popen(
                self.command(), cwd=self.dir, env=self.environment(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=self.session,
                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self.healthy():
                return True
            time.sleep(POLL)
        self.kill()
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Signal the node and return its exit code; a node still running
        after timeout seconds is killed and reported as an error."""
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return _wait_exit(proc, timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"logplex node {self.name} did not exit within {timeout} s of "
                f"signal {sig}, so it was killed.\n{_tail(self.log_path)}"
            ) from None

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_text(self) -> str:
        """Everything the node logged so far, and what it printed."""
        parts = []
        for path in dict.fromkeys((self.out_path, self.log_path)):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    parts.append(f.read())
            except OSError:
                pass
        return "\n".join(parts)


# -- Redis as production runs it: TLS, ACL users, passwords, Sentinel ------------------------------
class RespError(Exception):
    """An error reply from Redis."""


class Resp:
    """A minimal blocking RESP2 client over TCP or TLS, for tests to set servers up and look
    inside them (ACL, CONFIG, SENTINEL, KEYS, PUBSUB, SUBSCRIBE)."""

    def __init__(self, port: int, *, tls=None, username: str | None = None,
                 password: str | None = None, timeout: float = 5.0) -> None:
        import ssl

        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            context = ssl.create_default_context(cafile=tls.ca_path)
            if tls.client is not None:
                context.load_cert_chain(tls.client.cert_path, tls.client.key_path)
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.file = sock.makefile("rb")
        if password is not None:
            self(*(["AUTH", username, password] if username else ["AUTH", password]))

    def send(self, *args) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def read(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self.file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.read() for _ in range(size)]
        raise RespError(f"unexpected reply {line!r}")

    def __call__(self, *args):
        self.send(*args)
        return self.read()

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


class RedisTLS:
    """The TLS set-up of an OperatedRedis: its certificate, the CA, and a client certificate if asked for."""

    def __init__(self, server, ca_path: str, client=None, auth_clients: bool = False) -> None:
        self.server = server  # tests.harness.certs.Issued
        self.ca_path = ca_path
        self.client = client  # an Issued used as the client's certificate, or None
        self.auth_clients = auth_clients


class OperatedRedis(RedisServer):
    """A redis-server as operators run it: TLS only, a password, replication, or a sentinel.

    Extra configuration goes in as command-line directives; `call` talks to
    it the way the server wants (TLS, AUTH) from the test.
    """

    def __init__(self, tmpdir: str, *, tls: RedisTLS | None = None, password: str | None = None,
                 extra: Sequence[str] = (), sentinel: bool = False) -> None:
        super().__init__(tmpdir)
        self.tls = tls
        self.password = password
        self.extra = list(extra)
        self.sentinel = sentinel

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        query = f"?ssl_ca_certs={self.tls.ca_path}" if self.tls else ""
        if self.tls and self.tls.client:
            query += f"&ssl_certfile={self.tls.client.cert_path}&ssl_keyfile={self.tls.client.key_path}"
        return f"{scheme}://127.0.0.1:{self.port}/0{query}"

    def call(self, *args, username: str | None = None, password: str | None = None):
        password = self.password if password is None and username is None else password
        client = Resp(self.port, tls=self.tls, username=username, password=password)
        try:
            return client(*args)
        finally:
            client.close()

    def _pings(self) -> bool:
        try:
            self.call("PING")
            return True
        except (OSError, ConnectionError):
            return False
        except RespError as e:
            return "NOAUTH" in str(e) or "WRONGPASS" in str(e)

    def _launch(self, timeout: float) -> bool:
        if self.sentinel:
            # A sentinel rewrites its configuration file: it needs one of its own.
            conf = os.path.join(self.dir, f"sentinel-{self.port}.conf")
            with open(conf, "w") as f:
                f.write("\n".join(self.extra) + "\n")
            args = [self.binary or find_redis_server(), conf, "--sentinel"]
        else:
            args = [self.binary or find_redis_server()]
        args += ["--bind", "127.0.0.1", "--dir", self.dir, "--daemonize", "no",
                 "--logfile", self.log_path]
        if not self.sentinel:
            args += ["--save", "", "--appendonly", "no", *self._directives()]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", self.tls.server.cert_path,
                     "--tls-key-file", self.tls.server.key_path,
                     "--tls-ca-cert-file", self.tls.ca_path,
                     "--tls-auth-clients", "yes" if self.tls.auth_clients else "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            if self._pings():
                return True
            time.sleep(POLL)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s:\n"
                           f"{_tail(self.log_path)}")

    def _directives(self) -> list[str]:
        out = []
        for line in self.extra:
            name, _, value = line.partition(" ")
            out += [f"--{name}", *value.split()]
        return out
