"""One HTTP answer that carries a tail: the shell shared by session URLs and the tail page's event stream.

The tail is registered before the backlog is read, so no line falls in
between; the backlog goes first, then live lines, which the TailSession
writes itself as the response's push producer (its byte-bounded buffer and
L11 accounting are the backpressure); the answer ends when the client goes
or the channel is deleted. What the lines look like (text or events) and
what the first and last words say are the caller's.
"""

from __future__ import annotations

from typing import Callable

from logplex.http.routing import HttpError
from logplex.tails.session import TailRegistry, TailSession

BACKLOG_DOWN = "The channel's backlog shard is not answering; try again."


class TailStream:
    """The streaming mechanics of one request; `tail` is None for a backlog read that does not tail.

    `on_gone` runs when the channel is deleted (or replaced) while the
    stream is live; before that, `gone` says so and the caller answers an
    error instead.
    """

    def __init__(self, request, registry: TailRegistry, tail: TailSession | None,
                 on_gone: Callable[[], None]) -> None:
        self.request = request
        self.registry = registry
        self.tail = tail
        self._on_gone = on_gone
        # The channel was deleted: before the answer started (an error instead), or while live.
        self.gone = False
        self.live = False
        # The client went away, or the answer was finished.
        self.closed = False
        if tail is not None:
            # Registered before the backlog is read, so nothing falls in between.
            registry.add(tail, self._channel_gone)
        request.notifyFinish().addBoth(self._finished)

    def _channel_gone(self) -> None:
        self.gone = True
        if self.live:
            self._on_gone()

    def _finished(self, _) -> None:
        self.closed = True
        if self.tail is not None:
            self.registry.remove(self.tail)

    async def backlog(self, backlogs, channel_id: str, num: int, max_bytes: int) -> list[bytes]:
        """The channel's last lines; 503 (and the tail unregistered) when its shard does not answer."""
        try:
            return await backlogs.recent(channel_id, num, max_bytes)
        except Exception:
            if self.tail is not None:
                self.registry.remove(self.tail)
            raise HttpError(503, BACKLOG_DOWN) from None

    def start(self, headers: dict[bytes, bytes], first: bytes) -> None:
        """The status line, headers and first bytes, written even when empty: a tail of a quiet
        channel is answered at once."""
        request = self.request
        request.setResponseCode(200)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.write(first)

    def go_live(self, backlog: list[bytes]) -> None:
        """From now on the tail writes live lines, paused and resumed by the transport."""
        self.request.registerProducer(self.tail, True)
        self.live = True
        self.tail.go_live(backlog)

    def finish(self, last: bytes = b"") -> None:
        """Write the last words, if the client is still there, and end the answer."""
        if self.request.finished:
            return
        if last:
            self.request.write(last)
        self.request.finish()
