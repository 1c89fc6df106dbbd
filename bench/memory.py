"""Issue #7: is the node's memory flat (RSS within 10 %) over a long run at half of its max rate?

    /tmp/venv/bin/python bench/memory.py                                # 15 s probe, then 10 min at 0.5 of it
    /tmp/venv/bin/python bench/memory.py --rate 100000 --minutes 30    # a fixed rate, no probe
    /tmp/venv/bin/python bench/memory.py --minutes 1 --every 5 --probe-seconds 8   # a trial

The node runs path (b) of bench/peers.py, started by that script's own functions: TCP
ingest -> backlog + one HTTP drain per channel -> bench/loadgen.py's counting HTTP sink (C),
its own redis-server, the same load (2 connections, 2 channels, 200-byte frames, one
bench/loadgen.py generator process per connection). Unless --rate is given, a short
unlimited run of peers.py's (b) (--probe-seconds) measures the max rate first; the long run
is then paced at --share of it for --minutes. Every --every seconds a line shows the node's
VmRSS (summed over its processes), its redis-server's, the node's CPU %, what the sink has so
far and the rate of the last interval. The node's RSS at the end of --warmup (the first minute
of 10) is the reference: the run is "flat" when no later sample exceeds it by more than
--tolerance (10 %). bench/MEMORY.md says more; results go to bench/results/memory-<time>.json.
Exit status 1 when not flat.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import datetime
import json
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import drains  # noqa: E402  (read_json, metric names)
import ingest  # noqa: E402  (spawn, free_port, wait_for, http, metrics, NodeDied, ...)
import loadgen  # noqa: E402  (sink_binary, template, tcp_sender)
import peers  # noqa: E402  (run_path, start_redis, start_node, connect, group_pids, rss_of, cpu_of, ...)
import peers_table  # noqa: E402  (fmt, line)

NODE_METRICS = (ingest.ROUTED, ingest.WRITTEN, ingest.SUPERSEDED, ingest.DROPPED, drains.DELIVERED,
                drains.DRAIN_DROPPED, "logplex_drain_l10_total", "logplex_drain_retried_total")


class Terminated(BaseException):
    """Raised by the SIGTERM handler: a BaseException, so no `except Exception` on the way
    (the probe's peers.run_path keeps one failed path from ending the others) swallows it."""


def on_sigterm(*_) -> None:
    raise Terminated


class PathB:
    """Path (b) of bench/peers.py set up and ready to send to: sink, redis-server, node, channels
    with one drain each. peers.run_path does the same but drives and stops it in one call, and
    this benchmark must watch the node while the load runs."""

    def __init__(self, args, sink_binary: str) -> None:
        tmp = tempfile.mkdtemp(prefix="logplex-memory-")
        ingest.tmp_dirs.append(tmp)  # removed by peers.cleanup
        self.stats_path = os.path.join(tmp, "sink.json")
        sink_port = ingest.free_port()
        self.sink = ingest.spawn([sink_binary, "http", "--port", str(sink_port), "--stats", self.stats_path],
                                 os.path.join(tmp, "sink.log"))
        ingest.wait_for(lambda: drains.read_json(self.stats_path) is not None, "sink", self.sink)
        self.redis, rport = peers.start_redis(tmp, args)
        self.node, self.api, ports, node_cmd, _ = peers.start_node(tmp, args, rport, args.node_arg)
        self.node_command = " ".join(map(shlex.quote, node_cmd))
        self.syslog_port = ports["syslog"]
        self.tokens, drain_urls = [], []
        for i in range(args.channels):
            _, body = ingest.http("PUT", f"{self.api}/v3/channels/bench-{i}", {"tokens": ["app"]})
            self.tokens.append(json.loads(body)["tokens"]["app"])
            _, body = ingest.http("POST", f"{self.api}/v3/channels/bench-{i}/drains",
                                  {"url": f"http://127.0.0.1:{sink_port}/logs"})
            drain_urls.append(f"{self.api}/v3/channels/bench-{i}/drains/{json.loads(body)['id']}")
        for url in drain_urls:
            ingest.wait_for(lambda: json.loads(ingest.http("GET", url)[1]).get("state") is not None,
                            "the drain's worker", self.node, timeout=15)

    def sink_stats(self) -> dict:
        return drains.read_json(self.stats_path) or {}

    def delivered(self) -> int:
        """Unique messages at the sink so far (its stats file is rewritten every 0.25 s)."""
        return self.sink_stats().get("unique", 0)

    def node_pids(self) -> list[int]:
        """Looked up at every sample: with --node-arg=--workers N the workers belong to the node."""
        return peers.group_pids(self.node.pid)

    def check_node(self) -> None:
        if self.node.poll() is not None:
            raise ingest.NodeDied(f"the node exited with {self.node.returncode}")

    def stop_sink(self) -> dict:
        """The sink's final figures (latency percentiles are only in those)."""
        self.sink.send_signal(signal.SIGTERM)
        self.sink.wait(timeout=30)
        return self.sink_stats()


def sender(*args) -> None:
    """loadgen.tcp_sender in a forked child that leaves stopping to this script: Ctrl-C reaches
    the whole process group, and multiprocessing ends daemon children with SIGTERM when the
    script exits, which must not run the handler inherited from it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    loadgen.tcp_sender(*args)


def start_senders(world: PathB, args, rate: float, seconds: float):
    """bench/peers.py's generators for path (b): one loadgen.tcp_sender process per connection,
    connection i to channel i % channels, paced to rate / connections each; they wait for `go`."""
    ctx = multiprocessing.get_context("fork")
    go, results, procs = ctx.Event(), ctx.Queue(), []
    socks, _ = peers.connect(world.syslog_port, args.connections, None)
    for i, sock in enumerate(socks):
        tmpl, frame_len = loadgen.template(world.tokens[i % len(world.tokens)].encode(), i, args.size)
        procs.append(ctx.Process(target=sender, daemon=True,
                                 args=(sock, tmpl, frame_len, seconds, rate / args.connections, go, results, i)))
        procs[-1].start()
        sock.close()  # the child holds it
    return go, results, procs


def probe_max_rate(args, sink_binary: str) -> dict:
    """peers.py's unlimited (b) run, --probe-seconds long: its msgs_per_s is the max rate."""
    probe_args = copy.copy(args)
    probe_args.seconds = args.probe_seconds
    return peers.run_path("b", 0, "py", probe_args, {"sink": sink_binary})


def sample(world: PathB, start: float, previous: dict | None) -> dict:
    """One sample: RSS of the node and of its redis-server, the node's CPU % and the sink's rate
    since the previous sample; and the messages waiting in the drains' buffers (node memory) and
    spools (Redis), which grow when the node falls behind, without any leak."""
    now, pids = time.monotonic(), world.node_pids()
    m = ingest.metrics(world.api)
    s = {"t": round(now - start, 2), "node_rss_mib": round(peers.rss_of(pids), 1),
         "redis_rss_mib": round(peers.rss_of([world.redis.pid]), 1), "node_processes": len(pids),
         "node_cpu_s": round(peers.cpu_of(pids), 2), "delivered": world.delivered(),
         "buffered": round(m.get("logplex_drain_buffered", 0)), "spooled": round(m.get("logplex_drain_spool_depth", 0)),
         "load1": os.getloadavg()[0]}
    if previous is not None:
        span = s["t"] - previous["t"]
        s["node_cpu_percent"] = round(100 * (s["node_cpu_s"] - previous["node_cpu_s"]) / span, 1)
        s["msgs_per_s"] = round((s["delivered"] - previous["delivered"]) / span)
    return s


def print_sample(s: dict) -> None:
    print(f"{s['t']:>7.0f}  {s['node_rss_mib']:>13.1f}  {s['redis_rss_mib']:>14.1f}  "
          f"{peers_table.fmt(s.get('node_cpu_percent')):>10}  {peers_table.fmt(s['delivered']):>13}  "
          f"{peers_table.fmt(s.get('msgs_per_s')):>9}  {peers_table.fmt(s['buffered']):>8}  {peers_table.fmt(s['spooled']):>9}  "
          f"{s['load1']:>5.2f}", flush=True)


def drive(world: PathB, args, rate: float) -> tuple[list[dict], int, list[str]]:
    """Send at `rate` for --minutes, sampling every --every s (and once at the start, before any
    load); then collect what the senders sent. Returns (samples, sent, sender errors)."""
    duration = 60 * args.minutes
    go, results, procs = start_senders(world, args, rate, duration)
    print(f"{'t s':>7}  {'node RSS MiB':>13}  {'redis RSS MiB':>14}  {'node CPU%':>10}  {'delivered':>13}  "
          f"{'msgs/s':>9}  {'buffered':>8}  {'spooled':>9}  {'load':>5}", flush=True)
    start = time.monotonic()
    samples = [sample(world, start, None)]
    print_sample(samples[-1])
    go.set()
    due = [min(k * args.every, duration) for k in range(1, int(-(-duration // args.every)) + 1)]
    for at in due:
        while time.monotonic() < start + at:
            time.sleep(min(0.25, max(0.0, start + at - time.monotonic())))
            world.check_node()
        samples.append(sample(world, start, samples[-1]))
        print_sample(samples[-1])
    sent, errors = 0, []
    for _ in procs:
        index, n, error, _cpu = results.get(timeout=120)
        sent += n
        if error:
            errors.append(f"connection {index}: {error}")
    for p in procs:
        p.join()
    return samples, sent, errors


def settle(world: PathB, args, sent: int) -> float:
    """Wait as peers.py does after a window: until all that was sent is at the sink, or nothing
    moved for --settle s, or --max-settle s passed. Returns the seconds waited."""
    began = last_move = time.monotonic()
    last = world.delivered()
    while time.monotonic() < began + args.max_settle and last < sent:
        time.sleep(0.25)
        world.check_node()
        now = world.delivered()
        if now != last:
            last, last_move = now, time.monotonic()
        elif time.monotonic() - last_move >= args.settle:
            break
    return time.monotonic() - began


def judge(samples: list[dict], key: str, warmup: float, tolerance: float) -> dict:
    """The RSS of `key` at the end of the warm-up (the first sample at or after it) against every
    later sample: min, max, and their distance from that reference in %."""
    after = [s for s in samples if s["t"] >= warmup]
    reference = after[0]
    low, high = min(s[key] for s in after), max(s[key] for s in after)
    return {"reference_t": reference["t"], "reference_mib": reference[key], "min_mib": low, "max_mib": high,
            "min_percent": round(100 * (low - reference[key]) / reference[key], 1),
            "max_percent": round(100 * (high - reference[key]) / reference[key], 1),
            "flat": high <= reference[key] * (1 + tolerance / 100), "samples_after_warmup": len(after)}


def summarize(args, rate: float, samples: list[dict], sent: int, errors: list[str], final: dict,
              after_settle: dict, node_metrics: dict[str, float]) -> dict:
    """The run's figures: counts and latency from the sink's final stats, RSS judged after the
    warm-up, the node's CPU over the whole window, its counters (drops, L10) at the end."""
    first, last = samples[0], samples[-1]
    node = judge(samples, "node_rss_mib", args.warmup, args.tolerance)
    delivered = final.get("unique", 0)
    return {
        "rate": round(rate), "sent": sent, "delivered": delivered, "lost": sent - delivered,
        "delivered_in_window_per_s": round(last["delivered"] / last["t"]),
        "duplicates": final.get("duplicates"), "seq_holes": final.get("seq_holes"),
        "latency_p50_ms": final.get("latency_p50_ms"), "latency_p99_ms": final.get("latency_p99_ms"),
        "latency_max_ms": final.get("latency_max_ms"),
        "node_cpu_percent": round(100 * (last["node_cpu_s"] - first["node_cpu_s"]) / (last["t"] - first["t"]), 1),
        "node_rss": node, "redis_rss": judge(samples, "redis_rss_mib", args.warmup, args.tolerance),
        "after_settle": after_settle, "flat": node["flat"], "sender_errors": errors,
        "node_metrics": {k: node_metrics.get(k, 0) for k in NODE_METRICS},
    }


def print_summary(summary: dict, args) -> None:
    fmt = peers_table.fmt
    print(f"sent {fmt(summary['sent'])}  delivered {fmt(summary['delivered'])}  lost {fmt(summary['lost'])}  "
          f"({fmt(summary['delivered_in_window_per_s'])} msgs/s at the sink in the window, paced at "
          f"{fmt(summary['rate'])}; settled in {summary['after_settle']['settle_s']:g} s)  p50/p99 "
          f"{fmt(summary['latency_p50_ms'], 2)}/{fmt(summary['latency_p99_ms'], 1)} ms  "
          f"node CPU {summary['node_cpu_percent']:g}%")
    for name, j in (("node RSS ", summary["node_rss"]), ("redis RSS", summary["redis_rss"])):
        print(f"{name}  at {j['reference_t']:.0f} s (reference) {j['reference_mib']:.1f} MiB; after it: min "
              f"{j['min_mib']:.1f} ({j['min_percent']:+.1f} %), max {j['max_mib']:.1f} MiB ({j['max_percent']:+.1f} %)")
    print(f"after settling: node {summary['after_settle']['node_rss_mib']:.1f} MiB, "
          f"redis {summary['after_settle']['redis_rss_mib']:.1f} MiB")
    verdict = "flat" if summary["flat"] else "NOT flat"
    print(f"verdict: {verdict} (node RSS max {summary['node_rss']['max_percent']:+.1f} % of the reference; "
          f"flat when within {args.tolerance:g} %)")
    for error in summary["sender_errors"]:
        print(f"sender error: {error}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10, help="length of the paced run (10)")
    p.add_argument("--every", type=float, default=10, help="seconds between samples (10)")
    p.add_argument("--share", type=float, default=0.5, help="the paced rate as a share of the probed max (0.5)")
    p.add_argument("--rate", type=float, help="paced rate in msgs/s over all connections; skips the probe")
    p.add_argument("--probe-seconds", type=float, default=15, help="the unlimited run that finds the max (15 s)")
    p.add_argument("--warmup", type=float,
                   help="the first RSS sample at or after this many seconds is the reference "
                        "(a tenth of the run, at most 60 s: the first minute of 10)")
    p.add_argument("--tolerance", type=float, default=10,
                   help="flat: no node RSS sample after the warm-up above the reference by more than this %% (10)")
    p.add_argument("--connections", type=int, default=2, help="generator connections (2), as in peers.py")
    p.add_argument("--channels", type=int, default=2, help="channels (2); connection i sends to channel i %% N")
    p.add_argument("--size", type=int, default=200, help="bytes per frame, prefix included (200)")
    p.add_argument("--settle", type=float, default=3.0, help="stop waiting after this long without progress (3 s)")
    p.add_argument("--max-settle", type=float, default=30.0,
                   help="longest wait after the run for what is still on its way (30 s); the rest counts as lost")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG", help="extra node option (repeatable)")
    p.add_argument("--redis-server", default=ingest.REDIS_SERVER)
    p.add_argument("--json", metavar="PATH", help="where to write the results (bench/results/memory-<time>.json)")
    args = p.parse_args()
    if args.warmup is None:
        args.warmup = min(60.0, 6 * args.minutes)
    if not 0 < args.warmup < 60 * args.minutes:
        p.error("--warmup must be within the run (--minutes)")
    if args.every <= 0:
        p.error("--every must be positive")
    atexit.register(peers.cleanup)
    signal.signal(signal.SIGTERM, on_sigterm)

    command = " ".join(map(shlex.quote, [sys.executable, *sys.argv]))
    started = time.time()
    json_path = args.json or os.path.join(HERE, "results", time.strftime("memory-%Y%m%d-%H%M%S.json"))
    sink_binary = loadgen.sink_binary()
    args.code, revision = peers.snapshot_code()  # the node runs this copy, however long the run
    print(f"memory: revision {revision}; {args.connections} connections, {args.channels} channels, "
          f"{args.size}-byte frames", flush=True)

    probe = None
    if args.rate is None:
        probe = probe_max_rate(args, sink_binary)
        peers_table.line(probe)
        if "error" in probe or not probe["msgs_per_s"]:
            raise SystemExit(f"memory: the probe found no max rate: {probe.get('error', 'nothing delivered')}")
        rate = args.share * probe["msgs_per_s"]
        print(f"memory: max {peers_table.fmt(probe['msgs_per_s'])} msgs/s delivered in {args.probe_seconds:g} s; "
              f"pacing at {args.share:g} of it", flush=True)
    else:
        rate = args.rate
    print(f"memory: {peers_table.fmt(rate)} msgs/s for {args.minutes:g} min, a sample every {args.every:g} s", flush=True)

    world = PathB(args, sink_binary)
    samples, sent, errors = drive(world, args, rate)
    settle_s = settle(world, args, sent)
    after_settle = {"node_rss_mib": round(peers.rss_of(world.node_pids()), 1),
                    "redis_rss_mib": round(peers.rss_of([world.redis.pid]), 1), "settle_s": round(settle_s, 1)}
    final = world.stop_sink()
    summary = summarize(args, rate, samples, sent, errors, final, after_settle, ingest.metrics(world.api))
    print_summary(summary, args)
    print(f"command: {command}")

    result = {
        "command": command, "revision": revision, "revision_at_end": drains.revision(),
        "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "took_s": round(time.time() - started),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "load_at_end": os.getloadavg()},
        "options": vars(args), "node_command": world.node_command, "probe": probe,
        "summary": summary, "samples": samples,
    }
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {json_path}")
    sys.exit(0 if summary["flat"] else 1)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Terminated) as stopped:  # atexit stops all that was started
        print("memory: interrupted", file=sys.stderr)
        sys.exit(130 if isinstance(stopped, KeyboardInterrupt) else 143)
