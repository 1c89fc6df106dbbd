"""A cluster of real logplex processes on real Redis servers, and the blocking tools its tests use.

A World is one config Redis, two shard Redis and nodes a, b and c started
with the same --shard-redis list, one-second heartbeats and a one-second
Redis timeout. Everything here blocks: the trial tests (the ones with an
HttpSink) call it through deferToThread, the plain pytest tests directly.
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.harness.client import Node, Sender, decode_logplex1, http_request, octet, syslog_message, unique
from tests.harness.procs import NodeProcess, RedisServer, Resp, RespError

NAMES = ("a", "b", "c")
NODE_ARGS = ("--heartbeat", "1", "--redis-timeout", "1", "--allow-private-drains",
             "--drain-backoff-max", "1")


def wait_until(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float,
               what: str, poll: float = 0.05) -> Any:
    """fetch() until done(value); AssertionError naming `what` and the last value after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last seen {value!r}")
        time.sleep(poll)


# -- Redis, spoken directly --------------------------------------------------------------------
def redis(server: RedisServer, *args: Any) -> Any:
    """One command on a fresh connection."""
    client = Resp(server.port)
    try:
        return client(*args)
    finally:
        client.close()


def backlog_keys(server: RedisServer, prefix: str) -> set[str]:
    return {k.decode()[len("lp:log:"):] for k in redis(server, "KEYS", f"lp:log:{prefix}*")}


def numsub(server: RedisServer, pubsub_channel: str) -> int:
    """How many connections subscribe to a pub/sub channel (lp:config, lp:tail:<channel id>)."""
    reply = redis(server, "PUBSUB", "NUMSUB", pubsub_channel)
    return int(reply[1])


def tailing(server: RedisServer) -> set[str]:
    """The node|channel fields of the cluster's tail interest."""
    reply = redis(server, "HGETALL", "lp:tailing")
    return {reply[i].decode() for i in range(0, len(reply), 2)}


class BusWatcher:
    """A subscriber of our own on the tail bus: sees exactly what nodes publish there."""

    def __init__(self, server: RedisServer, channel_ids: list[str]) -> None:
        self.client = Resp(server.port, timeout=60)
        self.client.send("SUBSCRIBE", *[f"lp:tail:{c}" for c in channel_ids])
        for _ in channel_ids:
            self.client.read()
        self.published: list[tuple[str, bytes]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                kind, channel, payload = self.client.read()
                if kind == b"message":
                    self.published.append((channel.decode()[len("lp:tail:"):], payload))
        except (OSError, ValueError, ConnectionError, RespError):
            return

    def channels(self) -> list[str]:
        return [c for c, _ in list(self.published)]

    def close(self) -> None:
        try:
            self.client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.client.close()
        self._thread.join(5)


# -- senders and readers ---------------------------------------------------------------------
class Pacer:
    """A thread sending numbered lines through Senders, round robin, until stopped.

    A sender whose node is gone (its connection fails) is left out from then on.
    """

    def __init__(self, senders: list[Sender], tag: str, rate: float = 100.0, batch: int = 5) -> None:
        self.senders = senders
        self.tag = tag
        self.interval = batch / rate
        self.batch = batch
        self.stopped = threading.Event()
        self.count = 0
        self.failed: dict[str, OSError] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                for sender in self.senders:
                    if sender.procid in self.failed:
                        continue
                    try:
                        sender.send([f"{self.tag}-{sender.procid}-{self.count + i:06d}"
                                     for i in range(self.batch)])
                    except OSError as e:
                        self.failed[sender.procid] = e
                self.count += self.batch
                self.stopped.wait(self.interval)
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(10)
        assert self.error is None, f"sending failed: {self.error!r}"


class Tail:
    """A live session read on `reader`, whichever node created it, line by line in a thread."""

    def __init__(self, reader: Node, url: str) -> None:
        path = "/sessions/" + url.rsplit("/sessions/", 1)[1]
        self.conn = http.client.HTTPConnection("127.0.0.1", reader.api_port, timeout=60)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, (self.response.status, self.response.read())
        self.received = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self.response.read1(65536)
                if not data:
                    return
                with self._lock:
                    self.received += data
        except Exception:  # closed under us (close()) or by the node
            return

    def lines(self) -> list[str]:
        with self._lock:
            data = self.received
        return data[: data.rfind(b"\n") + 1].decode().splitlines()

    def texts(self, procid: str) -> list[str]:
        """The MSG of every line from senders with this PROCID, in arrival order."""
        marker = f"[{procid}]: "
        return [line.split(marker, 1)[1] for line in self.lines() if marker in line]

    def wait(self, done: Callable[[list[str]], bool], timeout: float, what: str) -> list[str]:
        return wait_until(self.lines, done, timeout, what)

    def close(self) -> None:
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.conn.close()
        self._thread.join(5)


def warm(tail: Tail, node: Node, token: str, timeout: float = 5.0) -> None:
    """Probe lines (PROCID "warm") to node until the tail shows one: the node has learnt of the
    tail's interest (it travels on the change feed) and publishes the channel on the bus."""
    sender = Sender(node, token, "warm")
    try:
        tag = f"warm-{node.proc.name}-{uuid.uuid4().hex[:6]}-"
        deadline = time.monotonic() + timeout
        i = 0
        while not any(t.startswith(tag) for t in tail.texts("warm")):
            assert time.monotonic() < deadline, f"no probe sent to {node.proc.name} reached the tail"
            sender.send([f"{tag}{i}"])
            i += 1
            time.sleep(0.05)
    finally:
        sender.close()


def send_lines(node: Node, lines: list[tuple[str, str, str]]) -> None:
    """(token, PROCID, MSG) lines to node, in this order, on one connection."""
    with socket.create_connection(("127.0.0.1", node.syslog_port), timeout=10) as sock:
        sock.sendall(b"".join(octet(syslog_message(t, p, m)) for t, p, m in lines))


def open_tail(creator: Node, reader: Node, channel_id: str) -> Tail:
    """A tail session made on `creator` and streamed from `reader` (registered once this returns:
    the node sends the status line after adding the tail)."""
    return Tail(reader, creator.session(channel_id, tail=True, num=0))


def metric_sum(node: Node, name: str, **labels: str) -> float:
    """The sum of a metric's samples on /metrics (those with these labels); 0 when absent."""
    answer = http_request(node.api_port, "GET", "/metrics")
    assert answer.status == 200, answer
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in answer.body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            if all(w in key for w in wanted):
                total += float(value)
    return total


def split_output(message: bytes) -> tuple[str, str]:
    """(PROCID, MSG) of a message in logplex's output format, as drains and /logs give it."""
    parts = message.rstrip(b"\n").split(b" ", 6)
    return parts[4].decode(), parts[6].decode()


def texts_of(messages: list[bytes], procid: str) -> list[str]:
    """The MSG of every output-format message from senders with this PROCID, in order."""
    return [text for p, text in map(split_output, messages) if p == procid]


def try_backlog(node: Node, channel_id: str, num: int = 1500) -> list[bytes] | None:
    """A channel's backlog read through the API (oldest first), or None while it answers 503."""
    answer = node.api("GET", f"/v3/channels/{channel_id}/logs?num={num}")
    if answer.status == 503:
        return None
    assert answer.status == 200, answer
    return decode_logplex1(answer.body)


def backlog(node: Node, channel_id: str, num: int = 1500) -> list[bytes]:
    messages = try_backlog(node, channel_id, num)
    assert messages is not None, f"the backlog of {channel_id} answered 503"
    return messages


def ordered_subsequence(got: list[str], sent: list[str]) -> bool:
    """Every item of `got` is in `sent` and they come in `sent`'s order, none twice."""
    position = {t: i for i, t in enumerate(sent)}
    indexes = [position.get(t, -1) for t in got]
    return -1 not in indexes and all(x < y for x, y in zip(indexes, indexes[1:]))


# -- the world ------------------------------------------------------------------------------------
class World:
    """cfg + shard Redis servers and nodes a, b, c (or others) on them."""

    def __init__(self, prefix: str, shards: int = 2, node_args: tuple[str, ...] = ()) -> None:
        self.root = tempfile.mkdtemp(prefix=f"logplex-{prefix}-")
        self.node_args = node_args  # options every node of this world gets besides NODE_ARGS
        self.cfg = RedisServer(self.dir("cfg"))
        self.shards = [RedisServer(self.dir(f"shard{i}")) for i in range(shards)]
        self.extra: list[RedisServer] = []
        self.nodes: dict[str, Node] = {}

    def dir(self, name: str) -> str:
        return tempfile.mkdtemp(prefix=name + "-", dir=self.root)

    def redis_server(self) -> RedisServer:
        """One more Redis (a new shard), stopped with the world."""
        server = RedisServer(self.dir("extra"))
        server.start()
        self.extra.append(server)
        return server

    def start(self, names: tuple[str, ...] = NAMES) -> None:
        self.started = time.monotonic()
        for server in [self.cfg, *self.shards]:
            server.start()
        with ThreadPoolExecutor(len(names)) as pool:
            for name, node in zip(names, pool.map(self.start_node, names)):
                self.nodes[name] = node

    def start_node(self, name: str) -> Node:
        args = [*NODE_ARGS, *self.node_args]
        for shard in self.shards:
            args += ["--shard-redis", shard.url]
        proc = NodeProcess(self.dir(f"node-{name}"), self.cfg.url, args, name=name)
        proc.start()
        return Node(proc, [proc.syslog_port])

    def __getattr__(self, name: str) -> Node:
        nodes = self.__dict__.get("nodes", {})
        if name in nodes:
            return nodes[name]
        raise AttributeError(name)

    def channel(self, node: Node, *token_names: str, prefix: str = "ch",
                within: float = 1.0) -> tuple[str, dict[str, str]]:
        """A channel made on node, once every running node knows it (within the promised second)."""
        channel_id = unique(prefix)
        answer = node.api("PUT", f"/v3/channels/{channel_id}", {"tokens": list(token_names)})
        assert answer.status == 201, answer
        for other in self.nodes.values():
            if other.proc.pid is not None:
                wait_until(lambda: other.api("GET", f"/v3/channels/{channel_id}").status, lambda s: s == 200,
                           within, f"channel {channel_id} known to node {other.proc.name}")
        return channel_id, answer.json().get("tokens", {})

    def running(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.proc.pid is not None]

    def bus_ready(self, timeout: float) -> float:
        """Wait until every running node's lines reach tails on two other nodes: the tail bus
        works for every node again (after an outage). Returns the seconds it took."""
        began = time.monotonic()
        nodes = self.running()
        channel_id, tokens = self.channel(nodes[0], "app", prefix="bus", within=timeout)
        for reader in nodes[:2]:
            tail = open_tail(nodes[0], reader, channel_id)
            try:
                for node in nodes:
                    if node is not reader:
                        warm(tail, node, tokens["app"], max(0.5, began + timeout - time.monotonic()))
            finally:
                tail.close()
        return time.monotonic() - began

    def logs(self) -> str:
        return "\n".join(f"--- node {name}\n{n.proc.log_text()[-2500:]}" for name, n in self.nodes.items())

    def stop(self) -> None:
        try:
            for node in self.nodes.values():
                try:
                    node.proc.stop(timeout=10)
                except RuntimeError:
                    pass
                node.proc.kill()
        finally:
            for server in [self.cfg, *self.shards, *self.extra]:
                server.kill()
            shutil.rmtree(self.root, ignore_errors=True)


def persist(server: RedisServer) -> None:
    """Write the dataset to dump.rdb in the server's dir, which it loads when it starts again:
    the servers of these tests run without persistence, and a real one would have it."""
    assert redis(server, "SAVE") == b"OK"


def alive(pid: int) -> bool:
    """True while /proc has the process and it is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below pid, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
