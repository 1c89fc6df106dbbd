"""Issue #7: a logplex node against rsyslog and syslog-ng as relays, on identical load, in one run.

    /tmp/venv/bin/python bench/peers.py --seconds 15 --rounds 3
    /tmp/venv/bin/python bench/peers.py --seconds 5 --rounds 1 --only raw,rsyslog,b
    /work/venv/bin/python bench/peers.py --channels 10,1000,10000 --spread even,zipf \
        --only raw,rsyslog,sng-tcp,sng-http,a,b,c            # the cardinality axis (issue 14)

Paths, each measured at the sink (bench/loadgen.py's counting sink, C):

  raw        generator -> TCP sink (the ceiling of this host, no relay)
  rsyslog    rsyslog imtcp -> omfwd octet-counted TCP -> TCP sink
  sng-tcp    syslog-ng syslog() -> syslog() TCP, flags(flow-control) -> TCP sink
  sng-http   syslog-ng syslog() -> http() batches of 500 lines -> HTTP sink
  a          node: TCP ingest -> backlog (counted at the node's backlog writer: no sink)
  b          node: (a) + one HTTP drain per channel -> HTTP sink
  c          node: (b) + one live tail (a session on channel 0, read by its own process)
  e          node --workers 2: (b), the connections split evenly between the workers
  raw-http   log-shuttle POSTs -> HTTP sink (the ceiling for d)
  d          node: log-shuttle POST /logs -> backlog + one HTTP drain per channel -> HTTP sink

Every round runs every path twice, in a rotated order: once unlimited (max:
messages/s delivered in the window), then paced at --half of that figure
(latency, loss and CPU per message). Then, unless --no-loggen, syslog-ng's
loggen drives raw, rsyslog, sng-tcp, sng-http, a and b unlimited as a second,
independent generator.

The cardinality axis (issue 14): with --channels 10,1000,10000 and/or
--spread even,zipf, the node paths run once per (channels, spread) and the
relays once per round (a relay has no per-channel cost). Each connection's
frames then carry many tokens (several 1000-frame templates, each frame's
token chosen by the spread), one channel in --drain-every (10) has the HTTP
drain, node rows are counted at the node (backlog written + superseded) and
the drains checked at the sink; loggen, which feeds one channel, is left
out. rsyslog is apt-installed when missing; syslog-ng and
loggen are unpacked as the integration tests do. bench/PEERS.md says what every
figure means and holds the measured table; results go to bench/results/.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import re
import shlex
import signal
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cardinality  # noqa: E402  (spreads, ApiPool, create_channels)
import drains  # noqa: E402  (revision, read_json, metric names)
import ingest  # noqa: E402  (spawn, cleanup, free_port, http, metrics, cpu_seconds, ...)
import loadgen  # noqa: E402
from tests.harness import senders  # noqa: E402  (rsyslogd_path, SyslogNgTree, unpack_syslog_ng; ingest put the repository on sys.path)

RELAYS = ("rsyslog", "sng-tcp", "sng-http")
NODES = ("a", "b", "c", "e", "d")
ORDER = ("raw", "rsyslog", "sng-tcp", "sng-http", "a", "b", "c", "e", "raw-http", "d")
LOGGEN_PATHS = ("raw", "rsyslog", "sng-tcp", "sng-http", "a", "b")
DESCRIBE = {
    "raw": "generator -> TCP sink, no relay (ceiling)",
    "rsyslog": "rsyslog imtcp -> omfwd TCP octet-counted",
    "sng-tcp": "syslog-ng syslog() -> syslog() TCP, flow-control",
    "sng-http": "syslog-ng syslog() -> http(), batches of 500",
    "a": "logplex: TCP ingest -> backlog",
    "b": "logplex: (a) + HTTP drain per channel",
    "c": "logplex: (b) + one live tail",
    "e": "logplex --workers 2: (b)",
    "raw-http": "log-shuttle POSTs -> HTTP sink (ceiling for d)",
    "d": "logplex: log-shuttle POST /logs -> backlog + HTTP drain",
}
READY = re.compile(rb"\bnode_ready\b|\bready api=")
L11 = re.compile(rb"Error L11 .*?dropped (\d+) messages")
node_groups: list[int] = []


# -- the peers -----------------------------------------------------------------------------
def ensure_rsyslog() -> tuple[str | None, str]:
    """rsyslogd's path (apt-get installing Debian's package when missing), or None and why not."""
    path = senders.rsyslogd_path()
    if path is None:
        print("peers: rsyslogd missing; apt-get install -y rsyslog", file=sys.stderr, flush=True)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-q", "rsyslog"], check=True, timeout=900, env=env,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"rsyslog not installed and apt-get failed ({e}); rsyslog rows skipped"
        path = senders.rsyslogd_path()
        if path is None:
            return None, "apt-get install rsyslog gave no rsyslogd; rsyslog rows skipped"
    return path, senders.program_version([path, "-v"])


def ensure_syslog_ng() -> tuple[senders.SyslogNgTree | None, str]:
    """An unpacked syslog-ng + loggen (as the integration tests unpack it), or None and why not."""
    tree = senders.SyslogNgTree.find()
    if tree is None or tree.missing_libraries():
        print("peers: unpacking syslog-ng (apt-get download + dpkg -x)", file=sys.stderr, flush=True)
        try:
            tree = senders.unpack_syslog_ng(senders.writable_cache())
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            return None, f"syslog-ng could not be unpacked ({e}); syslog-ng and loggen rows skipped"
    return tree, tree.version()


RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="8k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{inp}" ruleset="relay")
ruleset(name="relay") {{
  action(type="omfwd" target="127.0.0.1" port="{out}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"""
SYSLOG_NG_CONF = """\
@version: {version}
options {{ stats-freq(0); keep-hostname(yes); keep-timestamp(yes); use-dns(no); log-fifo-size(100000); }};
log {{ source {{ internal(); }}; destination {{ file("{internal}"); }}; }};
source s_net {{ syslog(transport(tcp) ip("127.0.0.1") port({inp}) max-connections(16)
                      log-iw-size(160000) log-fetch-limit(1000)); }};
{destination}
log {{ source(s_net); destination(d_out); flags(flow-control); }};
"""
SYSLOG_NG_TCP = 'destination d_out {{ syslog("127.0.0.1" transport(tcp) port({out})); }};'
SYSLOG_NG_HTTP = """destination d_out {{
  http(url("http://127.0.0.1:{out}/logs") method("POST")
       headers("Content-Type: application/logplex-1")
       body("<${{PRI}}>1 ${{ISODATE}} ${{HOST}} ${{PROGRAM}} ${{PID}} ${{MSGID:--}} - ${{MSG}}")
       delimiter("\\n") batch-lines(500) batch-bytes(1048576) batch-timeout(100) workers(1));
}};"""


def start_relay(kind: str, tmp: str, inp: int, out: int, peers: dict) -> subprocess.Popen:
    if kind == "rsyslog":
        os.makedirs(os.path.join(tmp, "work"))
        conf = os.path.join(tmp, "rsyslog.conf")
        with open(conf, "w") as f:
            f.write(RSYSLOG_CONF.format(work=os.path.join(tmp, "work"), inp=inp, out=out))
        proc = ingest.spawn([peers["rsyslogd"], "-n", "-f", conf, "-i", os.path.join(tmp, "rsyslogd.pid")],
                            os.path.join(tmp, "relay.log"))
    else:
        tree = peers["syslog-ng"]
        dest = (SYSLOG_NG_TCP if kind == "sng-tcp" else SYSLOG_NG_HTTP).format(out=out)
        conf = os.path.join(tmp, "syslog-ng.conf")
        with open(conf, "w") as f:
            f.write(SYSLOG_NG_CONF.format(version=tree.config_version, internal=os.path.join(tmp, "internal.log"),
                                          inp=inp, destination=dest))
        proc = ingest.spawn([tree.syslog_ng, f"--module-path={tree.module_dir()}", "-F", "--no-caps", "-f", conf,
                             "-R", os.path.join(tmp, "persist"), f"--pidfile={os.path.join(tmp, 'sng.pid')}",
                             f"--control={os.path.join(tmp, 'sng.ctl')}"], os.path.join(tmp, "relay.log"), tree.env())
    ingest.wait_for(lambda: listening(inp), f"{kind} listening on {inp}", proc, timeout=30)
    return proc


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp: no connection is made)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].split(":")[1], 16) == port:
            return True
    return False


# -- the node ------------------------------------------------------------------------------
def start_redis(tmp: str, args) -> tuple[subprocess.Popen, int]:
    server = ingest.start_redis(tmp, args.redis_server)
    return server.process, server.port


def snapshot_code(source: str | None = None) -> tuple[str, str]:
    """A copy of this checkout's logplex/ and twisted/plugins/ (or those of the tree `source`),
    taken once: the tree is shared and may change during a run of 20+ minutes, and every node of
    one run must run the same code. Returns (directory for PYTHONPATH, revision)."""
    revision = drains.revision() if source is None else f"code from {source}"
    source = source or ingest.ROOT
    root = tempfile.mkdtemp(prefix="logplex-peers-code-")
    atexit.register(shutil.rmtree, root, True)  # not in ingest.tmp_dirs: cleanup() empties that after every run
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    shutil.copytree(os.path.join(source, "logplex"), os.path.join(root, "logplex"), ignore=ignore)
    shutil.copytree(os.path.join(source, "twisted"), os.path.join(root, "twisted"), ignore=ignore)
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(folder, name), "rb") as f:
                digest.update(os.path.relpath(os.path.join(folder, name), root).encode() + b"\0" + f.read())
    return root, f"{revision} (code sha256 {digest.hexdigest()[:12]})"


def start_node(tmp: str, args, rport: int, extra: list[str]):
    """A node on its own ports (as bench/drains.py starts one, plus a stable --node-name and data
    directory so that a restart on the same Redis is the same node); returns (process, api URL,
    ports, command, log)."""
    node = ingest.start_node(tempfile.mkdtemp(prefix="node-", dir=tmp), f"redis://127.0.0.1:{rport}/0",
                             ["--history", str(args.history), "--allow-private-drains", *extra],
                             name="bench", code=args.code, data_dir=os.path.join(tmp, "data"))
    node_groups.append(node.pid)
    ports = {"api": node.api_port, "logs": node.logs_port, "syslog": node.syslog_port}
    return node.process, node.api_url, ports, node.command(), node.log_path


# -- processes and /proc -------------------------------------------------------------------
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
            total += ingest.cpu_seconds(pid)
        except OSError:
            pass
    return total


def rss_of(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += ingest.rss_mib(pid)
        except OSError:
            pass
    return total


def cleanup():
    ingest.cleanup()
    for pgid in node_groups:  # a --workers master's workers, should any outlive it
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    node_groups.clear()


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
        raise SystemExit("peers: a connection was never accepted by a worker")

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


# -- the live tail of (c) ------------------------------------------------------------------
def tail_reader(port: int, path: str, stop, ready, out) -> None:
    """GET a tail session; count its lines and the L11 drops it is told of, until stop."""
    import select
    lines = l11 = 0
    error, rest, raw = None, b"", b""
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n\r\n"
                     % (path.encode(), ingest.AUTH.encode()))
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        head, _, raw = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"tail answered {head[:100]!r}")
        ready.set()
        left = 0  # bytes of the current chunk still to come; -N: the CRLF after it
        while not stop.is_set():
            body, pos, n = [], 0, len(raw)
            while pos < n:  # dechunk by offsets: slicing the rest at every chunk would be quadratic
                if left > 0:
                    piece = raw[pos:pos + left]
                    body.append(piece)
                    pos += len(piece)
                    left -= len(piece)
                    if left == 0:
                        left = -2
                elif left < 0:
                    take = min(-left, n - pos)
                    pos += take
                    left += take
                else:
                    eol = raw.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    left, pos = int(raw[pos:eol].split(b";")[0], 16), eol + 2
            raw = raw[pos:]
            text = rest + b"".join(body)
            cut = text.rfind(b"\n") + 1
            rest = text[cut:]
            lines += text.count(b"\n", 0, cut)
            if b"L11" in text:
                for m in L11.finditer(text, 0, cut):
                    l11 += int(m.group(1))
            if select.select([sock], [], [], 0.2)[0]:
                data = sock.recv(1 << 18)
                if not data:
                    break
                raw += data
    except Exception as e:
        error = repr(e)
        ready.set()
    out.put({"lines": lines, "l11_dropped": l11, "error": error, "cpu_s": loadgen._cpu()})


# -- one measured run ----------------------------------------------------------------------
def run_path(path: str, rate: float, gen: str, args, peers: dict, cell: tuple[int, str] | None = None) -> dict:
    """Set up one path, drive it for args.seconds, settle, measure; everything it started is stopped.
    cell: (channels, spread); without it, args.channels (an int) and connection i -> channel i."""
    tmp = tempfile.mkdtemp(prefix=f"logplex-peers-{path}-")
    ingest.tmp_dirs.append(tmp)
    channels, spread = cell or (args.channels, "conn")
    r: dict = {"path": path, "gen": gen, "rate": round(rate), "seconds": args.seconds,
               "channels": channels, "spread": spread}
    t0 = time.monotonic()
    try:
        return _run(path, rate, gen, args, peers, tmp, r)
    except (ingest.NodeDied, SystemExit, Exception) as e:  # one failed run must not end the others
        if isinstance(e, SystemExit) and not isinstance(e.code, str):
            raise  # SIGTERM or Ctrl-C: the whole run stops (a timed-out wait exits with a text)
        r["error"] = f"{type(e).__name__}: {e}"[-2000:]
        print(f"peers: {path} ({gen}, rate {round(rate) or 'max'}) failed: {r['error']}", file=sys.stderr)
        return r
    finally:
        cleanup()
        r["wall_s"] = round(time.monotonic() - t0, 1)  # setup, window, settle, teardown


def drain_every_of(args, spread: str) -> int:
    """One channel in how many gets a drain in (b), (c), (e), (d): --drain-every, else every channel
    with the old load (connection i -> channel i), one in ten with a spread."""
    every = getattr(args, "drain_every", None)
    return every if every else (1 if spread == "conn" else 10)


def _run(path, rate, gen, args, peers, tmp, r) -> dict:
    shuttle = path in ("raw-http", "d")
    n_channels, spread = r["channels"], r["spread"]
    drain_every = drain_every_of(args, spread) if path in ("b", "c", "e", "d") else 0
    # Counted at the node (backlog written + superseded), not at the sink, when the sink sees only
    # the drained channels' share: the drains are then checked against what was sent to them.
    by_node = path == "a" or (drain_every > 1 and path in NODES)
    if by_node and path == "e":
        raise SystemExit("(e) is counted at the sink (its workers answer /metrics in turn): use --drain-every 1")
    r["drain_every"] = drain_every
    sink_kind = None if path == "a" else ("http" if path in ("sng-http", "b", "c", "d", "e", "raw-http")
                                           else "syslog")
    sink = stats_path = None
    if sink_kind:
        sink_port, stats_path = ingest.free_port(), os.path.join(tmp, "sink.json")
        sink = ingest.spawn([peers["sink"], sink_kind, "--port", str(sink_port), "--stats", stats_path],
                            os.path.join(tmp, "sink.log"))
        ingest.wait_for(lambda: drains.read_json(stats_path) is not None, "sink", sink)

    target_pids, redis, node, api, workers, tail = [], None, None, None, None, None
    tokens = [f"t.{uuid.UUID(int=i)}" for i in range(n_channels)]  # the node's length: "t." + a UUID
    drained = set(range(0, n_channels, drain_every)) if drain_every else set()
    if path in ("raw", "raw-http"):
        port = sink_port
    elif path in RELAYS:
        port = ingest.free_port()
        relay = start_relay(path, tmp, port, sink_port, peers)
        target_pids = [relay.pid]
    else:
        node_args = (["--workers", "2"] if path == "e" else []) + args.node_arg
        redis, rport = start_redis(tmp, args)
        node, api, ports, node_cmd, node_log = start_node(tmp, args, rport, node_args)
        if path == "e":  # the workers share the API port: every one must answer
            ingest.wait_for(lambda: len(READY.findall(open(node_log, "rb").read())) >= 2,
                            "2 workers ready", node, timeout=90)
        made = cardinality.create_channels(api, n_channels, drain_every,
                                           f"http://127.0.0.1:{sink_port}/logs" if drain_every else None,
                                           getattr(args, "api_pool", 4))
        tokens, drain_urls = made.tokens, made.drain_paths
        r["setup"] = {"channels_s": made.channels_s, "drains": len(made.drain_paths), "drains_s": made.drains_s}
        if gen == "loggen":
            # loggen's APPNAME is not a token: restart the node (same Redis, same name) with a
            # listener whose every message goes to channel 0.
            node.terminate()
            node.wait(timeout=30)
            ingest.started.remove(node)
            lport = ingest.free_port()
            node, api, ports, node_cmd, node_log = start_node(
                tmp, args, rport, node_args + ["--syslog-token", f"{tokens[0]}=tcp:{lport}:interface=127.0.0.1"])
        r["setup"]["workers_s"] = cardinality.wait_for_drains(api, drain_urls, pool_size=getattr(args, "api_pool", 4))
        if path == "e":
            time.sleep(1.0)  # both workers have heard of the drains on the change feed
            workers = [p for p in group_pids(node.pid) if p != node.pid]
        target_pids = group_pids(node.pid)
        r["node_command"] = " ".join(map(shlex.quote, node_cmd))
        port = lport if gen == "loggen" else ports["logs"] if shuttle else ports["syslog"]
    ctx = multiprocessing.get_context("fork")
    if path == "c":
        _, body = ingest.http("POST", f"{api}/v3/sessions", {"channel_id": "bench-0", "tail": True, "num": 0})
        session = "/" + json.loads(body)["url"].split("/", 3)[3]
        stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
        tail = ctx.Process(target=tail_reader, daemon=True, args=(ports["api"], session, stop, ready, out))
        tail.start()
        ready.wait(30)

    # The generators: ours (one process per connection) or loggen (one process).
    go, results = ctx.Event(), ctx.Queue()
    procs, loggen = [], None
    if gen == "py":
        socks, owners = connect(port, args.connections, workers)
        if workers:
            r["connections_per_worker"] = [owners.count(w) for w in workers]
        per_conn = []
        for i, sock in enumerate(socks):
            token = tokens[i % len(tokens)]
            counted = None
            if spread == "conn":
                tmpl, frame_len = loadgen.template(token.encode(), i, args.size, shuttle=shuttle)
                per_conn.append([i % n_channels])
            else:  # each frame's token chosen by the spread, over several templates
                k = cardinality.templates_per_connection(n_channels, args.connections, spread)
                chans = cardinality.frame_channels(spread, n_channels, i, args.connections, k * loadgen.PER_TEMPLATE,
                                                   getattr(args, "zipf_s", 1.1), getattr(args, "seed", 1))
                tmpl, frame_len = loadgen.spread_templates([t.encode() for t in tokens], chans, i, args.size)
                counted = [[c in drained for c in chans[j:j + loadgen.PER_TEMPLATE]]
                           for j in range(0, len(chans), loadgen.PER_TEMPLATE)]
                per_conn.append(chans)
            if shuttle:
                target, extra = loadgen.shuttle_sender, (sock, token, tmpl, frame_len)
            else:
                target, extra = loadgen.tcp_sender, (sock, tmpl, frame_len)
            procs.append(ctx.Process(target=target, daemon=True, args=(
                *extra, args.seconds, rate / args.connections, go, results, i, *(() if counted is None else
                                                                                  (counted,)))))
            procs[-1].start()
            sock.close()  # the child holds it
        r["frame_bytes"] = frame_len
        r["load"] = cardinality.describe_load(per_conn, drained.__contains__)

    def sink_now():
        return (drains.read_json(stats_path) or {}) if stats_path else {}

    def node_count(m):  # (a): lines the backlog writer handled
        return m.get(ingest.WRITTEN, 0) + m.get(ingest.SUPERSEDED, 0)

    def delivered(snap_sink, snap_metrics):
        if by_node:
            return node_count(snap_metrics)
        return snap_sink.get("messages" if gen == "loggen" else "unique", 0)

    def snapshot():
        m = ingest.metrics(api) if by_node else {}
        gen_pids = [p.pid for p in procs] + ([loggen.pid] if loggen else [])
        return {"t": time.monotonic(), "target": cpu_of(target_pids), "redis": cpu_of([redis.pid] if redis else []),
                "sink": cpu_of([sink.pid] if sink else []), "gen": cpu_of(gen_pids),
                "sink_stats": sink_now(), "metrics": m}

    before = snapshot()
    mark = None
    rss = [rss_of(target_pids)]
    r["idle_rss_mib"] = round(rss[0], 1) if target_pids else None  # set up, before any load
    if gen == "loggen":
        tree = peers["syslog-ng"]
        argv = [tree.loggen, "-i", "-S", "-P", "-s", str(args.size), "-r", "100000000", "-I", str(int(args.seconds)),
                f"--active-connections={args.connections}", "127.0.0.1", str(port)]
        r["loggen_command"] = " ".join(map(shlex.quote, argv))
        loggen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=tree.env(),
                                  start_new_session=True)
        ingest.started.append(loggen)
    go.set()
    while time.monotonic() < before["t"] + args.seconds:
        time.sleep(0.25)
        rss.append(rss_of(target_pids))
        if node is not None and node.poll() is not None:
            raise ingest.NodeDied(f"the node exited with {node.returncode}")
        if mark is None and time.monotonic() >= before["t"] + min(2.0, args.seconds / 4):
            mark = snapshot()  # CPU % is measured from here: skips the ramp-up
    end = snapshot()
    sent, errors, gen_cpu, to_drains = 0, [], 0.0, 0
    if gen == "py":
        for _ in procs:
            index, n, error, cpu, *counted = results.get(timeout=120)
            sent += n
            gen_cpu += cpu
            to_drains += counted[0] if counted else 0
            if error:
                errors.append(f"connection {index}: {error}")
        for p in procs:
            p.join()
    else:
        output = loggen.communicate(timeout=args.seconds + 60)[0].decode(errors="replace")
        counts = re.findall(r"count=(\d+)", output)
        sent = int(counts[-1]) if counts else 0
        gen_cpu = end["gen"] - before["gen"]
        if loggen.returncode:
            errors.append(f"loggen exited {loggen.returncode}: {output[-500:]}")

    # Settle: until all that was sent arrived, or nothing moved for --settle s. Counted at the
    # node, the drains' share must have reached the sink too.
    def progress():
        now = delivered(sink_now(), ingest.metrics(api) if by_node else {})
        if by_node and sink is not None:
            at_sink = sink_now().get("unique", 0)
            return now + at_sink, now >= sent and at_sink >= to_drains
        return now, now >= sent

    last, still = progress()[0], time.monotonic()
    give_up = time.monotonic() + args.max_settle
    while time.monotonic() < give_up:
        time.sleep(0.25)
        rss.append(rss_of(target_pids))
        now, done = progress()
        if done:
            break
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= args.settle:
            break
    settled = snapshot()
    final = {}
    if tail is not None:
        stop.set()
        r["tail"] = out.get(timeout=30)
        tail.join()
    if sink is not None:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=30)
        final = drains.read_json(stats_path) or {}
    if path in NODES and path != "e":
        m0, m1 = before["metrics"] or {}, ingest.metrics(api)
        r["node_metrics"] = {k: m1.get(k, 0) - (m0.get(k, 0) if by_node else 0) for k in (
            ingest.ROUTED, ingest.WRITTEN, ingest.SUPERSEDED, ingest.DROPPED, drains.DELIVERED,
            drains.DRAIN_DROPPED, "logplex_drain_l10_total", "logplex_drain_retried_total")}

    window, span = end["t"] - before["t"], end["t"] - (mark or before)["t"]
    in_window = delivered(end["sink_stats"], end["metrics"]) - delivered(before["sink_stats"], before["metrics"])
    total = (delivered(settled["sink_stats"], settled["metrics"]) - delivered(before["sink_stats"], before["metrics"])
             if by_node else final.get("messages" if gen == "loggen" else "unique", 0))
    mark = mark or before
    lost = round(sent - total)
    if by_node and sink is not None:  # and what the drains owed the sink
        r.update(to_drains=to_drains, drained_at_sink=final.get("unique", 0),
                 drain_lost=to_drains - final.get("unique", 0))
        lost += r["drain_lost"]
    r.update({
        "sent": sent, "sent_per_s": round(sent / window), "window_s": round(window, 2),
        "delivered_in_window": in_window, "msgs_per_s": round(in_window / window),
        "delivered": total, "lost": lost, "settle_s": round(settled["t"] - end["t"], 1),
        "duplicates": final.get("duplicates"), "seq_holes": final.get("seq_holes"),
        "latency_p50_ms": final.get("latency_p50_ms"), "latency_p99_ms": final.get("latency_p99_ms"),
        "latency_max_ms": final.get("latency_max_ms"),
        "cpu_percent": round(100 * (end["target"] - mark["target"]) / span, 1) if target_pids else None,
        "us_per_msg": round(1e6 * (settled["target"] - before["target"]) / total, 2)
        if target_pids and total > 0 else None,
        "redis_cpu_percent": round(100 * (end["redis"] - mark["redis"]) / span, 1) if redis else None,
        "redis_us_per_msg": round(1e6 * (settled["redis"] - before["redis"]) / total, 2)
        if redis and total > 0 else None,
        "sink_cpu_percent": round(100 * (end["sink"] - mark["sink"]) / span, 1) if sink else None,
        "gen_cpu_percent": round(100 * gen_cpu / window, 1),
        "peak_rss_mib": round(max(rss), 1) if target_pids else None,
        "processes": len(target_pids), "errors": errors,
    })
    if sink is not None:
        r["sink"] = {k: final.get(k) for k in ("messages", "unique", "loggen", "requests", "connections",
                                                "out_of_order", "bad_markers")}
    return r


# -- rounds, summary, table ----------------------------------------------------------------
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def summarize(runs: list[dict], rounds: int) -> dict:
    out = {}
    for path in ORDER:
        mx = [r for r in runs if r["path"] == path and r["gen"] == "py" and r["phase"] == "max" and "error" not in r]
        half = [r for r in runs if r["path"] == path and r["phase"] == "half" and "error" not in r]
        lg = [r for r in runs if r["path"] == path and r["gen"] == "loggen" and "error" not in r]
        if not (mx or half or lg):
            continue
        out[path] = {
            "describe": DESCRIBE[path], "rounds": len(mx),
            "msgs_per_s": med(r["msgs_per_s"] for r in mx), "msgs_per_s_range": spread(r["msgs_per_s"] for r in mx),
            "sent_per_s_at_max": med(r["sent_per_s"] for r in mx),
            "lost_at_max": med(r["lost"] for r in mx),
            "cpu_percent_at_max": med(r["cpu_percent"] for r in mx),
            "peak_rss_mib": med(r["peak_rss_mib"] for r in mx + half),
            "half_rate": med(r["rate"] for r in half),
            "latency_p50_ms": med(r["latency_p50_ms"] for r in half),
            "latency_p99_ms": med(r["latency_p99_ms"] for r in half),
            "latency_p99_range": spread(r["latency_p99_ms"] for r in half),
            "us_per_msg": med(r["us_per_msg"] for r in half),
            "redis_us_per_msg": med(r["redis_us_per_msg"] for r in half),
            "lost_at_half": [r["lost"] for r in half],
            "sink_cpu_percent_at_max": med(r["sink_cpu_percent"] for r in mx),
            "gen_cpu_percent_at_max": med(r["gen_cpu_percent"] for r in mx),
            "loggen_msgs_per_s": med(r["msgs_per_s"] for r in lg),
            "loggen_range": spread(r["msgs_per_s"] for r in lg),
        }
        if path == "c":
            tails = [r.get("tail") or {} for r in mx + half]
            out[path]["tail_lines_l11"] = [(t.get("lines"), t.get("l11_dropped")) for t in tails]
    # Ratios of each round's figures, then the median of those.
    ratios = {}
    for ours in NODES:
        for peer in ("raw-http",) if ours == "d" else ("raw", *RELAYS, "fastest-C"):
            values = []
            for rnd in range(rounds):
                def get(p, gen="py"):
                    hit = [r for r in runs if r["path"] == p and r["round"] == rnd and r["phase"] == "max"
                           and r["gen"] == gen and "error" not in r]
                    return hit[0]["msgs_per_s"] if hit else None
                a = get(ours)
                b = max(filter(None, (get(p) for p in RELAYS)), default=None) if peer == "fastest-C" else get(peer)
                if a is not None and b:
                    values.append(a / b)
            if values:
                ratios[f"{ours}/{peer}"] = {"median": round(med(values), 3),
                                            "range": [round(min(values), 3), round(max(values), 3)]}
    out["ratios"] = ratios
    goal = [r for r in runs if r["phase"] == "goal" and "error" not in r]
    if goal:
        out["goal"] = {"rate": goal[0]["rate"], "rounds": len(goal),
                       "msgs_per_s": med(r["msgs_per_s"] for r in goal),
                       "msgs_per_s_range": spread(r["msgs_per_s"] for r in goal),
                       "msgs_per_s_all": [r["msgs_per_s"] for r in goal],
                       "lost": [r["lost"] for r in goal],
                       "latency_p50_ms": med(r["latency_p50_ms"] for r in goal),
                       "latency_p99_ms": med(r["latency_p99_ms"] for r in goal),
                       "cpu_percent": med(r["cpu_percent"] for r in goal),
                       "us_per_msg": med(r["us_per_msg"] for r in goal)}
    return out


def fmt(v, digits=0):
    if v is None:
        return "-"
    if isinstance(v, float) and digits:
        return f"{v:.{digits}f}"
    return f"{round(v):,}" if isinstance(v, (int, float)) else str(v)


def print_table(summary: dict, args) -> None:
    print(f"\n{args.connections} connections, {args.channels} channels, {args.size}-byte frames, "
          f"{args.seconds:g} s windows, medians of {args.rounds} interleaved rounds (min-max)")
    head = ("path", "msgs/s delivered", "vs raw", "p50/p99 ms @half", "us/msg @half", "CPU% @max",
            "RSS MiB", "lost @half", "lost @max", "loggen msgs/s")
    rows = [head]
    for path in ORDER:
        s = summary.get(path)
        if not s:
            continue
        ceiling = summary.get("raw-http" if path in ("d", "raw-http") else "raw", {}).get("msgs_per_s")
        lo, hi = s["msgs_per_s_range"]
        us = fmt(s["us_per_msg"], 2) + (f" +{fmt(s['redis_us_per_msg'], 2)}r" if s["redis_us_per_msg"] else "")
        rows.append((path, f"{fmt(s['msgs_per_s'])} ({fmt(lo)}-{fmt(hi)})",
                     f"{s['msgs_per_s'] / ceiling:.2f}" if ceiling and s["msgs_per_s"] else "-",
                     f"{fmt(s['latency_p50_ms'], 2)}/{fmt(s['latency_p99_ms'], 1)}", us,
                     fmt(s["cpu_percent_at_max"]), fmt(s["peak_rss_mib"]),
                     ",".join(map(fmt, s["lost_at_half"])) or "-", fmt(s["lost_at_max"]),
                     fmt(s["loggen_msgs_per_s"])))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print("rsyslog has no HTTP output in Debian 12 (no omhttp); no peer takes log-shuttle's POST /logs "
          "(no imhttp in Debian's rsyslog, no HTTP source in syslog-ng 3.38), so (d) is compared to raw-http only.")
    print("ours/peer (median of per-round ratios, min-max):")
    for key, v in summary["ratios"].items():
        print(f"  {key:<16} {v['median']:.3f}  ({v['range'][0]:.3f}-{v['range'][1]:.3f})")
    b, g = summary.get("b", {}), summary.get("goal")
    if b.get("msgs_per_s") is not None:
        lo, hi = b["msgs_per_s_range"]
        print(f"goal, (b) delivers >= 100,000 msgs/s of {args.size} B. Unlimited input: {fmt(b['msgs_per_s'])}/s "
              f"(rounds {fmt(lo)}-{fmt(hi)}): {'met' if b['msgs_per_s'] >= 100_000 else 'not met'}.")
    if g:
        kept = sum(1 for r in g["msgs_per_s_all"] if r >= 0.98 * g["rate"])
        print(f"  Paced at {fmt(g['rate'])}/s: kept up (>= 98 % of it at the sink within the window) in {kept} of "
              f"{g['rounds']} rounds; delivered {', '.join(map(fmt, g['msgs_per_s_all']))}/s, p50/p99 "
              f"{fmt(g['latency_p50_ms'], 0)}/{fmt(g['latency_p99_ms'], 0)} ms (median), lost "
              f"{','.join(map(fmt, g['lost']))} (not at the sink {args.max_settle:g} s after the window), "
              f"node CPU {fmt(g['cpu_percent'])}%, {fmt(g['us_per_msg'], 2)} us/msg.")


def summarize_grid(runs: list[dict], args) -> dict:
    """One row per relay and per (path, channels, spread, load) of the node: medians over the rounds,
    and ratios to the row of the fewest channels of the same path, spread and load (per round, then
    the median)."""
    def load_of(r):
        return {"max": "max", "half": "half"}.get(r["phase"], f"{r['rate']:,}/s")

    rows, keyed = [], {}
    for r in runs:
        if "error" in r:
            continue
        node = r["path"] in NODES
        key = (r["path"], r["channels"] if node else None, r["spread"] if node else None, load_of(r))
        keyed.setdefault(key, []).append(r)
    low = min(args.channel_counts)
    for key in sorted(keyed, key=lambda k: (ORDER.index(k[0]), k[2] or "", k[3] != "max", k[3], k[1] or 0)):
        path, channels, spread, load = key
        group = keyed[key]
        row = {
            "path": path, "channels": channels, "spread": spread, "load": load, "rounds": len(group),
            "relay_channels": None if channels else group[0]["channels"],
            "msgs_per_s": med(r["msgs_per_s"] for r in group),
            "msgs_per_s_range": spread_of(r["msgs_per_s"] for r in group),
            "us_per_msg": med(r["us_per_msg"] for r in group),
            "redis_us_per_msg": med(r["redis_us_per_msg"] for r in group),
            "cpu_percent": med(r["cpu_percent"] for r in group),
            "peak_rss_mib": med(r["peak_rss_mib"] for r in group),
            "idle_rss_mib": med(r.get("idle_rss_mib") for r in group),
            "setup_s": med((r.get("setup") or {}).get("channels_s", 0) + (r.get("setup") or {}).get("drains_s", 0)
                           if r.get("setup") else None for r in group),
            "backlog_dropped": [(r.get("node_metrics") or {}).get(ingest.DROPPED) for r in group],
            "drain_dropped": [(r.get("node_metrics") or {}).get(drains.DRAIN_DROPPED) for r in group],
            "lost": [r["lost"] for r in group],
            "settle_s": med(r.get("settle_s") for r in group),
            "drained_share": med((r.get("load") or {}).get("drained_share") for r in group),
            "channels_touched": med((r.get("load") or {}).get("channels_touched") for r in group),
            "top_share": med((r.get("load") or {}).get("top_share") for r in group),
        }
        base = keyed.get((path, low, spread, load)) if channels not in (None, low) else None
        for figure in ("msgs_per_s", "us_per_msg"):
            ratios = []
            for r in group:
                b = [x for x in base or [] if x["round"] == r["round"]]
                if b and b[0].get(figure) and r.get(figure) is not None:
                    ratios.append(r[figure] / b[0][figure])
            row[f"{figure}_vs_low"] = round(med(ratios), 3) if ratios else None
        rows.append(row)
    return {"rows": rows, "fewest_channels": low}


def spread_of(values):  # min-max; `spread` is taken by the load's spread in summarize_grid
    return spread(values)


def print_grid(summary: dict, args) -> None:
    low = summary["fewest_channels"]
    print(f"\n{args.connections} connections, {args.size}-byte frames, {args.seconds:g} s windows, "
          f"medians of {args.rounds} rounds (min-max); node paths: one HTTP drain per "
          f"{drain_every_of(args, 'even')} channels (b, c), counted at the node (backlog written + superseded), "
          f"drains checked at the sink; relays once a round")
    head = ("channels", "spread", "path", "load", "msgs/s (min-max)", f"vs {low:,}ch", "us/msg", f"vs {low:,}ch",
            "CPU%", "RSS MiB peak/idle", "setup s", "late s", "backlog dropped", "drain dropped", "lost", "drained %",
            "touched", "top %")
    out = [head]
    for row in summary["rows"]:
        lo, hi = row["msgs_per_s_range"]
        us = fmt(row["us_per_msg"], 2) + (f" +{fmt(row['redis_us_per_msg'], 2)}r" if row["redis_us_per_msg"] else "")
        out.append((
            fmt(row["channels"]) if row["channels"] else f"({fmt(row['relay_channels'])})", row["spread"] or "-",
            row["path"], row["load"], f"{fmt(row['msgs_per_s'])} ({fmt(lo)}-{fmt(hi)})",
            fmt(row["msgs_per_s_vs_low"], 2), us, fmt(row["us_per_msg_vs_low"], 2), fmt(row["cpu_percent"]),
            f"{fmt(row['peak_rss_mib'])}/{fmt(row['idle_rss_mib'])}", fmt(row["setup_s"], 1),
            fmt(row["settle_s"], 1),
            ",".join(map(fmt, row["backlog_dropped"])), ",".join(map(fmt, row["drain_dropped"])),
            ",".join(map(fmt, row["lost"])),
            fmt(100 * row["drained_share"], 1) if row["drained_share"] is not None and row["path"] in ("b", "c")
            else "-",
            fmt(row["channels_touched"]), fmt(100 * row["top_share"], 1) if row["top_share"] is not None else "-"))
    widths = [max(len(str(r[i])) for r in out) for i in range(len(head))]
    for r in out:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"vs {low:,}ch: the median of per-round ratios to the {low:,}-channel row of the same path, spread and load. "
          f"A relay row's (channels) is the load it got: tokens are only text to a relay. setup s: creating the "
          f"channels and drains through the API ({args.api_pool} keep-alive connections). late s: how long after "
          f"the window until what was sent was in the backlog and at the sink (at most --max-settle). "
          f"lost: sent - at the backlog, "
          f"plus (node paths) what the drains owed the sink and did not deliver, per round.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15, help="each run's window (15)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--connections", type=int, default=2, help="generator connections (2), the same for every path")
    p.add_argument("--channels", default="2",
                   help="channels (2), or a comma-separated list for the cardinality axis (10,1000,10000): the node "
                        "paths run once per value and --spread; the relays once per round")
    p.add_argument("--spread", default="conn",
                   help="conn: connection i sends to channel i %% N (the old load); even: each connection's "
                        "frames walk all channels; zipf: channel of rank r gets a share ~ 1/r^s; "
                        "comma-separated for several")
    p.add_argument("--drain-every", type=int, default=None,
                   help="one channel in N gets the HTTP drain of (b), (c), (d), (e) (default 1 with --spread conn, "
                        "else 10); with N > 1 the node paths are counted at the node, the drains checked at the sink")
    p.add_argument("--zipf-s", type=float, default=1.1, help="the Zipf spread's exponent (1.1)")
    p.add_argument("--seed", type=int, default=1, help="the Zipf spread's generator seed (1)")
    p.add_argument("--api-pool", type=int, default=4, help="parallel keep-alive API connections for the setup (4)")
    p.add_argument("--size", type=int, default=200, help="bytes per frame, prefix included (200)")
    p.add_argument("--half", type=float, default=None,
                   help="the paced run's share of the path's max (0.5; 0: none, the default on the cardinality axis)")
    p.add_argument("--settle", type=float, default=3.0, help="stop waiting after this long without progress (3 s)")
    p.add_argument("--max-settle", type=float, default=30.0,
                   help="longest wait after the window for what is still on its way (30 s); the rest counts as lost")
    p.add_argument("--goal-rate", type=float, default=None,
                   help="also run (b) paced at this rate every round (and cell): the issue's goal "
                        "(100000; 0: no, the default on the cardinality axis)")
    p.add_argument("--only", default=",".join(ORDER), help=f"paths, comma-separated ({','.join(ORDER)})")
    p.add_argument("--no-loggen", action="store_true", help="skip the loggen-driven runs")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG", help="extra node option (repeatable)")
    p.add_argument("--redis-server", default="/usr/bin/redis-server")
    p.add_argument("--code-from", metavar="DIR",
                   help="run the nodes on DIR's logplex/ and twisted/ instead of this checkout's (e.g. an earlier "
                        "commit: git archive REV logplex twisted | tar -x -C DIR)")
    p.add_argument("--json", metavar="PATH", help="where to write the results (bench/results/peers-<time>.json)")
    p.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's results")
    args = p.parse_args()
    if args.table:
        with open(args.table) as f:
            earlier = json.load(f)
        for key, value in earlier["options"].items():
            setattr(args, key, value)
        if earlier["options"].get("grid"):
            print_grid(summarize_grid(earlier["runs"], args), args)
        else:
            print_table(summarize(earlier["runs"], args.rounds), args)
        print(f"revision {earlier['revision']}, {earlier['took_s']} s, started {earlier['started']}")
        return
    paths = [x for x in args.only.split(",") if x]
    if unknown := set(paths) - set(ORDER):
        p.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(ORDER)}")
    try:
        args.channel_counts = sorted({int(x) for x in str(args.channels).split(",") if x})
    except ValueError:
        p.error(f"--channels takes numbers, comma-separated, not {args.channels!r}")
    args.spreads = [x for x in args.spread.split(",") if x]
    if unknown := set(args.spreads) - {"conn", "even", "zipf"}:
        p.error(f"unknown spreads {sorted(unknown)}; choose from conn, even, zipf")
    if not args.channel_counts or min(args.channel_counts) < 1 or not args.spreads:
        p.error("--channels and --spread need at least one value each, channels >= 1")
    args.channels = args.channel_counts[0]  # what run_path reads without a cell (bench/memory.py)
    args.grid = len(args.channel_counts) > 1 or args.spreads != ["conn"]
    if args.half is None:
        args.half = 0.0 if args.grid else 0.5
    if args.goal_rate is None:
        args.goal_rate = 0.0 if args.grid else 100_000
    if args.spreads != ["conn"] and set(paths) & {"d", "raw-http", "e"}:
        p.error("(d) and raw-http send one token per log-shuttle connection, and (e) is counted at the sink: "
                "run them with --spread conn (and --drain-every 1 for e)")
    if args.grid and not args.no_loggen:
        args.no_loggen = True  # loggen's APPNAME is one token: it can only feed one channel
        print("peers: no loggen runs on the cardinality axis (loggen feeds one channel)", flush=True)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    peers: dict = {"sink": loadgen.sink_binary()}
    notes = []
    if set(paths) & {"rsyslog"}:
        peers["rsyslogd"], note = ensure_rsyslog()
        notes.append(f"rsyslog: {note}")
    if set(paths) & {"sng-tcp", "sng-http"} or not args.no_loggen:
        peers["syslog-ng"], note = ensure_syslog_ng()
        notes.append(f"syslog-ng: {note}")
    skipped = [x for x in paths if (x == "rsyslog" and not peers.get("rsyslogd"))
               or (x.startswith("sng") and not peers.get("syslog-ng"))]
    paths = [x for x in paths if x not in skipped]
    use_loggen = not args.no_loggen and peers.get("syslog-ng") is not None
    for note in notes:
        print(f"peers: {note}", flush=True)

    args.code, revision = snapshot_code(args.code_from)
    runs, started = [], time.time()
    cells = [(n, spread) for spread in args.spreads for n in args.channel_counts]
    relay_cell = (args.channel_counts[-1], args.spreads[0])  # a relay has no per-channel cost: once a round
    for rnd in range(args.rounds):
        order = paths[rnd % len(paths):] + paths[:rnd % len(paths)]
        cell_order = cells[rnd % len(cells):] + cells[:rnd % len(cells)]
        for path in order:
            for cell in cell_order if path in NODES else [relay_cell]:
                r = run_path(path, 0, "py", args, peers, cell)
                r.update(round=rnd, phase="max")
                runs.append(r)
                line(r)
                if args.half and "error" not in r and r["msgs_per_s"] > 0:
                    h = run_path(path, args.half * r["msgs_per_s"], "py", args, peers, cell)
                    h.update(round=rnd, phase="half")
                    runs.append(h)
                    line(h)
                if path == "b" and args.goal_rate:
                    g = run_path(path, args.goal_rate, "py", args, peers, cell)
                    g.update(round=rnd, phase="goal")
                    runs.append(g)
                    line(g)
        if use_loggen:
            for path in [x for x in order if x in LOGGEN_PATHS]:
                r = run_path(path, 0, "loggen", args, peers)
                r.update(round=rnd, phase="max")
                runs.append(r)
                line(r)
    summary = summarize_grid(runs, args) if args.grid else summarize(runs, args.rounds)
    result = {
        "command": " ".join(map(shlex.quote, [sys.executable, *sys.argv])), "revision": revision,
        "revision_at_end": drains.revision(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "took_s": round(time.time() - started), "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                                         "load_at_end": os.getloadavg()},
        "options": vars(args), "peers": notes, "skipped": skipped, "summary": summary, "runs": runs,
    }
    if args.grid:
        print_grid(summary, args)
    else:
        print_table(summary, args)
    print(f"revision {result['revision']}, {result['took_s']} s, load average at the end {os.getloadavg()[0]:.2f}")
    if not args.code_from and not revision.startswith(result["revision_at_end"] + " "):
        print(f"note: the checkout moved to {result['revision_at_end']} during the run; every node ran the copy "
              f"taken at the start ({revision})")
    path = args.json or os.path.join(HERE, "results", time.strftime("peers-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {path}")


def line(r: dict) -> None:
    """One progress line per run."""
    if "error" in r:
        return
    what = f"{r['path']:<9}{r['gen']:<7}{'rate ' + fmt(r['rate']) if r['rate'] else 'max':<13}"
    if r.get("spread", "conn") != "conn" or r.get("drain_every", 0) > 1:
        what = f"{r['channels']:>6} {r['spread']:<5} " + what
    print(f"{what} delivered {fmt(r['msgs_per_s']):>9}/s  sent {fmt(r['sent_per_s']):>9}/s  lost {fmt(r['lost']):>9}"
          f"  p50/p99 {fmt(r['latency_p50_ms'], 2)}/{fmt(r['latency_p99_ms'], 1)} ms  CPU {fmt(r['cpu_percent'])}%"
          f" {fmt(r['us_per_msg'], 2)} us/msg  RSS {fmt(r['peak_rss_mib'])}  sink {fmt(r['sink_cpu_percent'])}%"
          f"  gen {fmt(r['gen_cpu_percent'])}%" + (f"  tail {r['tail']}" if r.get("tail") else "")
          + (f"  errors {r['errors']}" if r["errors"] else "")
          + (f"  setup {r['setup']}" if r.get("setup") and r.get("spread", "conn") != "conn" else "")
          + (f"  drains owed {fmt(r['to_drains'])} got {fmt(r['drained_at_sink'])}" if "to_drains" in r else "")
          + (f"  dropped backlog/drain {fmt(r['node_metrics'].get(ingest.DROPPED))}/"
             f"{fmt(r['node_metrics'].get(drains.DRAIN_DROPPED))}" if r.get("node_metrics") else ""), flush=True)


if __name__ == "__main__":
    main()
