"""Drain benchmark: TCP syslog ingest into a real node, delivered by one drain, counted at a sink.

Starts redis-server and a node like bench/ingest.py (whose helpers it
imports), a counting sink from bench/sinks.py as its own process, one
channel with one drain (HTTP or syslog TCP) pointing at the sink, then
generator processes that send octet-counted RFC 5424 frames whose MSG
starts with `t=<time.time()> s=<connection>:<sequence>`. The sink counts
unique messages by sequence number and measures send -> sink latency.
With --outage S the HTTP sink answers 503 for S seconds in the middle of
the run. bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

try:  # run as bench/drains.py (bench/ on sys.path) or imported as bench.drains
    import ingest
except ImportError:  # pragma: no cover
    from bench import ingest
from ingest import NodeDied, cleanup, cpu_seconds, free_port, http, metrics, rss_mib, spawn, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
CHANNEL = "bench-drain"
DELIVERED, DRAIN_DROPPED = "logplex_drain_delivered_total", "logplex_drain_dropped_total"
SPOOL_DEPTH, BUFFERED = "logplex_drain_spool_depth", "logplex_drain_buffered"
MARK_WIDTH = len(b"t=1732491000.123456 s=000:0000000000 ")


def start_node(tmp: str, args, node_args: list[str]):
    """The harness's redis-server and a node on it (ingest.start_redis, ingest.start_node), with
    --allow-private-drains and node_args: (redis process, node process, API URL, syslog port,
    node command, node log path)."""
    server = ingest.start_redis(tmp, args.redis_server)
    node = ingest.start_node(os.path.join(tmp, "node"), server.url,
                             ["--history", str(args.history), "--allow-private-drains", *node_args])
    return server.process, node.process, node.api_url, node.syslog_port, node.command(), node.log_path


def frame_format(token: bytes, conn: int, size: int) -> bytes:
    """A bytes %-format of one frame of total length `size` (prefix included), taking (time, seq)."""
    header = b"<13>1 2026-11-24T10:00:00.000000+00:00 host %s web.1 - - " % token
    least = len(header) + MARK_WIDTH
    length = max(least, size - len(str(size)) - 1)
    while len(str(length)) + 1 + length > size and length > least:
        length -= 1
    pad = b"x" * (length - least)
    return (b"%d " % length + header).replace(b"%", b"%%") + b"t=%s s=" + b"%03d" % conn + b":%010d " + pad


def sender(port, fmt, frame_len, seconds, rate, ready, go, results, index):
    """One connection: blocks of up to 64 KiB of fresh frames (one timestamp per block) for
    `seconds`, at most `rate` msgs/s (0: no limit). Like ingest.sender, with sequence numbers."""
    per_block = max(1, 65536 // frame_len)
    sent, error = 0, None
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        ready.release()
        go.wait()
        start = time.monotonic()
        with sock:
            while (now := time.monotonic()) < start + seconds:
                n = min(per_block, int(rate * (now - start)) - sent) if rate else per_block
                if n <= 0:
                    time.sleep(0.002)
                    continue
                ts = b"%.6f" % time.time()
                sock.sendall(b"".join([fmt % (ts, i) for i in range(sent, sent + n)]))
                sent += n
    except Exception as e:
        error = repr(e)
        ready.release()
    results.put((index, sent, error))


def revision() -> str:
    """The checkout's commit, with "+dirty" when logplex/ has uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", ingest.ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ingest.ROOT, "status", "--porcelain", "--", "logplex"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (head or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-bench-drains-")
    ingest.tmp_dirs.append(tmp)
    node_args = list(args.node_arg)
    rev = revision()  # before the node imports the code
    redis, node, api, syslog_port, node_cmd, node_log = start_node(tmp, args, node_args)

    def check_node():
        if node.poll() is not None:
            raise NodeDied(f"the node exited with {node.returncode}; its log ends:\n"
                           + open(node_log, errors="replace").read()[-3000:])

    seconds = args.seconds or (2 * args.outage if args.outage else 15)
    fail_from = (seconds - args.outage) / 2 if args.outage else 0
    sink_port, stats_path = free_port(), os.path.join(tmp, "sink.json")
    sink_cmd = [sys.executable, os.path.join(HERE, "sinks.py"), args.kind, "--port", str(sink_port),
                "--stats", stats_path]
    if args.outage:
        sink_cmd += ["--fail-from", str(fail_from), "--fail-for", str(args.outage)]
    sink = spawn(sink_cmd, os.path.join(tmp, "sink.log"))
    wait_for(lambda: read_json(stats_path) is not None, "sink", sink)

    _, body = http("PUT", f"{api}/v3/channels/{CHANNEL}", {"tokens": ["app"]})
    token = json.loads(body)["tokens"]["app"].encode()
    url = f"http://127.0.0.1:{sink_port}/logs" if args.kind == "http" else f"syslog://127.0.0.1:{sink_port}"
    _, body = http("POST", f"{api}/v3/channels/{CHANNEL}/drains", {"url": url})
    drain_id = json.loads(body)["id"]
    drain_url = f"{api}/v3/channels/{CHANNEL}/drains/{drain_id}"
    # The node answers GET drain with "state": null until its worker for the drain runs.
    wait_for(lambda: json.loads(http("GET", drain_url)[1]).get("state") is not None,
             "the drain's worker on the node", node, timeout=15)

    ctx = multiprocessing.get_context("fork")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    fmts = [frame_format(token, i, args.size) for i in range(args.connections)]
    frame_len = len(fmts[0] % (b"%.6f" % time.time(), 0))
    procs = [ctx.Process(target=sender, daemon=True, args=(
        syslog_port, fmts[i], frame_len, seconds, args.rate / args.connections, ready, go, results, i))
        for i in range(args.connections)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=30)

    def snapshot():  # (monotonic, node CPU s, redis CPU s, sink CPU s, node metrics, sink stats)
        return (time.monotonic(), cpu_seconds(node.pid), cpu_seconds(redis.pid), cpu_seconds(sink.pid),
                metrics(api), read_json(stats_path) or {})

    samples = []  # (wall time, node RSS MiB, redis RSS MiB, spool depth from /metrics, buffered)
    states = []  # (wall time, GET drain "state")

    def sample(with_state):
        m = metrics(api) if with_state else {}
        samples.append((time.time(), rss_mib(node.pid), rss_mib(redis.pid), m.get(SPOOL_DEPTH), m.get(BUFFERED)))
        if with_state:
            states.append((time.time(), json.loads(http("GET", drain_url)[1]).get("state")))

    before = mark = snapshot()
    t0 = time.time()
    go.set()
    tick = 0
    while time.monotonic() < before[0] + seconds and node.poll() is None:
        time.sleep(0.25)
        tick += 1
        sample(tick % 4 == 0)
        if mark is before and time.monotonic() >= before[0] + min(2.0, seconds / 4):
            mark = snapshot()  # CPU is measured from here: skips the ramp-up
    check_node()
    end = snapshot()
    sent, errors = [0] * args.connections, []
    for _ in procs:
        index, sent[index], error = results.get(timeout=60)
        if error:
            errors.append(f"connection {index}: {error}")
    for p in procs:
        p.join()
    total_sent = sum(sent)

    # Settle: until every sent message is at the sink, or nothing moved for --settle s.
    settle = args.settle if args.settle is not None else (45 if args.outage else 5)
    last_unique, still = end[5].get("unique", 0), time.monotonic()
    give_up = time.monotonic() + args.max_wait
    while time.monotonic() < give_up:
        time.sleep(0.25)
        tick += 1
        sample(tick % 4 == 0)
        unique = (read_json(stats_path) or {}).get("unique", 0)
        if unique >= total_sent:
            break
        if unique != last_unique:
            last_unique, still = unique, time.monotonic()
        elif time.monotonic() - still >= settle:
            break
    check_node()
    settled = snapshot()
    drain_state = json.loads(http("GET", drain_url)[1]).get("state")
    sink.send_signal(signal.SIGTERM)
    sink.wait(timeout=30)
    final = read_json(stats_path) or {}

    def count(name, a=before[4], b=settled[4]):
        return int(b.get(name, 0) - a.get(name, 0))

    window, span = end[0] - before[0], end[0] - mark[0]
    delivered_window = end[5].get("unique", 0) - before[5].get("unique", 0)
    unique = final.get("unique", 0)
    last_at = final.get("last_at") or t0
    r = {
        "command": " ".join(map(shlex.quote, [sys.executable, *sys.argv])),
        "node_command": " ".join(map(shlex.quote, node_cmd)),
        "sink_command": " ".join(map(shlex.quote, sink_cmd)),
        "revision": rev, "kind": args.kind, "connections": args.connections, "frame_bytes": frame_len,
        "rate": args.rate, "window_s": round(window, 2), "outage_s": args.outage,
        "sent": total_sent, "sent_per_s": round(total_sent / window),
        "routed": count(ingest.ROUTED), "written": count(ingest.WRITTEN),
        "node_delivered": count(DELIVERED), "node_drain_dropped": count(DRAIN_DROPPED),
        "l10": count("logplex_drain_l10_total"), "retried": count("logplex_drain_retried_total"),
        "sink_messages": final.get("messages"), "delivered": unique,
        "duplicates": final.get("duplicates"), "lost": total_sent - unique,
        "seq_holes": final.get("seq_holes"), "max_seq_gap": final.get("max_seq_gap"),
        "out_of_order": final.get("out_of_order"),
        "delivered_in_window": delivered_window,
        "msgs_per_s": round(delivered_window / window),
        "msgs_per_s_to_last": round(unique / max(1e-3, last_at - t0)),
        "settle_s": round(settled[0] - end[0], 1),
        "latency_p50_ms": final.get("latency_p50_ms"), "latency_p99_ms": final.get("latency_p99_ms"),
        "latency_max_ms": final.get("latency_max_ms"),
        "node_cpu_percent": round(100 * (end[1] - mark[1]) / span, 1),
        "us_cpu_per_delivered": round(1e6 * (settled[1] - before[1]) / unique, 2) if unique else None,
        "redis_cpu_percent": round(100 * (end[2] - mark[2]) / span, 1),
        "sink_cpu_percent": round(100 * (end[3] - mark[3]) / span, 1),
        "node_peak_rss_mib": round(max(s[1] for s in samples), 1),
        "node_end_rss_mib": round(samples[-1][1], 1),
        "redis_peak_rss_mib": round(max(s[2] for s in samples), 1),
        "spool_depth_max_metrics": max((s[3] or 0 for s in samples), default=0),
        "spool_depth_max_state": max(((st or {}).get("spool_depth", 0) for _, st in states), default=0),
        "buffered_max": max((s[4] or 0 for s in samples), default=0),
        "drain_state_end": drain_state,
        "http": {k: final.get(k) for k in ("requests", "accepted_requests", "refused_requests",
                                           "refused_messages", "frame_ids", "repeated_frame_ids",
                                           "fail_window")} if args.kind == "http" else None,
        "sender_errors": errors,
    }
    window_w = final.get("fail_window")
    if args.outage and window_w:
        a, b = window_w
        phases = {"before": [s for s in samples if s[0] < a], "during": [s for s in samples if a <= s[0] < b],
                  "after": [s for s in samples if s[0] >= b]}
        r["phases"] = {name: {
            "node_rss_mib_max": round(max((s[1] for s in ss), default=0), 1),
            "node_rss_mib_end": round(ss[-1][1], 1) if ss else None,
            "redis_rss_mib_max": round(max((s[2] for s in ss), default=0), 1),
            "spool_depth_max": max((s[3] or 0 for s in ss), default=0),
        } for name, ss in phases.items()}
        during = [st for t, st in states if a <= t < b and st]
        r["phases"]["during"]["state_spool_depth_max"] = max((st.get("spool_depth", 0) for st in during), default=0)
        r["phases"]["during"]["state_buffered_max"] = max((st.get("buffered", 0) for st in during), default=0)
        recovered = [s[0] for s in samples if s[0] >= b and s[3] == 0]
        r["spool_empty_s_after_outage"] = round(recovered[0] - b, 1) if recovered else None
    return r


ROWS = [
    ("messages sent", "sent", "whole frames the generators handed to the kernel"),
    ("routed", "routed", "node: matched to the channel"),
    ("node delivered", "node_delivered", "node: logplex_drain_delivered_total (repeats included)"),
    ("delivered", "delivered", "unique sequence numbers at the sink, settle included"),
    ("lost", "lost", "sent - delivered"),
    ("duplicates", "duplicates", "repeats at the sink"),
    ("seq holes / max gap", ("seq_holes", "max_seq_gap"), "missing below the highest seen; longest run"),
    ("drain dropped / L10", ("node_drain_dropped", "l10"), "node: logplex_drain_dropped_total; L10s sent"),
    ("msgs/s sent", "sent_per_s", "sent / window"),
    ("msgs/s delivered", "msgs_per_s", "unique at the sink by the end of the window / window"),
    ("msgs/s to last", "msgs_per_s_to_last", "unique / (last receipt - start)"),
    ("settle s", "settle_s", "after the window, until all arrived or nothing moved"),
    ("latency p50/p99 ms", ("latency_p50_ms", "latency_p99_ms"), "generator send -> sink receipt"),
    ("node CPU %", "node_cpu_percent", "window minus its first 2 s (100 % = one core)"),
    ("us CPU/delivered", "us_cpu_per_delivered", "node CPU start..settled / delivered"),
    ("sink CPU %", "sink_cpu_percent", "the counting sink, same span"),
    ("redis CPU %", "redis_cpu_percent", "same span"),
    ("node peak RSS MiB", "node_peak_rss_mib", "VmRSS every 0.25 s, settle included"),
    ("redis peak RSS MiB", "redis_peak_rss_mib", "holds the spool"),
    ("spool depth max", ("spool_depth_max_metrics", "spool_depth_max_state"), "/metrics; GET drain state"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("http", "syslog"), default="http", help="the drain and sink (http)")
    p.add_argument("--connections", type=int, default=1, help="ingest TCP connections, a process each (1)")
    p.add_argument("--size", type=int, default=200, help="bytes per ingest frame, prefix included (200)")
    p.add_argument("--seconds", type=float, default=0, help="how long the generators send (15; 2x --outage)")
    p.add_argument("--rate", type=float, default=0, help="total msgs/s; 0 = no limit")
    p.add_argument("--outage", type=float, default=0, help="http: the sink answers 503 for this many "
                   "seconds, centred in the run")
    p.add_argument("--settle", type=float, default=None,
                   help="stop waiting for stragglers after this many s without progress (5; 45 with --outage)")
    p.add_argument("--max-wait", type=float, default=600, help="longest wait after the window (600)")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra node option, e.g. --node-arg=--drain-spool-bytes=200000000 (repeatable)")
    p.add_argument("--redis-server", default=ingest.REDIS_SERVER)
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = p.parse_args()
    if args.outage and args.kind != "http":
        p.error("--outage needs --kind http")
    if args.outage and args.seconds and args.seconds <= args.outage:
        p.error("--seconds must exceed --outage")
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        r = run(args)
    except NodeDied as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup()
    print(f"logplex drain: {r['kind']} sink, {r['connections']} ingest connections, "
          f"{r['frame_bytes']}-byte frames, rate {r['rate'] or 'unlimited'}, {r['window_s']} s window"
          + (f", {r['outage_s']:g} s outage" if r["outage_s"] else ""))
    for label, key, note in ROWS:
        value = "/".join(str(r[k]) for k in key) if isinstance(key, tuple) else str(r[key])
        print(f"  {label:<22}{value:>17}   {note}")
    if r.get("phases"):
        for name, ph in r["phases"].items():
            print(f"  outage {name:<7} " + ", ".join(f"{k} {v}" for k, v in ph.items()))
        print(f"  spool empty {r['spool_empty_s_after_outage']} s after the outage ended; "
              f"all arrived: {r['lost'] <= 0}")
    if r["http"]:
        print("  sink http: " + ", ".join(f"{k} {v}" for k, v in r["http"].items() if k != "fail_window"))
    print(f"  drain state at end: {json.dumps(r['drain_state_end'])}")
    for error in r["sender_errors"]:
        print(f"  sender error: {error}")
    print(f"revision: {r['revision']}")
    print(f"command: {r['command']}\nnode:    {r['node_command']}\nsink:    {r['sink_command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    if r["sender_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
