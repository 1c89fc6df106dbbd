"""Trial tests against real nodes: the reactor runs the Twisted sinks (tests.harness.sinks) while
the blocking calls on nodes (tests.harness.client) run in threads through deferToThread.

NodeCase is the plumbing of such a test case; texts and http_frame are what its senders send and
what an HTTP drain body then holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests.harness.client import TS, Node, decode_logplex1, http_request, unique
from tests.harness.procs import NodeProcess


def texts(tag: str, count: int, start: int = 0) -> list[str]:
    return [f"{tag} {i:06d}" for i in range(start, start + count)]


def http_frame(text: str) -> bytes:
    """What an HTTP drain body holds for a message of the test's sender: logplex's output format."""
    return f"<134>1 {TS} host app web.1 - {text}\n".encode()


def metric_samples(node: Node) -> dict[str, float]:
    """Every sample on GET /metrics, keyed by name and labels as printed."""
    answer = http_request(node.api_port, "GET", "/metrics")
    assert answer.status == 200, answer
    out = {}
    for line in answer.body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def start_node(directory: str, redis_url: str, name: str, *args: str) -> Node:
    """A node named `name` in its own directory (tests.harness.client.start_node takes pytest's
    tmp_path_factory instead); stop it with tests.harness.client.stop_node."""
    proc = NodeProcess(directory, redis_url, list(args), name=name)
    proc.start()
    return Node(proc, [proc.syslog_port])


class NodeCase(unittest.TestCase):
    """Plumbing for trial tests against real nodes: API calls in threads, waits on conditions.

    Subclasses set self.node (the default node) and channel_prefix.
    """

    channel_prefix = "drains"

    def blocking(self, fn: Callable, *args: Any, **kwargs: Any) -> defer.Deferred:
        return threads.deferToThread(fn, *args, **kwargs)

    async def sleep(self, seconds: float) -> None:
        await task.deferLater(reactor, seconds, lambda: None)

    async def until(self, fetch: Callable, done: Callable[[Any], bool], timeout: float,
                    what: str, node: Node | None = None) -> Any:
        """await fetch() every 50 ms until done(value); fails, saying what and the last value, after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = await fetch()
            if done(value):
                return value
            if time.monotonic() >= deadline:
                log = (node or self.node).proc.log_text()[-3000:]
                self.fail(f"{what}: not within {timeout} s; last seen {value!r}\n--- node log\n{log}")
            await self.sleep(0.05)

    async def started(self, sink):
        await sink.start()
        self.addCleanup(sink.stop)
        return sink

    async def api(self, method: str, path: str, body: Any = None, node: Node | None = None):
        node = node or self.node
        if body is None:
            return await self.blocking(node.api, method, path)
        return await self.blocking(node.api, method, path, body)

    async def channel(self, node: Node | None = None) -> tuple[str, str]:
        """A new channel with an `app` token: (channel id, token)."""
        channel_id = unique(self.channel_prefix)
        answer = await self.api("PUT", f"/v3/channels/{channel_id}", {"tokens": ["app"]}, node)
        self.assertEqual(answer.status, 201, answer)
        return channel_id, answer.json()["tokens"]["app"]

    async def state(self, channel_id: str, drain_id: int, node: Node | None = None) -> dict:
        answer = await self.api("GET", f"/v3/channels/{channel_id}/drains/{drain_id}", node=node)
        self.assertEqual(answer.status, 200, answer)
        return answer.json()["state"]

    async def wait_state(self, channel_id: str, drain_id: int, done: Callable[[dict], bool],
                         what: str, timeout: float = 10, node: Node | None = None) -> dict:
        return await self.until(lambda: self.state(channel_id, drain_id, node), done, timeout,
                                what, node)

    async def backlog(self, channel_id: str, node: Node | None = None) -> list[bytes]:
        answer = await self.api("GET", f"/v3/channels/{channel_id}/logs?num=1500", node=node)
        self.assertEqual(answer.status, 200, answer)
        return decode_logplex1(answer.body)
