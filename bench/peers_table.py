"""The paths bench/peers.py measures, and its summary: medians over rounds, our/peer ratios, and
the tables it prints (one load, or the grid of channels x spreads).
"""

import statistics

import drains  # bench/drains.py: DRAIN_DROPPED
import ingest  # bench/ingest.py: DROPPED

RELAYS = ("rsyslog", "sng-tcp", "sng-http")
NODES = ("a", "b", "c", "e", "d")
DRAINED = ("b", "c", "e", "d")  # the node paths with HTTP drains
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

def drain_every_of(args, path: str, spread: str) -> int:
    """One channel in how many gets a drain in path (0: none, the paths not in DRAINED):
    --drain-every, else every channel with the old load (connection i -> channel i), one in ten
    with a spread."""
    if path not in DRAINED:
        return 0
    every = getattr(args, "drain_every", None)
    return every if every else (1 if spread == "conn" else 10)



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
          f"{drain_every_of(args, 'b', 'even')} channels ({', '.join(p for p in DRAINED if p != 'd')}), "
          f"counted at the node (backlog written + superseded), drains checked at the sink; relays once a round")
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
            fmt(100 * row["drained_share"], 1) if row["drained_share"] is not None and row["path"] in DRAINED
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


def late_summary(r: dict) -> str:
    """Where the latency tail lies: how many of the run's tenths of a second had a line later
    than late_ms (a few: stalls; most: the whole run was behind), and the share of lines late."""
    late = r.get("late") or {}
    windows = late.get("late_windows") or []
    # Of the lines the sink timed (only the drained channels' share, when counted at the node).
    timed = (r.get("sink") or {}).get("marked") or r.get("delivered")
    if not late.get("late_ms") or not timed:
        return ""
    lines = sum(w[1] for w in windows)
    return (f"  >{fmt(late['late_ms'])} ms: {100 * lines / timed:.2f}% of lines"
            f" in {fmt(late['late_windows_total'])} tenths")


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
          + (f"  errors {r['errors']}" if r["errors"] else "") + late_summary(r)
          + (f"  setup {r['setup']}" if r.get("setup") and r.get("spread", "conn") != "conn" else "")
          + (f"  drains owed {fmt(r['to_drains'])} got {fmt(r['drained_at_sink'])}" if "to_drains" in r else "")
          + (f"  dropped backlog/drain {fmt(r['node_metrics'].get(ingest.DROPPED))}/"
             f"{fmt(r['node_metrics'].get(drains.DRAIN_DROPPED))}" if r.get("node_metrics") else ""), flush=True)
