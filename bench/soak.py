"""Fault soak: real processes, a steady load of numbered messages, and exact accounting at the receivers.

    python bench/soak.py shard | config | drain | sigterm | sigkill | partial | all [--quick]

Each case starts its own world: a config Redis and a separate shard Redis (redis-server, no
persistence), one node (twistd logplex from this checkout, --node-name soak, the config Redis
and the shard Redis given apart), a counting HTTP sink (this script's `_sink`, its own process)
as the drain of channel `soak`, and a tail of that channel read by this process. Two senders
write to `soak` all the time: `h` POSTs application/logplex-1 batches to /logs (a 204 is the
acknowledgement; a failed batch is retried under the same Logplex-Frame-Id, as log-shuttle
does) and `t` writes octet-counted frames over syslog TCP (reconnecting when the node goes).
Every MSG carries `s=<sender>:<sequence> t=<send time>`, so each receiver (the sink, the tail,
the backlog read straight from the shard Redis with LRANGE) is counted by sequence number:
what is missing, what came twice. The node's /metrics and VmRSS are read before and after.

bench/SOAK.md says what each case does and checks; --quick shortens every duration by 6 for a
trial run (the figures in SOAK.md are from full-length runs). Results go to
bench/results/soak-<case>.json; the exit status is 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shlex
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import drains as bench_drains  # noqa: E402  (bench/drains.py: frame_format, sender, revision)
import ingest as ib  # noqa: E402  (bench/ingest.py: spawn, cleanup, free_port, metrics, rss_mib, ...)
from soak_cases import (  # noqa: E402
    case_config, case_departed_node, case_drain, case_empty_config, case_partial, case_shard, restart_case,
)
from soak_traffic import RESULTS, _serve_sink  # noqa: E402


CASES = {"shard": case_shard, "config": case_config, "drain": case_drain,
         "sigterm": lambda a: restart_case(a, signal.SIGTERM), "sigkill": lambda a: restart_case(a, signal.SIGKILL),
         "partial": case_partial, "departed-node": case_departed_node, "empty-config": case_empty_config}


def print_case(r: dict) -> None:
    rss = r.get("rss_mib") or [None, None]
    print(f"\n== {r['case']}: {'ok' if r['ok'] else 'FAILED'}")
    print(f"   load {r['load']}; sent: h acked {r['sent']['h_acked']}, t written {r['sent']['t_written']}; "
          f"RSS MiB before/after {rss[0]}/{rss[1]}")
    print(f"   lost: {r['lost_cell']}")
    if r.get("summary"):
        print("   " + "; ".join(f"{k} {v}" for k, v in r["summary"].items()))
    for c in r["checks"]:
        print(f"   {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: expected {c['expected']}, got {c['got']}"
              + (f"  ({c['note']})" if c["note"] else ""))


def table(results: list[dict]) -> None:
    print("\n| case | load | sent (h acked / t written) | lost | RSS MiB before/after | result |")
    print("|---|---|---|---|---|---|")
    for r in results:
        rss = r.get("rss_mib") or [None, None]
        print(f"| {r['case']} | {r['load']} | {r['sent']['h_acked']} / {r['sent']['t_written']} | {r['lost_cell']} "
              f"| {rss[0]} / {rss[1]} | {'ok' if r['ok'] else 'FAILED: ' + '; '.join(c['check'] for c in r['checks'] if not c['ok'])} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        p = argparse.ArgumentParser()
        p.add_argument("_sink")
        p.add_argument("--port", type=int, required=True)
        asyncio.run(_serve_sink(p.parse_args().port))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", choices=[*CASES, "all"])
    p.add_argument("--rate", type=float, default=500, help="messages a second to channel soak, half h, half t (500)")
    p.add_argument("--bulk-rate", type=float, default=25000, help="shard: the flood on channel bulk (25000)")
    p.add_argument("--outage", type=float, default=10, help="shard, config: seconds down (10)")
    p.add_argument("--error-s", type=float, default=60, help="drain: seconds of 500 (60)")
    p.add_argument("--hang-s", type=float, default=30, help="drain: seconds of hanging (30)")
    p.add_argument("--slow-s", type=float, default=60, help="drain: seconds of one answer a second (60)")
    p.add_argument("--cycles", type=int, default=3, help="sigterm, sigkill: signals, 25 s apart (3)")
    p.add_argument("--partial-senders", type=int, default=100, help="partial: senders per cut place (100)")
    p.add_argument("--history", type=int, default=1_000_000, help="the node's --history: holds the whole run")
    p.add_argument("--quick", action="store_true", help="every duration / 6: a trial run, not the figures")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs (node, Redis and sink logs)")
    args = p.parse_args()
    args.spool_bytes, args.drain_buffer = 32 * 1024 * 1024, 1024  # the node's defaults, which the soak keeps
    atexit.register(ib.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(RESULTS, exist_ok=True)
    revision = bench_drains.revision()
    command = " ".join(map(shlex.quote, [sys.executable, *sys.argv]))
    results = []
    try:
        for name in (CASES if args.case == "all" else [args.case]):
            print(f"\n--- {name}", flush=True)
            began = time.time()
            r = CASES[name](args)
            r.update({"revision": revision, "command": command, "quick": args.quick,
                      "wall_s": round(time.time() - began, 1)})
            with open(os.path.join(RESULTS, f"soak-{name}{'-quick' if args.quick else ''}.json"), "w") as f:
                json.dump(r, f, indent=1, default=str)
            print_case(r)
            results.append(r)
    except KeyboardInterrupt:
        print("soak: interrupted; stopping what it started", file=sys.stderr)
        sys.exit(130)
    finally:
        if args.keep:
            print("kept: " + " ".join(ib.tmp_dirs), file=sys.stderr)
            ib.tmp_dirs.clear()
        ib.cleanup()
    table(results)
    print(f"\nrevision: {revision}\ncommand: {command}")
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
