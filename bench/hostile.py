"""Issue #13: every hostile tenant at once against one node, and what another tenant feels.

    /work/venv/bin/python bench/hostile.py                     # 10 s quiet, 30 s hostile, 10 s after
    /work/venv/bin/python bench/hostile.py --hostile 60 --json out.json
    /work/venv/bin/python bench/hostile.py --only drains,gunzip  # some attacks, not all

One redis-server and one node (started as bench/drains.py starts them, with
--allow-private-drains so that the hostile endpoints can live on loopback). A
well-behaved tenant, "victim", sends a line every 20 ms over syslog TCP and
tails its channel through a session; a probe asks /healthcheck every 100 ms.
Both run in a process of their own, so the attackers' threads cannot slow the
measuring. During the hostile phase, from other loopback source addresses
(127.0.0.2 and up, so the address throttle meets only the attackers):

- drains    a channel with five drains to a hostile endpoint: a 1 MB gzip bomb
            (1 GiB inflated), a 400 MB body, headers then one body byte a second,
            a 303 to another port, and a cookie of 4 KiB more on every answer;
- gunzip    POST /logs of 10 MB of empty gzip members, over and over;
- slowloris 200 connections to the API and /logs that send one byte a second, no CRLF;
- inject    lines whose MSG carries LF and a forged "heroku[router]:" line;
- bigtails  ten session tails that never read, while the hostile channel gets 60 KB lines;
- frameid   POST /logs with a 15 KB Logplex-Frame-Id, over and over;
- logins    1,000 concurrent wrong passwords for a credential, in waves.

It prints, per phase (quiet, hostile, after): the node's peak RSS, /healthcheck
latency (p50/p99/max) and failures, and the victim's tail latency (p50/p99) and
lines lost; then what each attack got (answer codes, the drains' states, lines
forged in a text tail). --json writes all of it.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import json
import multiprocessing
import os
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drains as bench_drains  # noqa: E402  (start_node, pct)
import ingest as ib  # noqa: E402  (free_port, spawn, cleanup, http, metrics, rss_mib)

ATTACKS = ("drains", "gunzip", "slowloris", "inject", "bigtails", "frameid", "logins")
FORGED = b"heroku[router]: at=info method=GET path=/forged"


# -- plumbing ---------------------------------------------------------------------------------------

def api(base: str, method: str, path: str, body=None, auth: str = ib.AUTH, source: str | None = None,
        headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    host, port = base.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, data, {"Authorization": auth, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(65536)
    finally:
        conn.close()


def channel(base: str, name: str) -> str:
    status, body = api(base, "PUT", f"/v3/channels/{name}", {"tokens": ["app"]})
    assert status in (200, 201), (status, body)
    return json.loads(body)["tokens"]["app"]


def frame(token: str, msg: bytes, procid: bytes = b"web.1") -> bytes:
    line = b"<13>1 2026-12-02T10:00:00.000000+00:00 host %s %s - - %s" % (token.encode(), procid, msg)
    return b"%d %s" % (len(line), line)


def session_socket(base: str, name: str) -> socket.socket:
    """A connected socket whose GET of a tail session of `name` has been sent."""
    status, body = api(base, "POST", "/v2/sessions", {"channel_id": name, "tail": True, "num": 0})
    assert status == 201, (status, body)
    url = json.loads(body)["url"]
    path = "/" + url.split("/", 3)[3]
    host, port = base.rsplit("/", 1)[-1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return sock


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(bench_drains.pct(values, 0.50) * 1000, 1),
            "p99_ms": round(bench_drains.pct(values, 0.99) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


# -- the measuring process -----------------------------------------------------------------------------

def probe_main(base: str, syslog_port: int, token: str, stop, out) -> None:
    """Victim sender, victim tail and /healthcheck probe; puts their samples on `out` when stopped."""
    health: list[tuple[float, float | None]] = []  # (when, seconds or None for a failure)
    sent: list[float] = []
    seen: dict[float, float] = {}  # sent at -> latency
    tail = session_socket(base, "victim")
    tail.settimeout(1.0)

    def read_tail() -> None:
        buffered = b""
        while not stop.is_set():
            try:
                chunk = tail.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            now = time.time()
            buffered += chunk
            end = 0
            for match in re.finditer(rb"victim-at=(\d+\.\d+)\n", buffered):
                stamp = float(match[1])
                seen.setdefault(stamp, now - stamp)
                end = match.end()
            buffered = buffered[end:][-256:]

    reader = threading.Thread(target=read_tail, daemon=True)
    reader.start()
    sender = socket.create_connection(("127.0.0.1", syslog_port))
    next_line = next_health = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_line:
            stamp = time.time()
            sender.sendall(frame(token, b"victim-at=%.6f" % stamp))
            sent.append(stamp)
            next_line += 0.02
        if now >= next_health:
            began = time.monotonic()
            try:
                status, _ = api(base, "GET", "/healthcheck", auth="", timeout=5)
                health.append((time.time(), time.monotonic() - began if status == 200 else None))
            except OSError:
                health.append((time.time(), None))
            next_health += 0.1
        time.sleep(max(0.0, min(next_line, next_health) - time.monotonic()))
    time.sleep(1.0)  # the last lines' way through the node
    tail.close()
    sender.close()
    out.put({"health": health, "sent": sent, "seen": seen})


# -- the attacks ---------------------------------------------------------------------------------------

class HostileEndpoint(threading.Thread):
    """An HTTP server on loopback that answers every drain POST with something nasty, by path."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.port = ib.free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port), backlog=128)
        self.hits: Counter = Counter()
        self.cookie_bytes_seen = 0
        self.redirected_gets = 0
        self.bomb = gzip.compress(b"\0" * (1024 * 1024 * 1024), compresslevel=9)  # ~1 MB

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        try:
            with conn:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    head, _, body = head.partition(b"\r\n\r\n")
                    method, path = head.split(b" ", 2)[:2]
                    length = int((re.search(rb"(?i)\r\ncontent-length: *(\d+)", head) or [0, b"0"])[1])
                    cookie = re.search(rb"(?i)\r\ncookie: *([^\r]*)", head)
                    self.cookie_bytes_seen = max(self.cookie_bytes_seen, len(cookie[1]) if cookie else 0)
                    while len(body) < length:
                        chunk = conn.recv(min(1 << 20, length - len(body)))
                        if not chunk:
                            return
                        body += chunk
                    self.hits[path.decode()] += 1
                    if method == b"GET":
                        self.redirected_gets += 1
                    self.answer(conn, path)
        except OSError:
            pass

    def answer(self, conn: socket.socket, path: bytes) -> None:
        if path == b"/bomb":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                         % len(self.bomb) + self.bomb)
        elif path == b"/huge":
            size = 400 * 1024 * 1024
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1 << 20)
            for _ in range(size >> 20):
                conn.sendall(block)
        elif path == b"/trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(100000):
                conn.sendall(b"x")
                time.sleep(1.0)
        elif path == b"/redirect":
            conn.sendall(b"HTTP/1.1 303 See Other\r\nLocation: http://127.0.0.1:%d/elsewhere\r\n"
                         b"Content-Length: 0\r\n\r\n" % self.port)
        elif path == b"/cookie":
            name = b"c%d" % self.hits["/cookie"]
            conn.sendall(b"HTTP/1.1 200 OK\r\nSet-Cookie: %s=%s; Path=/\r\nContent-Length: 0\r\n\r\n"
                         % (name, b"v" * 4096))
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def attack_drains(base: str, stop, report: dict) -> None:
    endpoint = HostileEndpoint()
    endpoint.start()
    for path in ("bomb", "huge", "trickle", "redirect", "cookie"):
        status, body = api(base, "POST", "/v3/channels/hostile/drains",
                           {"url": f"http://127.0.0.1:{endpoint.port}/{path}"})
        report.setdefault("drains_created", []).append(status)
    stop.wait()
    status, body = api(base, "GET", "/v3/channels/hostile")
    states = {}
    if status == 200:
        for drain in json.loads(body).get("drains", []):
            s, b = api(base, "GET", f"/v3/channels/hostile/drains/{drain['id']}")
            if s == 200:
                states[drain["url"].rsplit("/", 1)[-1]] = {
                    k: json.loads(b).get("state", {}).get(k) for k in ("delivered", "retried", "last_error")}
    report["drain_states"] = states
    report["endpoint_hits"] = dict(endpoint.hits)
    report["cookie_bytes_seen_at_endpoint"] = endpoint.cookie_bytes_seen
    report["redirect_gets"] = endpoint.redirected_gets
    endpoint.listener.close()


def attack_hostile_channel(syslog_port: int, token: str, stop, report: dict, inject: bool, big: bool) -> None:
    """Feeds the hostile channel: forged lines (inject) and 60 KB lines (bigtails)."""
    sock = socket.create_connection(("127.0.0.1", syslog_port), source_address=("127.0.0.3", 0))
    sent = Counter()
    while not stop.is_set():
        batch = []
        if inject:
            batch.append(frame(token, b"innocent\n2026-12-02T10:00:00+00:00 " + FORGED))
            sent["forged"] += 1
        if big:
            batch += [frame(token, b"b" * 60_000)] * 20
            sent["60KB"] += 20
        if not batch:
            batch.append(frame(token, b"plain"))
        try:
            sock.sendall(b"".join(batch))
        except OSError as e:
            sent[type(e).__name__] += 1
            return
        stop.wait(0.05)
    report["hostile_channel_sent"] = dict(sent)
    sock.close()


def attack_inject_reader(base: str, stop, report: dict) -> None:
    sock = session_socket(base, "hostile")
    sock.settimeout(1.0)
    data = bytearray()
    while not stop.is_set() and len(data) < 64 * 1024 * 1024:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    sock.close()
    forged_lines = sum(1 for line in bytes(data).split(b"\n") if FORGED in line and b"innocent" not in line)
    report["forged_lines_in_text_tail"] = forged_lines


def attack_bigtails(base: str, stop, report: dict) -> None:
    socks = [session_socket(base, "hostile") for _ in range(10)]
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stop.wait()
    report["tails_that_never_read"] = len(socks)
    for s in socks:
        s.close()


def logs_post(logs: str, token: str, body: bytes, headers: dict, source: str) -> int | str:
    """POST /logs from `source`: the answer's status, or the name of the error."""
    host, port = logs.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120, source_address=(source, 0))
    try:
        conn.request("POST", "/logs", body, {
            "Authorization": "Basic " + base64.b64encode(b"token:" + token.encode()).decode(),
            "Content-Type": "application/logplex-1", **headers})
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def attack_gunzip(logs: str, token: str, stop, report: dict) -> None:
    body = gzip.compress(b"") * (10 * 1024 * 1024 // len(gzip.compress(b"")))
    answers: Counter = Counter()
    while not stop.is_set():
        answers[str(logs_post(logs, token, body, {"Content-Encoding": "gzip", "Logplex-Msg-Count": "0"},
                              "127.0.0.4"))] += 1
    report["gunzip_answers"] = dict(answers)


def attack_frameid(logs: str, token: str, stop, report: dict) -> None:
    answers: Counter = Counter()
    n = 0
    while not stop.is_set():
        n += 1
        body = frame(token, b"frame id flood")
        answers[str(logs_post(logs, token, body, {"Logplex-Frame-Id": f"{n:015d}" + "f" * 15_000,
                                                  "Logplex-Msg-Count": "1"}, "127.0.0.5"))] += 1
    report["frameid_answers"] = dict(answers)


def attack_slowloris(base: str, logs: str, stop, report: dict) -> None:
    socks = []
    for target in (base, logs):
        host, port = target.rsplit("/", 1)[-1].split(":")
        for _ in range(100):
            socks.append(socket.create_connection((host, int(port)), source_address=("127.0.0.6", 0)))
    request = b"GET /healthcheck-" + b"z" * 10_000
    position, cut = 0, 0
    while not stop.is_set() and socks:
        for s in list(socks):
            try:
                s.sendall(request[position:position + 1])
            except OSError:
                socks.remove(s)
                cut += 1
        position += 1
        stop.wait(1.0)
    report["slowloris_cut_by_node"] = cut
    report["slowloris_still_open"] = len(socks)
    for s in socks:
        s.close()


def attack_logins(base: str, stop, report: dict) -> None:
    status, body = api(base, "POST", "/v3/credentials", {"perms": ["full_api"], "note": "bench target"})
    cred = json.loads(body)["id"] if status in (200, 201) else "nobody"
    answers: Counter = Counter()
    wrong = "Basic " + base64.b64encode(f"{cred}:wrong".encode()).decode()
    while not stop.is_set():
        results: list = []

        def guess() -> None:
            try:
                results.append(api(base, "GET", "/v3/channels/victim", auth=wrong, source="127.0.0.7",
                                   timeout=60)[0])
            except OSError as e:
                results.append(type(e).__name__)

        wave = [threading.Thread(target=guess, daemon=True) for _ in range(1000)]
        for t in wave:
            t.start()
        for t in wave:
            t.join(90)
        answers.update(str(r) for r in results)
        stop.wait(1.0)
    report["login_answers"] = dict(answers)


def attack_main(name: str, base: str, logs: str, syslog_port: int, token: str, stop, out, only) -> None:
    report: dict = {}
    try:
        if name == "drains":
            attack_drains(base, stop, report)
        elif name == "feed":
            attack_hostile_channel(syslog_port, token, stop, report, "inject" in only, "bigtails" in only)
        elif name == "inject":
            attack_inject_reader(base, stop, report)
        elif name == "bigtails":
            attack_bigtails(base, stop, report)
        elif name == "gunzip":
            attack_gunzip(logs, token, stop, report)
        elif name == "frameid":
            attack_frameid(logs, token, stop, report)
        elif name == "slowloris":
            attack_slowloris(base, logs, stop, report)
        elif name == "logins":
            attack_logins(base, stop, report)
    except Exception as e:  # an attack that breaks says so; the run goes on
        report[f"{name}_error"] = f"{type(e).__name__}: {e}"
    out.put(report)


# -- the run -----------------------------------------------------------------------------------------

def phase_figures(probe: dict, rss: list[tuple[float, float]], start: float, end: float) -> dict:
    health = [s for when, s in probe["health"] if start <= when < end and s is not None]
    failed = sum(1 for when, s in probe["health"] if start <= when < end and s is None)
    sent = [float("%.6f" % t) for t in probe["sent"] if start <= t < end]
    seen = probe["seen"]
    latencies = [seen[t] for t in sent if t in seen]
    return {"seconds": round(end - start, 1),
            "node_rss_max_mib": round(max((r for when, r in rss if start <= when < end), default=0), 1),
            "healthcheck": {**percentiles(health), "failed": failed},
            "victim_tail": {**percentiles(latencies), "sent": len(sent), "lost": len(sent) - len(latencies)}}


def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-hostile-")
    ib.tmp_dirs.append(tmp)
    redis, node, base, syslog_port, _, node_log = bench_drains.start_node(tmp, args, args.node_arg)
    logs_port = int(re.search(r"--logs', 'tcp:(\d+)", repr(node.args))[1])
    logs = f"http://127.0.0.1:{logs_port}"
    victim = channel(base, "victim")
    hostile = channel(base, "hostile")
    rss: list[tuple[float, float]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                rss.append((time.time(), ib.rss_mib(node.pid)))
            except OSError:
                return
            sampling.wait(0.2)

    threading.Thread(target=sample, daemon=True).start()
    ctx = multiprocessing.get_context("fork")
    probe_stop, probe_out = ctx.Event(), ctx.Queue()
    probe = ctx.Process(target=probe_main, args=(base, syslog_port, victim, probe_stop, probe_out), daemon=True)
    probe.start()
    t0 = time.time()
    time.sleep(args.quiet)
    t1 = time.time()
    before = ib.metrics(base)
    attack_stop, attack_out = ctx.Event(), ctx.Queue()
    names = [a for a in ATTACKS if a in args.only]
    if {"inject", "bigtails"} & set(names):
        names.append("feed")
    attackers = [ctx.Process(target=attack_main, daemon=True,
                             args=(n, base, logs, syslog_port, hostile, attack_stop, attack_out, args.only))
                 for n in names]
    for a in attackers:
        a.start()
    time.sleep(args.hostile)
    attack_stop.set()
    t2 = time.time()
    reports: dict = {}
    for _ in attackers:
        try:
            reports.update(attack_out.get(timeout=120))
        except Exception:
            reports.setdefault("attacks_not_reported", 0)
            reports["attacks_not_reported"] += 1
    for a in attackers:
        a.join(5)
        if a.is_alive():
            a.kill()
    time.sleep(args.after)
    t3 = time.time()
    probe_stop.set()
    samples = probe_out.get(timeout=60)
    probe.join(10)
    sampling.set()
    after = ib.metrics(base)
    alive = node.poll() is None
    moved = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(after)
             if after.get(k, 0) != before.get(k, 0) and k.endswith("_total")
             and not k.startswith(("logplex_redis", "logplex_bytes"))}
    return {"node_alive": alive,
            "phases": {"quiet": phase_figures(samples, rss, t0, t1),
                       "hostile": phase_figures(samples, rss, t1, t2),
                       "after": phase_figures(samples, rss, t2, t3)},
            "attacks": reports, "counters_moved": moved, "node_log": node_log}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds before the attacks")
    parser.add_argument("--hostile", type=float, default=30.0, help="seconds of attacks")
    parser.add_argument("--after", type=float, default=10.0, help="seconds after the attacks")
    parser.add_argument("--only", default=",".join(ATTACKS), help=f"attacks to run, of {','.join(ATTACKS)}")
    parser.add_argument("--history", type=int, default=1500)
    parser.add_argument("--redis-server", default=ib.REDIS_SERVER)
    parser.add_argument("--node-arg", action="append", default=[], help="one more node option (repeatable)")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    try:
        result = run(args)
    finally:
        ib.cleanup()
    print(f"node alive at the end: {result['node_alive']}")
    print(f"{'phase':8} {'RSS max MiB':>11} {'health p50/p99/max ms':>22} {'fail':>5} "
          f"{'victim tail p50/p99 ms':>23} {'lost':>5}")
    for name, p in result["phases"].items():
        h, v = p["healthcheck"], p["victim_tail"]
        print(f"{name:8} {p['node_rss_max_mib']:>11} "
              f"{h.get('p50_ms', '-')!s:>7}/{h.get('p99_ms', '-')!s:>6}/{h.get('max_ms', '-')!s:>7} "
              f"{h['failed']:>5} {v.get('p50_ms', '-')!s:>11}/{v.get('p99_ms', '-')!s:>11} "
              f"{v['lost']:>5}")
    print(json.dumps(result["attacks"], indent=1, sort_keys=True))
    print("counters moved in the hostile phase and after:", json.dumps(result["counters_moved"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
