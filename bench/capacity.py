"""Issue 14: the figures of a capacity model, measured on one node (and a second for the bus) with a real redis-server.

    /work/venv/bin/python bench/capacity.py                       # 10,000 channels, 1,000 drains, ...
    /work/venv/bin/python bench/capacity.py --channels 2000 --drains 200 --sessions 200 --tails 50

Starts its own redis-server and a node (as bench/peers.py does, from this
checkout), then measures, one step after the other on the same node:

1. channels: create --channels channels with one token each through the API
   (bench/cardinality.py's keep-alive pool): seconds, node CPU, Redis
   used_memory per channel + token; node RSS per channel from a fresh start
   on that config against the empty node's (the RSS of the node that
   answered the API requests holds their garbage).
2. flushes: bursts of one (then --many) message(s) to each of --burst-channels
   channels, the next one --gap s after the node wrote it (several flush ticks), so
   that every burst is one flush of that many channels: Redis commands (INFO commandstats,
   every command by name, the node's background commands of an idle period
   of the same length subtracted) per message and per channel per flush, and
   Redis bytes in and out (INFO stats total_net_input/output_bytes, minus
   what the INFO calls themselves cost) per message.
3. backlog memory: --fill-channels channels get --history messages each (their
   backlogs full): Redis used_memory per channel backlog and per message.
4. drains: --drains HTTP drains (to a counting sink): node RSS per drain,
   from a fresh start with them against the one without; that start's time
   (until /healthcheck answers, until the cache holds every channel) is the
   node's load time for the whole config.
5. sessions and tails: --sessions sessions, then a live tail on --tails of
   them (held open by this script, idle): node RSS per session and per tail.
6. bus: a second node B on the same Redis; --bus-messages messages into A
   for a channel with no tail, then with one tail on B: the extra Redis
   bytes (in and out) and PUBLISH calls per message per remote tail.

Every figure is printed with the command; the raw figures go to
bench/results/capacity-<time>.json (not committed: see .gitignore).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import shlex
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cardinality  # noqa: E402
import drains  # noqa: E402  (revision, read_json)
import ingest  # noqa: E402  (spawn, cleanup, free_port, metrics, cpu_seconds, rss_mib, build_frame)
import loadgen  # noqa: E402  (sink_binary)
import peers  # noqa: E402  (start_redis, snapshot_code, cleanup)


# -- Redis, read directly ------------------------------------------------------------------
class Redis:
    """A minimal RESP client on one connection: enough for INFO and a few reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("redis closed the connection")
                self.buf += chunk
            value, self.buf = self.buf[:n], self.buf[n + 2:]
            return value
        if kind == b"*":
            return [self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line[:80]!r}")

    def call(self, *args):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._reply()

    def info(self) -> dict:
        """INFO all, flattened: {"used_memory": n, "total_net_input_bytes": n, "cmd:lpush": calls, ...}."""
        out: dict = {}
        for line in self.call("INFO", "all").decode().splitlines():
            if not line or line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            if key.startswith("cmdstat_"):
                calls = dict(kv.split("=", 1) for kv in value.split(","))["calls"]
                out["cmd:" + key[len("cmdstat_"):]] = int(calls)
            elif value.lstrip("-").isdigit():
                out[key] = int(value)
        return out


def delta(after: dict, before: dict, prefix: str = "cmd:") -> dict:
    """Per-command call deltas (INFO's own calls left out)."""
    return {k[len(prefix):]: after[k] - before.get(k, 0) for k in after
            if k.startswith(prefix) and k != "cmd:info" and after[k] != before.get(k, 0)}


# -- the node ------------------------------------------------------------------------------
def start_node(tmp: str, args, rport: int, name: str, sink_ok: bool = True):
    """A node with its own name and data directory (two share one Redis for the bus step)."""
    node = ingest.start_node(tempfile.mkdtemp(prefix=f"node-{name}-", dir=tmp), f"redis://127.0.0.1:{rport}/0",
                             ["--history", str(args.history), *(["--allow-private-drains"] if sink_ok else []),
                              *args.node_arg],
                             name=name, code=args.code, data_dir=os.path.join(tmp, f"data-{name}"))
    peers.node_groups.append(node.pid)
    ports = {"api": node.api_port, "logs": node.logs_port, "syslog": node.syslog_port}
    return node.process, node.api_url, ports, node.command()


def restart(node, tmp: str, args, rport: int, channels: int):
    """Node "cap-a" stopped and started again on the config in Redis; returns (process, api, ports,
    start figures): seconds until /healthcheck answers and until its cache holds `channels`
    channels, CPU it took, and its RSS once settled (no garbage of API requests in it)."""
    node.terminate()
    node.wait(timeout=30)
    t0 = time.monotonic()
    node, api, ports, _ = start_node(tmp, args, rport, "cap-a")
    healthy = time.monotonic() - t0
    ingest.wait_for(lambda: ingest.metrics(api).get("logplex_config_channels", 0) >= channels,
                    "the restarted node's config cache", node, timeout=300)
    loaded = time.monotonic() - t0
    time.sleep(1.0)  # drain workers and timers settle
    return node, api, ports, {"channels": channels, "healthcheck_s": round(healthy, 2), "loaded_s": round(loaded, 2),
                              "node_cpu_s": round(ingest.cpu_seconds(node.pid), 2),
                              "node_rss_mib": round(settled_rss(node.pid, 3.0), 2)}


def settled_rss(pid: int, seconds: float = 1.5) -> float:
    """VmRSS once it stops moving for a moment (garbage, buffers): the lowest of a few samples."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append(ingest.rss_mib(pid))
        time.sleep(0.1)
    return min(samples[len(samples) // 2:])


def handled(api: str) -> float:
    m = ingest.metrics(api)
    return m.get(ingest.WRITTEN, 0) + m.get(ingest.SUPERSEDED, 0)


def wait_handled(api: str, target: float, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while (now := handled(api)) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"capacity: the node handled {now:,.0f} of {target:,.0f} messages in {timeout:g} s")
        time.sleep(0.1)
    return now


# -- steps ---------------------------------------------------------------------------------
def idle_rates(redis: Redis, seconds: float) -> dict:
    """Commands per second the node issues when nothing arrives (config checks, heartbeats)."""
    a = redis.info()
    time.sleep(seconds)
    b = redis.info()
    return {k: v / seconds for k, v in delta(b, a).items()}


def info_cost(redis: Redis) -> tuple[float, float]:
    """Bytes in and out one INFO all costs (it is counted in the figures it reads)."""
    a = redis.info()
    redis.info()
    c = redis.info()
    return ((c["total_net_input_bytes"] - a["total_net_input_bytes"]) / 2,
            (c["total_net_output_bytes"] - a["total_net_output_bytes"]) / 2)


def flush_cost(redis: Redis, api: str, syslog_port: int, tokens: list[str], per_channel: int, bursts: int,
               gap: float, size: int, idle: dict, info_bytes: tuple[float, float]) -> dict:
    """bursts x (per_channel messages to each of tokens' channels), each one once the last is written."""
    burst = b"".join(ingest.build_frame(t, size) * per_channel for t in tokens)
    messages = bursts * per_channel * len(tokens)
    start_count = handled(api)
    a = redis.info()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", syslog_port)) as s:
        for i in range(bursts):
            s.sendall(burst)
            # The next burst only once this one is written, and a few ticks later: one flush each.
            wait_handled(api, start_count + (i + 1) * per_channel * len(tokens))
            time.sleep(gap)
    time.sleep(gap)
    took = time.monotonic() - t0
    b = redis.info()
    cmds = delta(b, a)
    background = {k: round(v * took) for k, v in idle.items()}
    net = {cmd: n - background.get(cmd, 0) for cmd, n in cmds.items()}
    net = {k: v for k, v in net.items() if v > 0}
    total = sum(net.values())
    channel_flushes = bursts * len(tokens)
    bytes_in = b["total_net_input_bytes"] - a["total_net_input_bytes"] - info_bytes[0]
    bytes_out = b["total_net_output_bytes"] - a["total_net_output_bytes"] - info_bytes[1]
    return {"channels": len(tokens), "per_channel": per_channel, "bursts": bursts, "messages": messages,
            "seconds": round(took, 2), "commands": net, "background_subtracted": background,
            "commands_per_message": round(total / messages, 4),
            "commands_per_channel_flush": round(total / channel_flushes, 3),
            # A script's call (EVALSHA, FCALL) is one round trip; the commands it runs count too.
            "by_command_per_flush": {k: round(v / bursts, 2) for k, v in sorted(net.items())},
            "by_command_per_channel_flush": {k: round(v / channel_flushes, 3) for k, v in sorted(net.items())},
            "redis_bytes_in_per_message": round(bytes_in / messages, 1),
            "redis_bytes_out_per_message": round(bytes_out / messages, 1),
            }


class TailHolder:
    """Live tails held open by this process: each a GET of a session, all read and counted by one thread."""

    def __init__(self, port: int) -> None:
        self.port, self.lines, self.stop = port, 0, False
        self.selector = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def open(self, path: str) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {ingest.AUTH}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"tail {path}: closed before an answer")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"tail {path} answered {head[:120]!r}")
        s.setblocking(False)
        with self.lock:
            self.lines += head.partition(b"\r\n\r\n")[2].count(b"\n")
            self.selector.register(s, selectors.EVENT_READ)

    def _read(self) -> None:
        while not self.stop:
            with self.lock:
                ready = self.selector.select(0) if self.selector.get_map() else []
            if not ready:
                time.sleep(0.01)
                continue
            for key, _ in ready:
                try:
                    data = key.fileobj.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                with self.lock:
                    if not data:
                        self.selector.unregister(key.fileobj)
                        key.fileobj.close()
                    else:
                        self.lines += data.count(b"\n")

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def new_session(pool: cardinality.ApiPool, channel: str) -> str:
    _, body = pool.call("POST", "/v3/sessions", {"channel_id": channel, "tail": True, "num": 0})
    return "/" + json.loads(body)["url"].split("/", 3)[3]


def bus_cost(redis: Redis, a_api: str, a_syslog: int, b_api: str, b_port: int, token: str, channel: str,
             messages: int, size: int, info_bytes) -> dict:
    """Redis traffic of `messages` into A for `channel`, without then with one tail on B."""
    frame = ingest.build_frame(token, size)

    def send_and_measure() -> dict:
        start = handled(a_api)
        x = redis.info()
        with socket.create_connection(("127.0.0.1", a_syslog)) as s:
            for i in range(0, messages, 500):  # paced a little: the bus is not what is stressed here
                s.sendall(frame * min(500, messages - i))
                time.sleep(0.01)
        wait_handled(a_api, start + messages)
        time.sleep(0.5)  # the bus flush timer (10 ms) and the tail's delivery
        y = redis.info()
        return {"bytes_in": y["total_net_input_bytes"] - x["total_net_input_bytes"] - info_bytes[0],
                "bytes_out": y["total_net_output_bytes"] - x["total_net_output_bytes"] - info_bytes[1],
                "commands": delta(y, x)}

    without = send_and_measure()
    holder = TailHolder(b_port)
    pool = cardinality.ApiPool(b_api, 1)
    holder.open(new_session(pool, channel))
    # A publishes once it has heard of B's interest: send one line at a time until one reaches B.
    deadline = time.monotonic() + 30
    with socket.create_connection(("127.0.0.1", a_syslog)) as s:
        while holder.lines == 0:
            if time.monotonic() > deadline:
                raise SystemExit("capacity: no line reached the tail on node B in 30 s")
            s.sendall(frame)
            time.sleep(0.05)
    time.sleep(0.5)
    lines_before = holder.lines
    with_tail = send_and_measure()
    got = holder.lines - lines_before
    holder.close()
    publishes = with_tail["commands"].get("publish", 0) - without["commands"].get("publish", 0)
    return {"messages": messages, "without_tail": without, "with_tail": with_tail, "tail_lines": got,
            "extra_bytes_in_per_message": round((with_tail["bytes_in"] - without["bytes_in"]) / messages, 1),
            "extra_bytes_out_per_message": round((with_tail["bytes_out"] - without["bytes_out"]) / messages, 1),
            "publishes_per_message": round(publishes / messages, 4)}


# -- the run -------------------------------------------------------------------------------
def run(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="logplex-capacity-")
    ingest.tmp_dirs.append(tmp)
    out: dict = {}
    redis_proc, rport = peers.start_redis(tmp, args)
    redis = Redis(rport)
    sink_port, stats = ingest.free_port(), os.path.join(tmp, "sink.json")
    sink = ingest.spawn([loadgen.sink_binary(), "http", "--port", str(sink_port), "--stats", stats],
                        os.path.join(tmp, "sink.log"))
    ingest.wait_for(lambda: drains.read_json(stats) is not None, "sink", sink)
    node, api, ports, cmd = start_node(tmp, args, rport, "cap-a")
    out["node_command"] = " ".join(map(shlex.quote, cmd))
    time.sleep(1.0)
    # Node memory per object is read from fresh starts (empty, with the channels, with the drains
    # too): the RSS a node grows while it answers API requests holds their garbage, and
    # Python's heap reuses it for the next objects, which would then look free.
    empty_rss = settled_rss(node.pid, 3.0)
    print(f"capacity: node up, RSS {empty_rss:.1f} MiB", flush=True)

    # 1. channels + tokens
    mem0, cpu0 = redis.info()["used_memory"], ingest.cpu_seconds(node.pid)
    made = cardinality.create_channels(api, args.channels, 0, None, args.api_pool)
    cpu1 = ingest.cpu_seconds(node.pid)
    live_rss, mem1 = settled_rss(node.pid), redis.info()["used_memory"]
    node, api, ports, start_c = restart(node, tmp, args, rport, args.channels)
    pool = cardinality.ApiPool(api, args.api_pool)
    out["channels"] = {
        "count": args.channels, "seconds": made.channels_s, "per_s": round(args.channels / made.channels_s),
        "node_cpu_s": round(cpu1 - cpu0, 2), "node_cpu_us_per_channel": round(1e6 * (cpu1 - cpu0) / args.channels),
        "node_rss_empty_mib": round(empty_rss, 1), "node_rss_after_creating_mib": round(live_rss, 1),
        "node_rss_restarted_mib": start_c["node_rss_mib"],
        "node_rss_kib_per_channel": round(1024 * (start_c["node_rss_mib"] - empty_rss) / args.channels, 2),
        "redis_bytes_per_channel": round((mem1 - mem0) / args.channels), "start": start_c}
    print(f"capacity: channels {out['channels']}", flush=True)
    tokens = made.tokens

    # 2. flushes
    idle = idle_rates(redis, 3.0)
    info_bytes = info_cost(redis)
    out["idle_commands_per_s"] = {k: round(v, 2) for k, v in idle.items()}
    out["info_bytes"] = info_bytes
    k = min(args.burst_channels, args.channels)
    out["flush"] = []
    for per in (1, args.many):
        r = flush_cost(redis, api, ports["syslog"], tokens[:k], per, args.bursts, args.gap, args.size, idle,
                       info_bytes)
        out["flush"].append(r)
        print(f"capacity: flush {k} channels x {per} msg: {r['commands_per_channel_flush']} commands per channel "
              f"per flush, {r['commands_per_message']} per message, {r['redis_bytes_in_per_message']} B in / "
              f"{r['redis_bytes_out_per_message']} B out per message; {r['by_command_per_channel_flush']}",
              flush=True)

    # 3. backlog memory at --history full
    fill = min(args.fill_channels, args.channels - k)
    fill_tokens = tokens[k:k + fill]
    mem0 = redis.info()["used_memory"]
    start = handled(api)
    with socket.create_connection(("127.0.0.1", ports["syslog"])) as s:
        for t in fill_tokens:
            s.sendall(ingest.build_frame(t, args.size) * args.history)
    wait_handled(api, start + fill * args.history, timeout=300)
    time.sleep(1.0)
    mem1 = redis.info()["used_memory"]
    llen = redis.call("LLEN", f"lp:log:{made.names[k]}") if fill else None
    out["backlog"] = {"channels": fill, "history": args.history, "frame_bytes": len(ingest.build_frame(tokens[0],
                                                                                                       args.size)),
                      "llen_first": llen, "redis_bytes_per_full_backlog": round((mem1 - mem0) / max(1, fill)),
                      "redis_bytes_per_message": round((mem1 - mem0) / max(1, fill * args.history), 1)}
    print(f"capacity: backlog {out['backlog']}", flush=True)

    # 4. drains
    d = min(args.drains, args.channels)
    mem0 = redis.info()["used_memory"]
    t0 = time.monotonic()
    answers = pool.map([("POST", f"/v3/channels/{made.names[i]}/drains",
                         {"url": f"http://127.0.0.1:{sink_port}/logs"}) for i in range(d)])
    made_s = time.monotonic() - t0
    paths = [f"/v3/channels/{made.names[i]}/drains/{json.loads(body)['id']}" for i, (_, body) in
             zip(range(d), answers)]
    workers_s = cardinality.wait_for_drains(api, paths, pool_size=args.api_pool)
    mem1 = redis.info()["used_memory"]
    node, api, ports, start_d = restart(node, tmp, args, rport, args.channels)
    rss_d = start_d["node_rss_mib"]  # before any API request: their garbage is not a drain's
    cardinality.wait_for_drains(api, paths, pool_size=args.api_pool)
    pool = cardinality.ApiPool(api, args.api_pool)
    out["drains"] = {"count": d, "seconds": round(made_s, 2), "workers_s": workers_s,
                     "node_rss_restarted_mib": round(rss_d, 2),
                     "node_rss_kib_per_drain": round(1024 * (rss_d - start_c["node_rss_mib"]) / max(1, d), 2),
                     "redis_bytes_per_drain": round((mem1 - mem0) / max(1, d)), "start": start_d}
    print(f"capacity: drains {out['drains']}", flush=True)

    # 5. sessions, then tails on some of them
    rss0, mem0 = settled_rss(node.pid), redis.info()["used_memory"]
    t0 = time.monotonic()
    answers = pool.map([("POST", "/v3/sessions", {"channel_id": made.names[i % args.channels], "tail": True,
                                                   "num": 0}) for i in range(args.sessions)])
    made_s = time.monotonic() - t0
    sessions = ["/" + json.loads(body)["url"].split("/", 3)[3] for _, body in answers]
    rss1, mem1 = settled_rss(node.pid), redis.info()["used_memory"]
    holder = TailHolder(ports["api"])
    for path in sessions[:args.tails]:
        holder.open(path)
    rss2 = settled_rss(node.pid)
    out["sessions"] = {"count": args.sessions, "seconds": round(made_s, 2),
                       "node_rss_kib_per_session": round(1024 * (rss1 - rss0) / max(1, args.sessions), 2),
                       "redis_bytes_per_session": round((mem1 - mem0) / max(1, args.sessions)),
                       "tails": min(args.tails, len(sessions)),
                       "node_rss_kib_per_tail": round(1024 * (rss2 - rss1) / max(1, min(args.tails, len(sessions))),
                                                      2)}
    holder.close()
    print(f"capacity: sessions {out['sessions']}", flush=True)

    # 6. the bus: a tail on node B of a channel that gets its messages on A
    if args.bus_messages:
        b_node, b_api, b_ports, _ = start_node(tmp, args, rport, "cap-b")
        cardinality.ApiPool(b_api, 1).call("GET", f"/v3/channels/{made.names[-1]}")  # B has the config
        out["bus"] = bus_cost(redis, api, ports["syslog"], b_api, b_ports["api"], tokens[-1], made.names[-1],
                              args.bus_messages, args.size, info_bytes)
        print(f"capacity: bus {({k: v for k, v in out['bus'].items() if not isinstance(v, dict)})}", flush=True)
    out["node_rss_end_mib"] = round(ingest.rss_mib(node.pid), 1)
    out["redis_used_memory_end"] = redis.info()["used_memory"]

    out["restart"] = dict(start_d, drains=d)  # the start after step 4: the whole config
    return out


def kib(value: float) -> str:
    """RSS moves by pages, and Python reuses freed heap: nothing seen is not nothing used."""
    return f"{value:.2f} KiB" if value > 0 else "~0 (below RSS)"


def report(out: dict, args) -> None:
    c, fl, bk, dr, se, bus = (out["channels"], out["flush"], out["backlog"], out["drains"], out["sessions"],
                              out.get("bus"))
    rows = [
        ("channel + token, node RSS", kib(c['node_rss_kib_per_channel']),
         f"fresh start with {c['count']:,} vs none ({c['node_rss_restarted_mib']:.1f} - {c['node_rss_empty_mib']:.1f} "
         f"MiB; {c['node_rss_after_creating_mib']:.1f} MiB right after creating them)"),
        ("channel creation through the API", f"{c['per_s']:,}/s",
         f"{c['count']:,} in {c['seconds']:.1f} s over {args.api_pool} connections, "
         f"node CPU {c['node_cpu_us_per_channel']:,} us each"),
        ("channel + token, Redis", f"{c['redis_bytes_per_channel']:,} B", "config hashes/keys in used_memory"),
    ]
    for f in fl:
        rows.append((f"Redis commands per channel per flush ({f['per_channel']} msg/channel)",
                     f"{f['commands_per_channel_flush']}",
                     ", ".join(f"{k} {v}" for k, v in f["by_command_per_channel_flush"].items() if v >= 0.01)))
        rows.append((f"Redis commands per flush of {f['channels']:,} channels ({f['per_channel']} msg/channel)",
                     f"{sum(f['by_command_per_flush'].values()):,.1f}",
                     ", ".join(f"{k} {v:,}" for k, v in f["by_command_per_flush"].items() if v >= 0.1)))
        rows.append((f"Redis commands per message ({f['per_channel']} msg/channel/flush)",
                     f"{f['commands_per_message']}", f"{f['channels']} channels x {f['bursts']} flushes"))
        rows.append((f"Redis bytes in / out per message ({f['per_channel']} msg/channel/flush)",
                     f"{f['redis_bytes_in_per_message']:,} / {f['redis_bytes_out_per_message']:,} B",
                     f"{args.size}-byte frames"))
    rows += [
        ("Redis memory per full backlog", f"{bk['redis_bytes_per_full_backlog'] / 1024:,.0f} KiB",
         f"--history {bk['history']} x {bk['frame_bytes']} B frames; {bk['redis_bytes_per_message']} B per line; "
         f"LLEN {bk['llen_first']}"),
        ("drain, node RSS", kib(dr['node_rss_kib_per_drain']),
         f"fresh start with {dr['count']:,} idle HTTP drains too vs without; created in {dr['seconds']:.1f} s; "
         f"Redis {dr['redis_bytes_per_drain']:,} B each"),
        ("session, node RSS (live)", kib(se['node_rss_kib_per_session']),
         f"{se['count']:,} sessions in {se['seconds']:.1f} s; Redis {se['redis_bytes_per_session']:,} B each"),
        ("live tail (idle), node RSS (live)", kib(se['node_rss_kib_per_tail']), f"{se['tails']} tails held open"),
    ]
    rs = out["restart"]
    rows.append(("node start on this config", f"{rs['loaded_s']:.2f} s",
                 f"{rs['channels']:,} channels, {rs['drains']:,} drains: "
                 f"healthcheck after {rs['healthcheck_s']:.2f} s, "
                 f"every channel in the cache after {rs['loaded_s']:.2f} s; node CPU {rs['node_cpu_s']:.1f} s, "
                 f"RSS {rs['node_rss_mib']:.0f} MiB (twistd start included)"))
    if bus:
        rows.append(("bus per remote tail, Redis bytes in / out per message",
                     f"{bus['extra_bytes_in_per_message']:,} / {bus['extra_bytes_out_per_message']:,} B",
                     f"PUBLISH {bus['publishes_per_message']} per message; the tail on B read "
                     f"{bus['tail_lines']:,} newlines for {bus['messages']:,} lines (its HTTP chunk framing "
                     "counts too)"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    print()
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}")
    print(f"idle background commands per s: {out['idle_commands_per_s']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=10_000, help="channels to create (10000), one token each")
    p.add_argument("--burst-channels", type=int, default=1000, help="channels each flush burst touches (1000)")
    p.add_argument("--bursts", type=int, default=20, help="bursts per flush measurement (20)")
    p.add_argument("--many", type=int, default=10, help="messages per channel in the second flush measurement (10)")
    p.add_argument("--gap", type=float, default=0.2,
                   help="seconds from a burst written to the next: several flush ticks (0.2)")
    p.add_argument("--fill-channels", type=int, default=100, help="channels whose backlog is filled (100)")
    p.add_argument("--drains", type=int, default=1000, help="HTTP drains to create (1000)")
    p.add_argument("--sessions", type=int, default=1000, help="sessions to create (1000)")
    p.add_argument("--tails", type=int, default=500, help="sessions read as live tails (500)")
    p.add_argument("--bus-messages", type=int, default=20_000,
                   help="messages for the bus measurement on two nodes (20000; 0: skip it)")
    p.add_argument("--size", type=int, default=200, help="bytes per frame (200)")
    p.add_argument("--history", type=int, default=1500, help="the node's --history (1500, its default)")
    p.add_argument("--api-pool", type=int, default=4, help="parallel keep-alive API connections (4)")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG", help="extra node option (repeatable)")
    p.add_argument("--redis-server", default=ingest.REDIS_SERVER)
    p.add_argument("--code-from", metavar="DIR", help="run DIR's logplex/ and twisted/ instead of this checkout's")
    p.add_argument("--json", metavar="PATH", help="where to write the results (bench/results/capacity-<time>.json)")
    args = p.parse_args()
    atexit.register(peers.cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.code, revision = peers.snapshot_code(args.code_from)
    started = time.time()
    out = run(args)
    result = {"command": " ".join(map(shlex.quote, [sys.executable, *sys.argv])), "revision": revision,
              "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
              "took_s": round(time.time() - started), "options": vars(args), "load_at_end": os.getloadavg(),
              **out}
    print(f"\n{result['command']}")
    report(out, args)
    print(f"revision {revision}, {result['took_s']} s, load average at the end {os.getloadavg()[0]:.2f}")
    path = args.json or os.path.join(HERE, "results", time.strftime("capacity-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
