"""The bench's node processes: nodes (or --workers masters) started through the harness in process
groups of their own and ended with them (cleanup), which worker holds which loopback connection,
each worker's counters (WorkerScraper), and CPU and RSS summed over a process group.
"""

import os
import re
import http.client
import signal
import socket
import time

import ingest as ib  # bench/ingest.py (the harness's redis-server and node, /proc readers)

CONNS = "logplex_connections_total"
READY = re.compile(rb"\bnode_ready\b|\bready api=")
groups: list[int] = []  # process groups of the nodes we started (a master's workers share it)


# -- processes ----------------------------------------------------------------------------
def cleanup():
    """bench/ingest.py's cleanup (SIGTERM, wait, SIGKILL), then anything left in our nodes' groups."""
    ib.cleanup()
    for pgid in groups:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(1.0 if sig == signal.SIGTERM else 0)
    groups.clear()


def children(pid) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry))
    return sorted(out)


def safe(fn, pid, default=0.0):
    try:
        return fn(pid)
    except OSError:
        return default


def start_redis(tmp):
    server = ib.start_redis(tmp, "/usr/bin/redis-server")
    return server.process, server.port


def start_node(tmp, name, rport, history, workers=1):
    """A node (or a --workers master) on its own ports; returns (proc, ports, command, log path)."""
    node = ib.start_node(os.path.join(tmp, name), f"redis://127.0.0.1:{rport}/0", ["--history", str(history)],
                         name=name, workers=workers)
    proc, log_path = node.process, node.log_path
    ports = {"api": node.api_port, "logs": node.logs_port, "syslog": node.syslog_port}
    groups.append(proc.pid)  # a session of its own: its pgid is its pid
    # Every worker must be serving before senders connect: the master's listening
    # socket queues connections from the start, and the first worker to accept
    # would take them all. Each node logs one "ready" line once its inputs listen
    # ("node_ready ..." in this tree, "logplex <version> node=... ready api=..." before).
    ib.wait_for(lambda: len(READY.findall(open(log_path, "rb").read())) >= workers,
                f"node {name}: {workers} worker(s) ready", proc, timeout=90)
    return proc, ports, node.command(), log_path


def node_died(proc, log_path):
    if proc.poll() is not None:
        raise ib.NodeDied(f"a node exited with {proc.returncode}; its log ends:\n"
                          + open(log_path, errors="replace").read()[-3000:])


# -- which process holds which loopback connection ------------------------------------------
def tcp_table() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every TCP socket (v4 and v6)."""
    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            out.append((int(f[1].rpartition(":")[2], 16), int(f[2].rpartition(":")[2], 16), int(f[9])))
    return out


def socket_inodes(pid) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(int(target[8:-1]))
    except OSError:
        pass
    return out


def owner_of_peer(server_port, client_port, pids, table=None) -> int | None:
    """The pid among pids holding the server side of loopback connection client_port -> server_port."""
    table = tcp_table() if table is None else table
    inodes = {ino for lp, rp, ino in table if lp == server_port and rp == client_port and ino}
    for pid in pids:
        if inodes & socket_inodes(pid):
            return pid
    return None


class WorkerScraper:
    """/metrics of every worker separately.

    The workers share the API's listening socket, so a new connection reaches
    whichever worker accepts it first. We open keep-alive HTTP connections until
    every worker holds one, identify the holder from /proc/net/tcp (the server
    side's socket inode) and /proc/PID/fd, and keep one connection per worker.
    """

    def __init__(self, api_port: int, pids: list[int], attempts: int = 400) -> None:
        self.conns: dict[int, http.client.HTTPConnection] = {}
        spare = []
        for _ in range(attempts):
            if len(self.conns) == len(pids):
                break
            conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
            self._get(conn, "/healthcheck")  # accepted and answered: the owner holds it now
            owner = owner_of_peer(api_port, conn.sock.getsockname()[1], pids)
            if owner is not None and owner not in self.conns:
                self.conns[owner] = conn
            else:
                spare.append(conn)  # kept open meanwhile, so the next one is a new accept
        for conn in spare:
            conn.close()
        if len(self.conns) != len(pids):
            raise SystemExit(f"bench: reached {len(self.conns)} of {len(pids)} workers' APIs")

    @staticmethod
    def _get(conn, path) -> bytes:
        conn.request("GET", path, headers={"Authorization": ib.AUTH})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"bench: GET {path} answered {resp.status}")
        return body

    def scrape(self) -> dict[int, dict[str, float]]:
        out = {}
        for pid, conn in self.conns.items():
            values: dict[str, float] = {}
            for line in self._get(conn, "/metrics").decode().splitlines():
                if line and not line.startswith("#"):
                    name_labels, _, value = line.rpartition(" ")
                    name = name_labels.partition("{")[0]
                    values[name] = values.get(name, 0) + float(value)
            out[pid] = values
        return out

    def close(self):
        for conn in self.conns.values():
            conn.close()



def connect_all(port, pids, n, balance, attempts=200):
    """n connections to the shared syslog port; returns (sockets, pid of the worker holding each)."""
    def owner(sock):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = owner_of_peer(port, sock.getsockname()[1], pids)
            if pid is not None:
                return pid
            time.sleep(0.01)
        raise SystemExit("bench: a syslog connection was never accepted by a worker")

    socks = [ib.socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    owners = [owner(s) for s in socks]
    share = -(-n // len(pids))
    for _ in range(attempts if balance else 0):
        counts = {pid: owners.count(pid) for pid in pids}
        crowded = [i for i, pid in enumerate(owners) if counts[pid] > share]
        if not crowded:
            break
        i = crowded[0]
        socks[i].close()
        socks[i] = ib.socket.create_connection(("127.0.0.1", port))
        owners[i] = owner(socks[i])
    return socks, owners


def preconnected_sender(sock, *args):
    """bench/ingest.py's sender, on a socket opened by the parent (this is a forked child:
    patching the socket module here changes nothing in the parent)."""
    ib.socket.create_connection = lambda *a, **kw: sock
    ib.sender(0, *args)


# -- processes and /proc (bench/peers.py, memory.py, capacity.py) -------------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry))
    return sorted(out)


def cpu_of(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += ib.cpu_seconds(pid)
        except OSError:
            pass
    return total


def rss_of(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += ib.rss_mib(pid)
        except OSError:
            pass
    return total


def socket_owner(server_port: int, sock: socket.socket, pids: list[int]) -> int | None:
    """Which of pids holds the server side of our loopback connection (/proc/net/tcp inode)."""
    client_port, inode = sock.getsockname()[1], None
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == client_port:
            inode = f[9]
    if inode in (None, "0"):
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


def connect(port: int, n: int, workers: list[int] | None) -> tuple[list[socket.socket], list[int]]:
    """n connections; with workers, reopened until each worker holds its share; (sockets, owners)."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    if not workers:
        return socks, []

    def owner(s):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (pid := socket_owner(port, s, workers)) is not None:
                return pid
            time.sleep(0.01)
        raise SystemExit("bench: a connection was never accepted by a worker")

    owners = [owner(s) for s in socks]
    share = -(-n // len(workers))
    for _ in range(200):
        crowded = [i for i, pid in enumerate(owners) if owners.count(pid) > share]
        if not crowded:
            break
        socks[crowded[0]].close()
        socks[crowded[0]] = socket.create_connection(("127.0.0.1", port))
        owners[crowded[0]] = owner(socks[crowded[0]])
    return socks, owners
