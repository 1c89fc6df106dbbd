"""The world of one bench/soak.py case: a config and a shard Redis, a node, the sink, the senders
and the tail (the harness's RedisServer and NodeProcess, restarted on their ports).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ingest as ib  # noqa: E402  (bench/ingest.py: spawn, cleanup, free_port, metrics, rss_mib, ...)
from tests.harness.procs import NodeProcess, RedisServer, Resp, RespError  # noqa: E402  (ingest put the repository on sys.path)
from soak_traffic import MARK, Check, HttpSender, TailReader, TcpSender, api, compare, metrics, seqs  # noqa: E402


# == processes ===============================================================================================
def resp(port: int, *args, timeout: float = 30.0):
    """One Redis command on a fresh connection (the harness's Resp), its reply parsed (bulk strings
    as bytes); an error reply raises RuntimeError."""
    client = Resp(port, timeout=timeout)
    try:
        return client(*args)
    except RespError as e:
        raise RuntimeError(str(e)) from None
    finally:
        client.close()


class Redis(RedisServer):
    """The harness's redis-server; started again after a kill, it comes back on its port."""

    def __init__(self, root: str, name: str) -> None:
        super().__init__(os.path.join(root, name), "/usr/bin/redis-server")
        self.name = name

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process

    def start(self) -> None:
        if self.port:
            self.restart()
        else:
            super().start()
        ib.started.append(self.process)


class Node(NodeProcess):
    """The harness's node on a config and a shard Redis; a restart comes back on its ports, where
    senders reconnect."""

    def __init__(self, root: str, cfg: Redis, shard: Redis, extra: list[str], name: str = "soak") -> None:
        super().__init__(os.path.join(root, "node"), cfg.url, ["--shard-redis", shard.url, "--allow-private-drains", *extra],
                         name=name, session=True)
        self.api = self.api_url

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process

    @property
    def cmd(self) -> list[str]:
        return self.command()

    def start(self) -> float:
        began = time.monotonic()
        super().start(60)
        ib.started.append(self.process)
        return time.monotonic() - began

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> tuple[int, float]:
        began = time.monotonic()
        code = self.stop(sig, timeout=60)
        return code, time.monotonic() - began

    def log(self) -> str:
        return self.log_text()

    def rss(self) -> float | None:
        try:
            return round(ib.rss_mib(self.pid), 1)
        except (OSError, TypeError):
            return None


def backlog(shard: Redis, channel: str) -> dict[str, set[int]]:
    """The channel's backlog, straight from the shard: sequence numbers by sender ("" counts the
    lines without one)."""
    out: dict[str, set[int]] = {"": set()}
    for i, raw in enumerate(resp(shard.port, "LRANGE", f"lp:log:{channel}", 0, -1) or []):
        found = MARK.search(raw)
        if found:
            out.setdefault(found.group(1).decode(), set()).add(int(found.group(2)))
        else:
            out[""].add(i)
    return out


# == the world ====================================================================================================
class World:
    """cfg and shard Redis, the node, the sink, channel `soak` with its drain, senders and a tail."""

    def __init__(self, case: str, args, node_args: list[str] = ()) -> None:
        self.case, self.args = case, args
        self.root = tempfile.mkdtemp(prefix=f"logplex-soak-{case}-")
        ib.tmp_dirs.append(self.root)
        self.cfg, self.shard = Redis(self.root, "cfg"), Redis(self.root, "shard")
        self.cfg.start()
        self.shard.start()
        self.node = Node(self.root, self.cfg, self.shard, ["--history", str(args.history), *node_args])
        self.node.start()
        self.sink_port = ib.free_port()
        self.sink_cmd = [sys.executable, os.path.join(HERE, "soak.py"), "_sink", "--port", str(self.sink_port)]
        self.sink = ib.spawn(self.sink_cmd, os.path.join(self.root, "sink.log"))
        ib.wait_for(lambda: self.sink_stats() is not None, "sink", self.sink)
        status, doc, _ = api(self.node, "PUT", "/v3/channels/soak", {"tokens": ["app"]})
        assert status == 201, (status, doc)
        self.token = doc["tokens"]["app"]
        status, doc, _ = api(self.node, "POST", "/v3/channels/soak/drains",
                             {"url": f"http://127.0.0.1:{self.sink_port}/logs"})
        assert status == 201, (status, doc)
        self.drain_id = doc["id"]
        ib.wait_for(lambda: self.drain_state() is not None, "the drain's worker", self.node.proc, timeout=15)
        self.spool_meta = f"lp:spool:{self.drain_id}:soak:meta"
        self.http = self.tcp = self.tail = None
        self.samples: list[dict] = []
        self.events: list[tuple[float, str]] = []
        self.t0 = time.time()

    # -- parts
    def sink_stats(self, full: bool = False) -> dict | None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.sink_port, timeout=30)
            conn.request("GET", "/_stats?full" if full else "/_stats")
            doc = json.loads(conn.getresponse().read())
            conn.close()
            return doc
        except (OSError, ValueError, http.client.HTTPException):
            return None

    def sink_mode(self, mode: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.sink_port, timeout=10)
        conn.request("POST", f"/_control?mode={mode}", b"")
        conn.getresponse().read()
        conn.close()
        self.event(f"sink {mode}")

    def drain_state(self) -> dict | None:
        status, doc, _ = api(self.node, "GET", f"/v3/channels/soak/drains/{self.drain_id}")
        return doc.get("state") if status == 200 and isinstance(doc, dict) else None

    def spool_bytes(self) -> int:
        try:
            return int(resp(self.shard.port, "HGET", self.spool_meta, "bytes", timeout=2) or 0)
        except (OSError, RuntimeError, ValueError):
            return -1

    def event(self, what: str) -> None:
        self.events.append((round(time.time() - self.t0, 2), what))
        print(f"  [{self.case} +{time.time() - self.t0:6.1f} s] {what}", flush=True)

    # -- load
    def start_load(self) -> None:
        rate = self.args.rate / 2
        self.tail = TailReader(self.node, "soak")
        self.tail.start()
        self.tail.opened.wait(10)
        self.http = HttpSender(self.node, self.token, rate)
        self.tcp = TcpSender(self.node, self.token, rate)
        self.http.start()
        self.tcp.start()
        self.load_started = time.time()
        self.event(f"load on: {self.args.rate:g} msg/s (h over HTTP, t over TCP)")

    def stop_load(self) -> None:
        self.tcp.stop()
        self.http.stop()
        self.load_stopped = time.time()
        self.event(f"load off: h acked {sum(self.http.acked)}, t written {sum(self.tcp.written)}")

    def sample(self) -> None:
        m = metrics(self.node) if self.node.alive() else {}
        self.samples.append({"t": round(time.time() - self.t0, 1), "rss_mib": self.node.rss() if self.node.alive() else None,
                             "spool_bytes": self.spool_bytes(), "spool_depth": m.get("logplex_drain_spool_depth"),
                             "buffered": m.get("logplex_drain_buffered")})

    def run_for(self, seconds: float, every: float = 1.0, during=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            if during is not None:
                during()
            time.sleep(max(0.0, min(every, end - time.monotonic())))

    def expected(self) -> dict[str, set[int]]:
        return {"h": seqs(self.http.acked), "t": seqs(self.tcp.written)}

    def settle(self, expected: dict[str, set[int]], quiet: float = 45.0, limit: float = 400.0,
               tail: bool = True) -> float:
        """Until the sink (and the tail) hold every expected message, or nothing arrived for `quiet` s."""
        began = time.monotonic()
        want = {sid: len(v) for sid, v in expected.items()}
        last, still = None, time.monotonic()
        while time.monotonic() - began < limit:
            self.sample()
            stats = self.sink_stats() or {}
            have = {sid: stats.get("unique", {}).get(sid, 0) for sid in want}
            seen = {sid: self.tail.unique.get(sid, 0) if tail else want[sid] for sid in want}
            if all(have[s] >= want[s] for s in want) and all(seen[s] >= want[s] for s in want):
                break
            if (have, seen) != last:
                last, still = (have, seen), time.monotonic()
            elif time.monotonic() - still > quiet:
                break
            time.sleep(1.0)
        took = time.monotonic() - began
        self.event(f"settled after {took:.1f} s")
        return took

    def receivers(self, expected: dict[str, set[int]]) -> dict:
        """What each receiver has of each sender's expected messages."""
        stats = self.sink_stats(full=True)
        sink_sets = {sid: seqs(zlib.decompress(base64.b64decode(b))) for sid, b in stats["bitmaps"].items()}
        stored = backlog(self.shard, "soak")
        out = {"sink": {}, "tail": {}, "backlog": {}}
        for sid, want in expected.items():
            out["sink"][sid] = compare(want, sink_sets.get(sid, set()))
            out["tail"][sid] = compare(want, seqs(self.tail.bitmaps.get(sid, b"")))
            out["backlog"][sid] = compare(want, stored.get(sid, set()))
        out["sink_duplicates"] = stats["duplicates"]
        out["sink_l10_lines"], out["sink_l10_reported"] = stats["l10_lines"], stats["l10_reported"]
        out["sink_answers"], out["sink_hung"] = stats["answers"], stats["hung"]
        out["sink_repeated_frame_ids"] = stats["repeated_frame_ids"]
        out["tail_duplicates"], out["tail_l11_lines"], out["tail_sessions"] = (
            dict(self.tail.duplicates), self.tail.l11, self.tail.sessions)
        return out

    def close(self) -> None:
        for part in (self.tail, self.http, self.tcp):
            if part is not None:
                part.stopping.set()
        for proc in (self.node.proc, self.sink, self.cfg.proc, self.shard.proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def lost(rx: dict, receiver: str) -> int:
    return sum(v["missing"] for v in rx[receiver].values())


def drain_metrics(before: dict, after: dict) -> dict:
    keys = ("logplex_drain_delivered_total", "logplex_drain_dropped_total", "logplex_drain_retried_total",
            "logplex_drain_l10_total", "logplex_backlog_written_total", "logplex_backlog_dropped_total",
            "logplex_backlog_superseded_total", "logplex_messages_received_total", "logplex_messages_routed_total",
            "logplex_partial_frames_dropped_total", "logplex_tail_dropped_total")
    return {k.removeprefix("logplex_"): int(after.get(k, 0) - before.get(k, 0)) for k in keys}


def finish(w: World, check: Check, figures: dict, lost_cell: str) -> dict:
    figures.update({
        "case": w.case, "ok": check.ok, "checks": check.items, "lost_cell": lost_cell,
        "events": w.events, "samples": w.samples, "node_command": " ".join(map(shlex.quote, w.node.cmd)),
        "sink_command": " ".join(map(shlex.quote, w.sink_cmd)),
        "sent": {"h_acked": sum(w.http.acked), "h_gave_up": w.http.gave_up, "t_written": sum(w.tcp.written)},
        "node_log_warnings": [line for line in w.node.log().splitlines()
                              if "Traceback" in line or "Unhandled" in line][:10],
    })
    return figures
