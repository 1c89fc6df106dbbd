"""Test doubles shared by the protocol-level tests: router sinks, a filled config cache, in-memory HTTP.

Nothing here opens a socket or talks to Redis: a twisted.web Site is driven
through a StringTransport and replies are parsed from the bytes it wrote.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import attrs
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from logplex.model import Channel, Token
from logplex.config.cache import ConfigCache
from logplex.settings import Settings


def changed_settings(**wings: dict) -> Settings:
    """The default settings with some fields of some wings changed: changed_settings(tails={"buffer": 8})."""
    defaults = Settings()
    return attrs.evolve(defaults, **{wing: attrs.evolve(getattr(defaults, wing), **fields)
                                     for wing, fields in wings.items()})


class RecordingBacklog:
    """A BacklogSink that keeps every append call: ``calls`` is [(channel_id, messages)]."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []

    def extend(self, by_channel: dict[str, list[bytes]]) -> None:
        for channel_id, messages in by_channel.items():
            self.calls.append((channel_id, list(messages)))

    def messages(self, channel_id: str) -> list[bytes]:
        """Everything appended to one channel, in order, across calls."""
        return [m for ch, batch in self.calls if ch == channel_id for m in batch]

    def all_messages(self) -> list[bytes]:
        return [m for _, batch in self.calls for m in batch]


class RecordingTails:
    """A TailSink with live tails on the channels in ``live``; ``calls`` like RecordingBacklog."""

    def __init__(self, live: set[str] | None = None) -> None:
        self.live = set(live or ())
        self.calls: list[tuple[str, list[bytes]]] = []

    def tailed(self, channel_ids) -> list[str]:
        return [c for c in channel_ids if c in self.live]

    def publish(self, channel_id: str, messages: list[bytes]) -> None:
        self.calls.append((channel_id, list(messages)))


def fill_cache(cache: ConfigCache, channel_id: str, tokens: dict[str, str],
               flags: frozenset[str] = frozenset()) -> ConfigCache:
    """Put a channel and its tokens ({name: token id}) into the cache, as the config feed would."""
    cache.replace_channel(
        channel_id,
        Channel(id=channel_id, flags=frozenset(flags)),
        [Token(id=token, channel_id=channel_id, name=name) for name, token in tokens.items()],
        [],
    )
    return cache


@attrs.define
class LoadedStore:
    """Stands in for ConfigStore where only ``loaded`` and ``cache`` are read."""

    cache: ConfigCache
    loaded: bool = True


@contextmanager
def captured_log():
    """Every twisted.logger event emitted inside the block, in a list."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


# --- HTTP without sockets ---------------------------------------------------


def make_site_reactor() -> MemoryReactorClock:
    """A fake reactor to pass as ``LogplexSite(..., reactor=...)`` so idle timeouts never touch the real one."""
    return MemoryReactorClock()


def raw_request(method: bytes, path: bytes, headers: dict[bytes, bytes] | None = None,
                body: bytes = b"", chunks: list[bytes] | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request.

    With ``chunks`` the body is sent chunked (and ``body`` is ignored);
    otherwise Content-Length is set from ``body`` unless a header overrides it.
    """
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: logplex.test"]
    names = {k.lower() for k in (headers or {})}
    for name, value in (headers or {}).items():
        lines.append(b"%s: %s" % (name, value))
    if chunks is not None:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    else:
        if b"content-length" not in names and (body or method in (b"POST", b"PUT")):
            lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


@attrs.frozen
class HttpReply:
    """One parsed response; header names are lower-case, each with its list of values."""

    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes
    complete: bool = True

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json(self) -> object:
        return json.loads(self.body)


def parse_reply(data: bytes, head: bool = False) -> HttpReply:
    """Parse the first response in ``data``; ``complete`` is False when its body has not all arrived.

    Handles Content-Length, chunked, and bodiless (HEAD, 204, 304) replies.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        raise AssertionError(f"no complete response head in {data!r}")
    status_line, *header_lines = data[:head_end].split(b"\r\n")
    version, code, *_ = status_line.split(b" ", 2)
    assert version.startswith(b"HTTP/1."), status_line
    status = int(code)
    headers: dict[bytes, list[bytes]] = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    rest = data[head_end + 4:]
    if head or status in (204, 304) or 100 <= status < 200:
        return HttpReply(status, headers, b"")
    if b"chunked" in b",".join(headers.get(b"transfer-encoding", [])).lower():
        body, complete = _dechunk(rest)
        return HttpReply(status, headers, body, complete)
    if b"content-length" in headers:
        n = int(headers[b"content-length"][0])
        return HttpReply(status, headers, rest[:n], len(rest) >= n)
    return HttpReply(status, headers, rest)


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = []
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(out), False
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out), True
        start = eol + 2
        if len(data) < start + size:
            out.append(data[start:])
            return b"".join(out), False
        out.append(data[start:start + size])
        pos = start + size + 2


def connect(site) -> tuple[object, StringTransport]:
    """A connected HTTP channel of ``site`` on an in-memory transport."""
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def http_exchange(site, request: bytes) -> HttpReply:
    """Send one raw request to ``site`` on a fresh connection and parse what it wrote back.

    Handlers whose Deferreds fire synchronously have answered by the time this
    returns; for others, drive their clock and call parse_reply on the transport.
    """
    protocol, transport = connect(site)
    protocol.dataReceived(request)
    return parse_reply(transport.value(), head=request.startswith(b"HEAD "))
