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
from nodeprocs import cleanup, connect, cpu_of, group_pids, rss_of  # noqa: E402  (memory.py, capacity.py use them here)
from nodeprocs import groups as node_groups  # noqa: E402  (process groups of our nodes: cleanup() ends them)
from peers_table import (  # noqa: E402
    LOGGEN_PATHS, NODES, ORDER, RELAYS, drain_every_of, line, print_grid, print_table, summarize, summarize_grid,
)
from relays import ensure_rsyslog, ensure_syslog_ng, start_relay  # noqa: E402

READY = re.compile(rb"\bnode_ready\b|\bready api=")
L11 = re.compile(rb"Error L11 .*?dropped (\d+) messages")


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
def profile_node(args, path: str, cell: tuple[int, str], pids: list[int]) -> list[subprocess.Popen]:
    """With --profile-node DIR: py-spy samples every node process through the window, in
    collapsed stacks (DIR/<path>-<channels>-<spread>-<pid>.txt), for reading where the CPU goes."""
    if not getattr(args, "profile_node", None) or not pids:
        return []
    os.makedirs(args.profile_node, exist_ok=True)
    where = "-".join(map(str, cell))
    return [subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--pid", str(pid), "--rate", "250",
                              "--duration", str(int(args.seconds)), "--nonblocking", "--format", "raw",
                              "--output", os.path.join(args.profile_node, f"{path}-{where}-{pid}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids]


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


def _run(path, rate, gen, args, peers, tmp, r) -> dict:
    shuttle = path in ("raw-http", "d")
    n_channels, spread = r["channels"], r["spread"]
    drain_every = drain_every_of(args, path, spread)
    # Counted at the node (backlog written + superseded), not at the sink, when the sink sees only
    # the drained channels' share: the drains are then checked against what was sent to them.
    by_node = path == "a" or (drain_every > 1 and path in NODES)
    # (e)'s two workers answer /metrics in turn: its count is theirs summed.
    node_metrics = (lambda api: ingest.workers_metrics(api, 2)) if path == "e" else ingest.metrics
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
        m = node_metrics(api) if by_node else {}
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
    spies = profile_node(args, path, (n_channels, spread), target_pids)
    go.set()
    while time.monotonic() < before["t"] + args.seconds:
        time.sleep(0.25)
        rss.append(rss_of(target_pids))
        if node is not None and node.poll() is not None:
            raise ingest.NodeDied(f"the node exited with {node.returncode}")
        if mark is None and time.monotonic() >= before["t"] + min(2.0, args.seconds / 4):
            mark = snapshot()  # CPU % is measured from here: skips the ramp-up
    end = snapshot()
    for spy in spies:
        spy.wait(timeout=60)
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
        now = delivered(sink_now(), node_metrics(api) if by_node else {})
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
    if path in NODES:
        m0, m1 = before["metrics"] or {}, node_metrics(api)
        r["node_metrics"] = {k: m1.get(k, 0) - (m0.get(k, 0) if by_node else 0) for k in (
            ingest.ROUTED, ingest.WRITTEN, ingest.SUPERSEDED, ingest.DROPPED, drains.DELIVERED,
            drains.DRAIN_DROPPED, "logplex_drain_l10_total", "logplex_drain_retried_total",
            "logplex_senders_held_seconds_total", "logplex_ingress_held_seconds_total")}
        # A gauge, as it stands at the end: the most the event loop ran late over the last 15-30 s.
        r["node_metrics"]["logplex_reactor_lag_max_seconds"] = m1.get("logplex_reactor_lag_max_seconds", 0)

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
        **{f"latency_{q}_ms": final.get(f"latency_{q}_ms") for q in ("p50", "p90", "p99", "p999", "max")},
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
        r["sink"] = {k: final.get(k) for k in ("messages", "unique", "marked", "loggen", "requests", "connections",
                                                "out_of_order", "bad_markers")}
        # The tenths of a second in which some line arrived later than late_ms: [seconds after the
        # first line, late lines, lines, latest ms]. One stall or a tail all along tells its cause.
        r["late"] = {k: final.get(k) for k in ("late_ms", "late_windows_total", "late_windows")}
    return r


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
                   help="also run (b), and on the cardinality axis (e), paced at this rate every round (and "
                        "cell): the issue's goal (100000; 0: no, the default on the cardinality axis)")
    p.add_argument("--only", default=",".join(ORDER), help=f"paths, comma-separated ({','.join(ORDER)})")
    p.add_argument("--no-loggen", action="store_true", help="skip the loggen-driven runs")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG", help="extra node option (repeatable)")
    p.add_argument("--redis-server", default=ingest.REDIS_SERVER)
    p.add_argument("--code-from", metavar="DIR",
                   help="run the nodes on DIR's logplex/ and twisted/ instead of this checkout's (e.g. an earlier "
                        "commit: git archive REV logplex twisted | tar -x -C DIR)")
    p.add_argument("--profile-node", metavar="DIR",
                   help="py-spy (on PATH) samples the node's processes through each window into DIR (read them with "
                        "bench/stacks.py): a reading aid, it costs the node a little CPU")
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
    if args.spreads != ["conn"] and set(paths) & {"d", "raw-http"}:
        p.error("(d) and raw-http send one token per log-shuttle connection: run them with --spread conn")
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
                if args.goal_rate and (path == "b" or (path == "e" and args.grid)):
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


if __name__ == "__main__":
    main()
