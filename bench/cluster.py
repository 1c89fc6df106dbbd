"""Cluster benchmarks: `--workers 1` vs `--workers 2` ingest, and tail latency across two nodes.

  workers       one node, TCP octet-counted ingest as in bench/ingest.py, run with
                --workers 1 and --workers 2 (interleaved --rounds times). Counted at
                every worker separately (see WorkerScraper) and summed; the throughput
                figure is messages routed, since the backlog writer does not count
                lines superseded within one flush. The connections are opened in one
                burst and the kernel decides which worker takes each; --balance
                reopens them until the split is even.
  tail-latency  nodes A and B on one Redis; a tail session on B, messages sent to A
                at fixed rates carrying time.time() in MSG; the reader computes
                receive time - send time for every line (--local-tail: also on A).

Reuses bench/ingest.py (redis/node spawning, senders, frames, /proc readers);
bench/README.md says what each figure means.
"""

import argparse
import array
import json
import multiprocessing
import os
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ingest as ib  # noqa: E402  (bench/ingest.py: spawn, cleanup, sender, build_frame, ...)

WRITTEN, DROPPED, RECEIVED, ROUTED = ib.WRITTEN, ib.DROPPED, ib.RECEIVED, ib.ROUTED
from nodeprocs import (  # noqa: E402
    CONNS, WorkerScraper, children, cleanup, connect_all, node_died, preconnected_sender, safe, start_node,
    start_redis,
)


# -- mode 1: workers ------------------------------------------------------------------------
def run_workers(args, workers: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-bench-cluster-")
    ib.tmp_dirs.append(tmp)
    redis, rport = start_redis(tmp)
    node, ports, node_cmd, log_path = start_node(tmp, "bench", rport, args.history, workers)
    pids = [node.pid] if workers == 1 else children(node.pid)
    if len(pids) != workers:
        raise SystemExit(f"bench: expected {workers} worker processes under {node.pid}, found {pids}")
    api = f"http://127.0.0.1:{ports['api']}"
    listed = json.loads(ib.http("GET", api + "/v3/nodes")[1])
    scraper = WorkerScraper(ports["api"], pids)

    frames = []
    for i in range(args.channels):
        _, body = ib.http("PUT", f"{api}/v3/channels/bench-{i}", {"tokens": ["app"]})
        frames.append(ib.build_frame(json.loads(body)["tokens"]["app"], args.size))
    # Every worker must have loaded the channels (they hear of them on the change feed).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(m.get("logplex_config_channels", 0) >= args.channels for m in scraper.scrape().values()):
            break
        time.sleep(0.1)
    else:
        raise SystemExit("bench: a worker never saw the channels")

    # Connections are opened here, in one burst, and handed to the sender processes
    # (bench/ingest.py's sender loop): we know which worker accepted each one.
    # With --balance, connections of a worker holding more than its share are
    # closed and opened again until the split is even.
    socks, owners = connect_all(ports["syslog"], pids, args.connections, args.balance)
    base = scraper.scrape()
    ctx = multiprocessing.get_context("fork")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    rate = args.rate / args.connections
    senders = [ctx.Process(target=preconnected_sender, daemon=True, args=(
        socks[i], frames[i % args.channels], args.seconds, rate, ready, go, results, i))
        for i in range(args.connections)]
    for p in senders:
        p.start()
    for sock in socks:
        sock.close()  # the senders hold their copies
    for _ in senders:
        ready.acquire(timeout=30)

    procs = {"master": node.pid} if workers > 1 else {}
    procs.update({f"worker{i}" if workers > 1 else "node": pid for i, pid in enumerate(pids)})
    procs["redis"] = redis.pid

    sender_cpu = {p.pid: 0.0 for p in senders}  # last value seen: a sender that ended has no figures

    def senders_cpu():
        for pid in sender_cpu:
            sender_cpu[pid] = max(sender_cpu[pid], safe(ib.cpu_seconds, pid))
        return sum(sender_cpu.values())

    def snapshot():
        return (time.monotonic(), {k: safe(ib.cpu_seconds, pid) for k, pid in procs.items()},
                senders_cpu(), scraper.scrape())

    rss = {k: [safe(ib.rss_mib, pid)] for k, pid in procs.items()}
    before = mark = snapshot()
    go.set()
    while time.monotonic() < before[0] + args.seconds and node.poll() is None:
        time.sleep(0.2)
        senders_cpu()
        for k, pid in procs.items():
            rss[k].append(safe(ib.rss_mib, pid))
        if mark is before and time.monotonic() >= before[0] + min(2.0, args.seconds / 4):
            mark = snapshot()
    node_died(node, log_path)
    end = snapshot()
    sent, errors = [0] * args.connections, []
    for _ in senders:
        index, sent[index], error = results.get(timeout=60)
        if error:
            errors.append(f"connection {index}: {error}")
    for p in senders:
        p.join()

    # Late drain: what sat in socket buffers and queues. Done when no worker's
    # counters moved for 1 s. (Not "written + dropped >= routed" as bench/ingest.py
    # waits for: the backlog writer discards lines superseded within one flush and
    # counts them nowhere, so that sum stays short of routed at high rates.)
    def total(snap, name):
        return sum(m.get(name, 0) for m in snap.values())

    last, still = end[3], time.monotonic()
    while time.monotonic() < still + 60:
        time.sleep(0.25)
        for k, pid in procs.items():
            rss[k].append(safe(ib.rss_mib, pid))
        now = scraper.scrape()
        if any(total(now, k) != total(last, k) for k in (WRITTEN, DROPPED, RECEIVED, ROUTED)):
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= 1.0:
            break
    node_died(node, log_path)
    scraper.close()

    window, span = end[0] - before[0], end[0] - mark[0]
    per_worker = []
    for i, pid in enumerate(pids):
        delta = lambda k, a=before[3], b=last: int(b[pid].get(k, 0) - a[pid].get(k, 0))
        key = f"worker{i}" if workers > 1 else "node"
        to_me = sum(sent[c] for c, owner in enumerate(owners) if owner == pid)
        per_worker.append({
            "node": f"bench-{i}" if workers > 1 else "bench", "pid": pid,
            "connections": owners.count(pid), "accepts": delta(CONNS, a=base), "sent_to_it": to_me,
            "received": delta(RECEIVED), "routed": delta(ROUTED), "routed_in_window": delta(ROUTED, b=end[3]),
            "written": delta(WRITTEN),
            "written_in_window": delta(WRITTEN, b=end[3]), "backlog_dropped": delta(DROPPED),
            "routed_equals_sent": delta(ROUTED) == to_me,
            "cpu_percent": round(100 * (end[1][key] - mark[1][key]) / span, 1),
            "peak_rss_mib": round(max(rss[key]), 1),
        })
    routed_in_window = sum(w["routed_in_window"] for w in per_worker)
    written_in_window = sum(w["written_in_window"] for w in per_worker)
    routed = sum(w["routed"] for w in per_worker)
    written = sum(w["written"] for w in per_worker)
    dropped = sum(w["backlog_dropped"] for w in per_worker)
    node_cpu = sum(end[1][k] - mark[1][k] for k in procs if k != "redis")
    routed_span = int(total(end[3], ROUTED) - total(mark[3], ROUTED))
    return {
        "workers": workers, "balance": args.balance, "node_command": " ".join(map(shlex.quote, node_cmd)),
        "nodes_listed": [n["node"] for n in listed],
        "connections": args.connections, "channels": args.channels, "frame_bytes": len(frames[0]),
        "window_s": round(window, 2), "rate": args.rate, "sent": sum(sent),
        "sent_per_s": round(sum(sent) / window),
        "routed_in_window": routed_in_window, "msgs_per_s": round(routed_in_window / window),
        "routed": routed, "lost": sum(sent) - routed,
        "written_in_window": written_in_window, "written_per_s": round(written_in_window / window),
        "written": written, "backlog_dropped": dropped,
        "superseded_uncounted": routed - written - dropped,
        "late_drain_s": round(still - end[0], 2),
        "connections_per_worker": [w["connections"] for w in per_worker],
        "routed_equals_sent_every_worker": all(w["routed_equals_sent"] for w in per_worker),
        "node_cpu_percent": round(100 * node_cpu / span, 1),
        "us_cpu_per_msg": round(1e6 * node_cpu / routed_span, 2) if routed_span else None,
        "master_cpu_percent": round(100 * (end[1]["master"] - mark[1]["master"]) / span, 1) if workers > 1 else None,
        "master_peak_rss_mib": round(max(rss["master"]), 1) if workers > 1 else None,
        "node_peak_rss_mib_sum": round(sum(max(v) for k, v in rss.items() if k != "redis"), 1),
        "redis_cpu_percent": round(100 * (end[1]["redis"] - mark[1]["redis"]) / span, 1),
        "senders_cpu_percent": round(100 * (end[2] - mark[2]) / span, 1),
        "per_worker": per_worker, "sender_errors": errors,
    }


def workers_mode(args) -> dict:
    runs = []
    for r in range(args.rounds):
        for w in args.worker_counts:
            print(f"bench: round {r + 1}, --workers {w} ...", file=sys.stderr, flush=True)
            try:
                runs.append(dict(run_workers(args, w), round=r + 1))
            finally:
                cleanup()
    ratios = []
    for r in range(1, args.rounds + 1):
        by = {x["workers"]: x for x in runs if x["round"] == r}
        if 1 in by and 2 in by and by[1]["msgs_per_s"]:
            ratios.append(round(by[2]["msgs_per_s"] / by[1]["msgs_per_s"], 2))
    return {"mode": "workers", "runs": runs, "ratio_2_over_1": ratios}


def print_workers(res):
    runs = res["runs"]
    print(f"logplex --workers: {runs[0]['connections']} connections, {runs[0]['channels']} channels, "
          f"{runs[0]['frame_bytes']}-byte frames, {runs[0]['window_s']} s window, rate "
          f"{runs[0]['rate'] or 'unlimited'}")
    head = (f"{'round':>5} {'wk':>3} {'conns/wk':>9} {'sent/s':>8} {'msgs/s':>8} {'lost':>5} "
            f"{'rt=sent':>7} {'drain s':>7} {'written/s':>9} {'node CPU%':>9} {'us/msg':>6} "
            f"{'worker CPU%':>12} {'master%':>7} {'peak RSS MiB':>12} {'redis%':>6} {'send%':>5}")
    print(head)
    for x in runs:
        wk = x["per_worker"]
        rss = "/".join(str(w["peak_rss_mib"]) for w in wk)
        if x["master_peak_rss_mib"] is not None:
            rss += f"+{x['master_peak_rss_mib']}"
        print(f"{x['round']:>5} {x['workers']:>3} {'/'.join(str(w['connections']) for w in wk):>9} "
              f"{x['sent_per_s']:>8} {x['msgs_per_s']:>8} {x['lost']:>5} "
              f"{'yes' if x['routed_equals_sent_every_worker'] else 'NO':>7} {x['late_drain_s']:>7} "
              f"{x['written_per_s']:>9} {x['node_cpu_percent']:>9} {str(x['us_cpu_per_msg']):>6} "
              f"{'/'.join(str(w['cpu_percent']) for w in wk):>12} "
              f"{str(x['master_cpu_percent'] if x['master_cpu_percent'] is not None else '-'):>7} "
              f"{rss:>12} {x['redis_cpu_percent']:>6} {x['senders_cpu_percent']:>5}")
        for e in x["sender_errors"]:
            print(f"      sender error: {e}")
    print("msgs/s = routed in window / window, summed over workers; written/s = backlog_written_total "
          "the same way (the writer skips lines superseded within a flush, so it is lower); "
          "peak RSS per worker(+master)")
    print(f"ratio msgs/s 2 workers / 1 worker, per round: {res['ratio_2_over_1']}")


# -- mode 2: tail latency -------------------------------------------------------------------
LINE = re.compile(rb"LAT p(\d+) s(\d+) t(\d+\.\d+)")
L11 = re.compile(rb"Error L11 .*dropped (\d+) messages")


class Dechunker:
    """Incremental HTTP/1.1 chunked transfer decoding."""

    def __init__(self) -> None:
        self.raw = b""
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = False  # the CRLF after a chunk's data is due
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.raw += data
        out = []
        while self.raw and not self.done:
            if self.crlf:
                if len(self.raw) < 2:
                    break
                self.raw, self.crlf = self.raw[2:], False
            elif self.left:
                piece = self.raw[: self.left]
                out.append(piece)
                self.raw, self.left = self.raw[len(piece):], self.left - len(piece)
                self.crlf = self.left == 0
            else:
                line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                self.left, self.raw = int(line.split(b";")[0], 16), rest
                self.done = self.left == 0
        return b"".join(out)


def tail_reader(api_port, path, stop, warm_seen, out, index_ready):
    """GET the session on B; for every line, latency = now - the time.time() the sender put in it."""
    import select
    lat: dict[int, array.array] = {}
    sent_at: dict[int, array.array] = {}
    l11_lines = l11_dropped = other = 0
    error = None
    try:
        sock = ib.socket.create_connection(("127.0.0.1", api_port))
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\n\r\n"
                     % (path.encode(), ib.AUTH.encode()))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response headers")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
            raise ConnectionError(f"unexpected response: {head[:200]!r}")
        index_ready.set()
        dechunk, buf, data = Dechunker(), b"", rest
        while True:
            now = time.time()
            buf += dechunk.feed(data)
            *lines, buf = buf.split(b"\n")
            for line in lines:
                m = LINE.search(line)
                if m is None:
                    if (d := L11.search(line)) is not None:
                        l11_lines += 1
                        l11_dropped += int(d.group(1))
                    elif line:
                        other += 1
                    continue
                phase = int(m.group(1))
                if phase == 0:
                    warm_seen.set()
                    continue
                ts = float(m.group(3))
                lat.setdefault(phase, array.array("d")).append(now - ts)
                sent_at.setdefault(phase, array.array("d")).append(ts)
            if dechunk.done:
                break
            while not stop.is_set() and not select.select([sock], [], [], 0.2)[0]:
                pass
            if stop.is_set():
                break
            data = sock.recv(1 << 18)
            if not data:
                break
        sock.close()
    except Exception as e:
        error = repr(e)
        index_ready.set()
    out.put({"lat": {p: a.tobytes() for p, a in lat.items()},
             "sent_at": {p: a.tobytes() for p, a in sent_at.items()}, "l11_lines": l11_lines,
             "l11_dropped": l11_dropped, "other_lines": other, "error": error})


def paced_sender(port, token, size, commands, done, warm_stop):
    """Frames are built at send time: MSG carries `LAT p<phase> s<seq> t<time.time()>`, padded to size."""
    header = b"<13>1 2026-11-24T10:00:00.000000+00:00 host %s web.1 - - " % token.encode()
    sock = ib.socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(ib.socket.IPPROTO_TCP, ib.socket.TCP_NODELAY, 1)

    def frame(phase, seq):
        msg = header + b"LAT p%d s%d t%.6f " % (phase, seq, time.time())
        msg += b"x" * max(0, size - 4 - len(msg))
        return b"%d %s" % (len(msg), msg)

    try:
        with sock:
            seq = 0
            while not warm_stop.is_set():  # warm-up (phase 0): one line every 20 ms
                sock.sendall(frame(0, seq))
                seq += 1
                time.sleep(0.02)
            while (cmd := commands.get()) is not None:
                phase, rate, count = cmd
                start, sent = time.monotonic(), 0
                while sent < count:
                    n = min(count, int(rate * (time.monotonic() - start)) + 1) - sent
                    if n <= 0:
                        time.sleep(0.0002)
                        continue
                    sock.sendall(b"".join(frame(phase, sent + k) for k in range(n)))
                    sent += n
                done.put((phase, sent, time.monotonic() - start))
    except OSError as e:  # node A went away: the parent reports it
        done.put((-1, 0, repr(e)))


def pct(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def latency_stats(lat_bytes: bytes, at_bytes: bytes, sent: int) -> dict:
    raw, at = array.array("d", lat_bytes), array.array("d", at_bytes)
    out = {"lines": len(raw), "missing": sent - len(raw)}
    if raw:
        ms = sorted(1000 * v for v in raw)
        out.update(median_ms=round(statistics.median(ms), 2), p90_ms=round(pct(ms, 0.90), 2),
                   p99_ms=round(pct(ms, 0.99), 2), max_ms=round(ms[-1], 2), min_ms=round(ms[0], 2))
        # Per second of sending: a stall shows up as one bad second, a queue as a climb.
        seconds: dict[int, list[float]] = {}
        for t, v in zip(at, raw):
            seconds.setdefault(int(t - at[0]), []).append(1000 * v)
        out["by_second"] = [{"s": k, "lines": len(v), "median_ms": round(statistics.median(v), 2),
                             "max_ms": round(max(v), 2)} for k, v in sorted(seconds.items())]
        out["worst_second_median_ms"] = max(x["median_ms"] for x in out["by_second"])
    return out


def run_tail_latency(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-bench-cluster-")
    ib.tmp_dirs.append(tmp)
    redis, rport = start_redis(tmp)
    a, a_ports, a_cmd, a_log = start_node(tmp, "A", rport, args.history)
    b, b_ports, b_cmd, b_log = start_node(tmp, "B", rport, args.history)
    api_a, api_b = (f"http://127.0.0.1:{p['api']}" for p in (a_ports, b_ports))
    _, body = ib.http("PUT", f"{api_a}/v3/channels/lat", {"tokens": ["app"]})
    token = json.loads(body)["tokens"]["app"]
    # B hears of the channel on the change feed; create the session once it has.
    ib.wait_for(lambda: ib.http("GET", f"{api_b}/v3/channels/lat")[0] == 200, "channel on B", b)

    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    readers = {}  # node -> (process, results queue, first-line event)
    tails = [("B", api_b, b_ports["api"])] + ([("A", api_a, a_ports["api"])] if args.local_tail else [])
    for node, api, port in tails:
        _, body = ib.http("POST", f"{api}/v3/sessions", {"channel_id": "lat", "tail": True, "num": 0})
        path = "/" + json.loads(body)["url"].split("/", 3)[3]
        warm_seen, index_ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=tail_reader, daemon=True, args=(port, path, stop, warm_seen, out, index_ready))
        proc.start()
        index_ready.wait(30)
        readers[node] = (proc, out, warm_seen)
    commands, done, warm_stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    sender = ctx.Process(target=paced_sender, daemon=True,
                         args=(a_ports["syslog"], token, args.size, commands, done, warm_stop))
    sender.start()
    # A publishes on the bus only once it knows B tails the channel: warm up until a line arrives.
    for node, (_, _, warm_seen) in readers.items():
        if not warm_seen.wait(30):
            raise SystemExit(f"bench: no tail line reached {node} within 30 s")
    warm_stop.set()
    time.sleep(0.5)

    procs = {"A": a.pid, "B": b.pid, "redis": redis.pid, "sender": sender.pid, "reader": readers["B"][0].pid}
    if args.local_tail:
        procs["reader_A"] = readers["A"][0].pid
    phases = []
    for i, rate in enumerate(args.rates, start=1):
        count = max(args.lines, int(rate * args.min_seconds))
        cpu0 = {k: safe(ib.cpu_seconds, p) for k, p in procs.items()}
        t0 = time.monotonic()
        commands.put((i, rate, count))
        phase, sent, took = done.get(timeout=count / rate * 3 + 60)
        if isinstance(took, str):
            node_died(a, a_log)
            raise SystemExit(f"bench: the sender failed: {took}")
        span = time.monotonic() - t0
        cpu1 = {k: safe(ib.cpu_seconds, p) for k, p in procs.items()}
        node_died(a, a_log)
        node_died(b, b_log)
        phases.append({"phase": i, "rate": rate, "sent": sent, "send_s": round(took, 2),
                       "cpu_percent": {k: round(100 * (cpu1[k] - cpu0[k]) / span, 1) for k in procs}})
        time.sleep(args.settle)
    commands.put(None)
    time.sleep(0.5)
    stop.set()
    got = {node: out.get(timeout=30) for node, (_, out, _) in readers.items()}
    for proc, _, _ in readers.values():
        proc.join(10)
    sender.join(10)
    metrics_a, metrics_b = ib.metrics(api_a), ib.metrics(api_b)
    for ph in phases:
        n = ph["phase"]
        ph.update(latency_stats(got["B"]["lat"].get(n, b""), got["B"]["sent_at"].get(n, b""), ph["sent"]))
        if args.local_tail:
            ph["local_tail_on_A"] = latency_stats(got["A"]["lat"].get(n, b""), got["A"]["sent_at"].get(n, b""),
                                                  ph["sent"])
    res = {
        "mode": "tail-latency", "frame_bytes": args.size,
        "node_a_command": " ".join(map(shlex.quote, a_cmd)),
        "node_b_command": " ".join(map(shlex.quote, b_cmd)),
        "phases": phases, "l11_lines": got["B"]["l11_lines"], "l11_dropped": got["B"]["l11_dropped"],
        "other_lines": got["B"]["other_lines"], "reader_error": got["B"]["error"],
        "a_tail_bus_dropped": metrics_a.get("logplex_tail_bus_dropped_total", 0),
        "b_tail_bus_received": metrics_b.get("logplex_tail_bus_received_total", 0),
        "b_tail_dropped": metrics_b.get("logplex_tail_dropped_total", 0),
        "b_tail_lines": metrics_b.get("logplex_tail_lines_total", 0),
    }
    if args.local_tail:
        res["local_reader_error"] = got["A"]["error"]
        res["a_tail_dropped"] = metrics_a.get("logplex_tail_dropped_total", 0)
    return res


def print_tail_latency(res):
    print(f"logplex tail latency: send to node A over TCP, tail session on node B, "
          f"{res['frame_bytes']}-byte frames")
    print(f"{'rate/s':>8} {'sent':>8} {'lines':>8} {'missing':>7} {'median ms':>9} {'p90 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'worst-s p50':>11}   CPU % A / B / redis / sender / reader")
    for ph in res["phases"]:
        c = ph["cpu_percent"]
        print(f"{ph['rate']:>8} {ph['sent']:>8} {ph['lines']:>8} {ph['missing']:>7} "
              f"{ph.get('median_ms', '-'):>9} {ph.get('p90_ms', '-'):>8} {ph.get('p99_ms', '-'):>8} "
              f"{ph.get('max_ms', '-'):>8} {ph.get('worst_second_median_ms', '-'):>11}   "
              f"{c['A']} / {c['B']} / {c['redis']} / {c['sender']} / {c['reader']}")
    print(f"L11 lines {res['l11_lines']} (dropped {res['l11_dropped']}), B tail_dropped "
          f"{int(res['b_tail_dropped'])}, A tail_bus_dropped {int(res['a_tail_bus_dropped'])}, "
          f"other lines {res['other_lines']}"
          + (f", reader error {res['reader_error']}" if res["reader_error"] else ""))
    print("worst-s p50: the highest per-second median over the phase (by send time): a stall shows there")
    if any("local_tail_on_A" in ph for ph in res["phases"]):
        print("same messages, a second tail session on A itself (no bus hop):")
        for ph in res["phases"]:
            x = ph["local_tail_on_A"]
            print(f"{ph['rate']:>8} {'':>8} {x['lines']:>8} {x['missing']:>7} {x.get('median_ms', '-'):>9} "
                  f"{x.get('p90_ms', '-'):>8} {x.get('p99_ms', '-'):>8} {x.get('max_ms', '-'):>8} "
                  f"{x.get('worst_second_median_ms', '-'):>11}   reader on A CPU % {ph['cpu_percent']['reader_A']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["workers", "tail-latency"])
    p.add_argument("--connections", type=int, default=4, help="workers: TCP connections (4)")
    p.add_argument("--channels", type=int, default=4, help="workers: channels (4)")
    p.add_argument("--seconds", type=float, default=15, help="workers: how long the senders send (15)")
    p.add_argument("--rate", type=float, default=0, help="workers: total msgs/s; 0 = no limit")
    p.add_argument("--rounds", type=int, default=1, help="workers: interleaved rounds of 1 and 2 workers (1)")
    p.add_argument("--worker-counts", default="1,2", help="workers: the --workers values to run (1,2)")
    p.add_argument("--balance", action="store_true",
                   help="workers: reconnect until every worker holds an equal share of the connections")
    p.add_argument("--rates", default="1000,5000,20000,40000,80000", help="tail-latency: msgs/s, one phase each")
    p.add_argument("--lines", type=int, default=10000, help="tail-latency: at least this many lines a phase")
    p.add_argument("--min-seconds", type=float, default=5, help="tail-latency: at least this long a phase (5)")
    p.add_argument("--local-tail", action="store_true",
                   help="tail-latency: also tail on A itself, to split the bus hop from ingest")
    p.add_argument("--settle", type=float, default=2, help="tail-latency: pause between phases, s (2)")
    p.add_argument("--size", type=int, default=200, help="bytes per frame (200)")
    p.add_argument("--history", type=int, default=1500, help="the nodes' --history (1500)")
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = p.parse_args()
    args.worker_counts = [int(x) for x in args.worker_counts.split(",")]
    args.rates = [int(float(x)) for x in args.rates.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = " ".join(map(shlex.quote, [sys.executable, *sys.argv]))
    try:
        res = workers_mode(args) if args.mode == "workers" else run_tail_latency(args)
    except ib.NodeDied as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping what it started", file=sys.stderr)
        sys.exit(130)
    finally:
        cleanup()
    res["command"] = command
    (print_workers if args.mode == "workers" else print_tail_latency)(res)
    print(f"command: {command}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
