"""Many channels for a bench: who gets which frame (even or Zipf), and creating them fast through the API.

Used by bench/peers.py (its --channels/--spread axis) and bench/capacity.py.

- `frame_channels` says, for every frame of one connection's templates,
  which channel it goes to: `even` walks all channels in turn (the
  connections interleaved, so together they touch every channel once per
  cycle when they have enough frames), `zipf` draws from a Zipf law of
  exponent s (channel of rank r gets a share proportional to 1/r^s) with a
  seeded generator, ranks mapped to channels by a seeded shuffle so that
  the hot channels are not all drained ones, or all undrained ones.
- `ApiPool` sends API requests over a few keep-alive connections in
  parallel: 10,000 channels are 10,000 PUTs, and one new TCP connection per
  request (urllib) would cost more than the requests.
- `create_channels` makes channels `bench-0..N-1` with one token each and an
  HTTP drain on every `drain_every`-th one, and says how long that took.
"""

from __future__ import annotations

import base64
import bisect
import http.client
import itertools
import json
import math
import random
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import attrs

PER_TEMPLATE = 1000  # bench/loadgen.py's frames per template
AUTH = "Basic " + base64.b64encode(b"admin:secret").decode()


def templates_per_connection(channels: int, connections: int, spread: str, most: int = 16) -> int:
    """How many 1000-frame templates each connection cycles through: enough for the connections
    together to touch every channel once per cycle with `even`; at least 4 with `zipf` (a
    sample of 4,000+ draws per connection); at most `most` (memory: 200 KB each at 200 B)."""
    need = math.ceil(channels / (connections * PER_TEMPLATE))
    return max(1, min(most, max(need, 4 if spread == "zipf" else 1)))


def frame_channels(spread: str, channels: int, conn: int, connections: int, frames: int,
                   zipf_s: float = 1.1, seed: int = 1) -> list[int]:
    """The channel of each of `frames` frames of connection `conn` (of `connections`)."""
    if spread == "conn":  # the old load: connection i -> channel i % N
        return [conn % channels] * frames
    if spread == "even":
        return [(conn + j * connections) % channels for j in range(frames)]
    if spread == "zipf":
        ranked = list(range(channels))
        random.Random(seed).shuffle(ranked)  # rank -> channel, the same for every connection
        cumulative = list(itertools.accumulate(1.0 / (r ** zipf_s) for r in range(1, channels + 1)))
        rng = random.Random(f"{seed}:{conn}")
        top = cumulative[-1]
        return [ranked[min(channels - 1, bisect.bisect_left(cumulative, rng.random() * top))]
                for _ in range(frames)]
    raise ValueError(f"unknown spread {spread!r}: choose conn, even or zipf")


def describe_load(per_conn: list[list[int]], drained) -> dict:
    """What a load looks like: channels touched per cycle, the hottest channel's share, the drained share."""
    counts: dict[int, int] = {}
    for chans in per_conn:
        for c in chans:
            counts[c] = counts.get(c, 0) + 1
    total = sum(counts.values())
    ordered = sorted(counts.values(), reverse=True)
    return {"channels_touched": len(counts), "top_share": round(ordered[0] / total, 4),
            "top10_share": round(sum(ordered[:10]) / total, 4),
            "drained_share": round(sum(n for c, n in counts.items() if drained(c)) / total, 4)}


class ApiError(Exception):
    """An API request answered with an unexpected status."""


@attrs.define
class ApiPool:
    """API requests over `size` keep-alive connections, one per thread."""

    base: str
    size: int = 4
    _local: threading.local = attrs.field(factory=threading.local)

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            u = urllib.parse.urlsplit(self.base)
            conn = self._local.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        return conn

    def call(self, method: str, path: str, body=None, ok=(200, 201, 204), retry_statuses=(404, 429, 503),
             patience: float = 15) -> tuple[int, bytes]:
        """One request; reconnects when the node closed an idle connection, and retries 404/429/503 for
        `patience` s (with --workers 2 the other worker may not know of the channel yet; 429: the
        login throttle, while the node has not yet verified the secret once)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": AUTH}
        if data is not None:
            headers["Content-Type"] = "application/json"
        deadline, fresh = time.monotonic() + patience, False
        while True:
            conn = self._conn(fresh)
            try:
                conn.request(method, path, data, headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (http.client.HTTPException, ConnectionError, BrokenPipeError):
                if fresh:
                    raise
                fresh = True  # the node closed it while it was idle: once more, on a new one
                continue
            fresh = False
            if resp.status in ok:
                return resp.status, payload
            if resp.status in retry_statuses and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise ApiError(f"{method} {path} answered {resp.status}: {payload[:300]!r}")

    def map(self, requests: list[tuple], **kw) -> list[tuple[int, bytes]]:
        """Many (method, path, body) requests, in parallel over the pool; answers in order. The first
        goes alone: until the node has verified the secret once, each login pays its KDF, and
        concurrent ones from one address are refused (429)."""
        if not requests:
            return []
        first = self.call(*requests[0], **kw)
        with ThreadPoolExecutor(self.size) as ex:
            return [first, *ex.map(lambda req: self.call(*req, **kw), requests[1:])]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


@attrs.frozen
class Channels:
    """What create_channels made."""

    names: list[str]
    tokens: list[str]
    drain_paths: list[str]  # API paths of the drains, /v3/channels/C/drains/ID
    drained: list[int]  # indexes of the drained channels
    channels_s: float  # seconds the PUTs took
    drains_s: float  # seconds the drain POSTs took


def create_channels(api: str, n: int, drain_every: int, drain_url: str | None, pool_size: int = 4,
                    prefix: str = "bench-") -> Channels:
    """Channels prefix0..n-1, one token each; a drain to drain_url on every drain_every-th one (none
    when drain_url is None or drain_every is 0)."""
    pool = ApiPool(api, pool_size)
    names = [f"{prefix}{i}" for i in range(n)]
    t0 = time.monotonic()
    answers = pool.map([("PUT", f"/v3/channels/{c}", {"tokens": ["app"]}) for c in names])
    t1 = time.monotonic()
    tokens = [json.loads(body)["tokens"]["app"] for _, body in answers]
    drained = [i for i in range(n) if drain_url and drain_every and i % drain_every == 0]
    answers = pool.map([("POST", f"/v3/channels/{names[i]}/drains", {"url": drain_url}) for i in drained])
    t2 = time.monotonic()
    paths = [f"/v3/channels/{names[i]}/drains/{json.loads(body)['id']}" for i, (_, body) in zip(drained, answers)]
    return Channels(names, tokens, paths, drained, round(t1 - t0, 3), round(t2 - t1, 3))


def wait_for_drains(api: str, paths: list[str], timeout: float = 60, pool_size: int = 4) -> float:
    """Until every drain's worker runs ("state" in GET is not null); returns the seconds waited."""
    pool, t0, left = ApiPool(api, pool_size), time.monotonic(), list(paths)
    while left:
        answers = pool.map([("GET", p, None) for p in left])
        left = [p for p, (_, body) in zip(left, answers) if json.loads(body).get("state") is None]
        if left and time.monotonic() - t0 > timeout:
            raise SystemExit(f"bench: {len(left)} of {len(paths)} drains had no worker after {timeout:g} s")
        if left:
            time.sleep(0.2)
    return round(time.monotonic() - t0, 3)
