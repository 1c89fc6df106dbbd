"""Load signals at several offered loads: what CPU, busy share, reactor lag and held time read on one node.

    python bench/saturation.py [--rates 20000,50000,0] [--seconds 10] [--connections 4] [--channels 10]

Starts its own redis-server and one node (this checkout), then for each rate
(0 = as fast as the senders can write) runs sender processes (those of
bench/ingest.py) for --seconds, and samples the node's /metrics and /proc
every second. Prints, per rate: msgs/s the node received, node CPU % (utime +
stime over wall), the busy share and CPU share the node reports
(logplex_worker_busy_ratio, logplex_worker_cpu_ratio, means of the samples),
reactor lag (mean of the samples of logplex_reactor_lag_seconds, and the
largest logplex_reactor_lag_max_seconds seen), and seconds senders were held
per second (logplex_ingress_held_seconds_total, all listeners).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ingest  # noqa: E402  (bench/ingest.py: processes, ports, senders)


def samples(api: str) -> dict[str, float]:
    return ingest.metrics(api)


def run(args) -> list[dict]:
    tmp = tempfile.mkdtemp(prefix="logplex-saturation-")
    ingest.tmp_dirs.append(tmp)
    rport, api_port, logs_port, syslog_port = (ingest.free_port() for _ in range(4))
    redis = ingest.spawn([args.redis_server, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", tmp], os.path.join(tmp, "redis.log"))
    ingest.wait_for(lambda: ingest.redis_call(rport, "PING") == b"+PONG", "redis-server", redis)
    node_cmd = [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "logplex",
                "--stop-grace", "0",
                "--api", f"tcp:{api_port}:interface=127.0.0.1", "--logs", f"tcp:{logs_port}:interface=127.0.0.1",
                "--syslog", f"tcp:{syslog_port}:interface=127.0.0.1",
                "--config-redis", f"redis://127.0.0.1:{rport}/0", "--auth", "admin:secret",
                "--data-dir", tmp, "--node-name", "sat", "--workers", "1", *args.node_arg]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ingest.ROOT, os.environ.get("PYTHONPATH")])))
    node = ingest.spawn(node_cmd, os.path.join(tmp, "node.log"), env)
    api = f"http://127.0.0.1:{api_port}"
    ingest.wait_for(lambda: ingest.http("GET", api + "/healthcheck")[0] == 200, "node healthcheck", node)
    frames = []
    for i in range(args.channels):
        _, body = ingest.http("PUT", f"{api}/v3/channels/sat-{i}", {"tokens": ["app"]})
        frames.append(ingest.build_frame(json.loads(body)["tokens"]["app"], args.size))

    out = []
    for rate in args.rates:
        ctx = multiprocessing.get_context("fork")
        ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=ingest.sender, daemon=True, args=(
            syslog_port, frames[i % args.channels], args.seconds, rate / args.connections, ready, go, results, i))
            for i in range(args.connections)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire(timeout=30)
        go.set()
        time.sleep(min(2.0, args.seconds / 4))  # past the ramp-up
        t0, cpu0, m0 = time.monotonic(), ingest.cpu_seconds(node.pid), samples(api)
        busy, cpu_share, lag, lag_max = [], [], [], 0.0
        while time.monotonic() < t0 + args.seconds - min(2.0, args.seconds / 4) - 0.5:
            time.sleep(1.0)
            m = samples(api)
            busy.append(m.get("logplex_worker_busy_ratio", 0))
            cpu_share.append(m.get("logplex_worker_cpu_ratio", 0))
            lag.append(m.get("logplex_reactor_lag_seconds", 0))
            lag_max = max(lag_max, m.get("logplex_reactor_lag_max_seconds", 0))
        t1, cpu1, m1 = time.monotonic(), ingest.cpu_seconds(node.pid), samples(api)
        for _ in procs:
            results.get(timeout=60)
        for p in procs:
            p.join()
        span = t1 - t0

        def per_s(name: str) -> float:
            return (m1.get(name, 0) - m0.get(name, 0)) / span

        out.append({
            "offered": rate or "max",
            "received_per_s": round(per_s("logplex_messages_received_total")),
            "node_cpu_percent": round(100 * (cpu1 - cpu0) / span, 1),
            "busy_ratio": round(sum(busy) / len(busy), 3) if busy else None,
            "cpu_ratio": round(sum(cpu_share) / len(cpu_share), 3) if cpu_share else None,
            "lag_mean_s": round(sum(lag) / len(lag), 4) if lag else None,
            "lag_max_s": round(lag_max, 4),
            "held_s_per_s": round(per_s("logplex_ingress_held_seconds_total"), 3),
        })
        time.sleep(3)  # let the node settle before the next load
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="20000,50000,0", help="offered msgs/s, comma-separated; 0 = no limit")
    p.add_argument("--seconds", type=float, default=10, help="each load's window (10)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--channels", type=int, default=10)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG", help="extra node option (repeatable)")
    p.add_argument("--redis-server", default="/usr/bin/redis-server")
    args = p.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    print("$ " + " ".join(map(shlex.quote, [sys.executable, *sys.argv])))
    try:
        rows = run(args)
    finally:
        ingest.cleanup()
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
