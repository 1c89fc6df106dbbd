"""Syslog over HTTP: `POST /logs` with application/logplex-1 bodies, as log-shuttle sends them."""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict

from twisted.logger import Logger

from logplex.auth import BASIC_CHALLENGE, Authenticator, LoginThrottle, login, parse_basic, parse_bearer
from logplex.framing import FramingError, decode_logplex1
from logplex.model import ANY_CHANNEL
from logplex.redis.config import ConfigStore
from logplex.router import IngressDenied, Router
from logplex.web import Dispatcher, HttpError, Reply, route

log = Logger()

CONTENT_TYPES = {b"application/logplex-1", b"application/x-logplex-1"}


class FrameIdMemory:
    """Frame ids seen lately, so a sender's retransmission is not delivered twice."""

    def __init__(self, size: int = 100_000, ttl: float = 600.0, clock=time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def seen(self, frame_id: bytes) -> bool:
        now = self.clock()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl and len(self._seen) <= self.size:
                break
            self._seen.popitem(last=False)
        return frame_id in self._seen

    def remember(self, frame_id: bytes) -> None:
        self._seen[frame_id] = self.clock()


def gunzip(body: bytes, limit: int) -> bytes:
    """Every member of a gzip (or zlib) body, bounded: a bomb is 413, not a full memory."""
    out: list[bytes] = []
    size = 0
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, detected from the header
        try:
            data = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as e:
            raise HttpError(400, f"The gzip body could not be decompressed: {e}.") from None
        size += len(data)
        if size > limit:
            raise HttpError(413, f"The decompressed body is larger than {limit} bytes.")
        if not inflater.eof:
            raise HttpError(400, "The gzip body is truncated.")
        out.append(data)
        # Concatenated members (RFC 1952 allows them) follow in unused_data.
        rest = inflater.unused_data.lstrip(b"\0")
    return b"".join(out)


class LogInput:
    def __init__(self, store: ConfigStore, router: Router, auth: Authenticator, metrics,
                 max_body: int, max_frame: int, throttle: LoginThrottle | None = None) -> None:
        self.throttle = throttle or LoginThrottle(_reactor())
        self.store = store
        self.router = router
        self.auth = auth
        self.metrics = metrics
        self.max_body = max_body
        self.max_frame = max_frame
        self.frame_ids = FrameIdMemory()

    def resource(self) -> Dispatcher:
        return Dispatcher([route("POST", "/logs", self.post_logs)])

    async def post_logs(self, request) -> Reply:
        try:
            reply = await self._post_logs(request)
        except HttpError as e:
            self.metrics.inc("logplex_http_requests_total", status=str(e.status))
            raise
        self.metrics.inc("logplex_http_requests_total", status=str(reply.status))
        return reply

    async def _post_logs(self, request) -> Reply:
        if not self.store.loaded:
            raise HttpError(503, "SYSTEM BOOTING: this node has not loaded its configuration yet.")
        if self.router.deny_ingress:
            raise HttpError(503, "Log ingress is switched off on this node; send to another node.")
        target = await self._authorize(request)
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise HttpError(
                415, "Content-Type must be application/logplex-1 (octet-counted syslog frames)."
            )
        if request.body_too_large:
            raise HttpError(413, f"The body is larger than {self.max_body} bytes.")
        body = request.content.read()
        self.metrics.inc("logplex_bytes_received_total", len(body))
        encoding = (request.getHeader(b"content-encoding") or b"").strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            body = gunzip(body, self.max_body)
        elif encoding not in (b"", b"identity"):
            raise HttpError(415, f"Content-Encoding {encoding.decode('latin-1')} is not supported; use gzip.")
        try:
            messages = decode_logplex1(body, self.max_frame)
        except FramingError as e:
            raise HttpError(400, f"Malformed logplex-1 body: {e}") from None
        expected = request.getHeader(b"logplex-msg-count")
        if expected is not None and expected.strip() != str(len(messages)).encode():
            raise HttpError(400, "Message count mismatch")
        frame_id = request.getHeader(b"logplex-frame-id")
        if frame_id:
            # Frame ids are the sender's own numbering: remembered per sender.
            frame_id = repr(target or request.getUser()).encode() + b" " + frame_id
            if self.frame_ids.seen(frame_id):
                return Reply(204)
        self._count_sender_losses(request)
        try:
            hold = self.router.route_held(messages, target)
        except IngressDenied:
            raise HttpError(503, "Log ingress is switched off on this node; send to another node.") from None
        if frame_id:
            self.frame_ids.remember(frame_id)
        if hold is not None:
            # The lines are routed; the answer waits until a drain of theirs
            # has room, which paces a sender that keeps one request in flight.
            await hold
        return Reply(204)

    async def _authorize(self, request):
        """The (channel, name) a token sender writes to, or None for an any_channel credential."""
        header = request.getHeader(b"authorization")
        token = None
        pair = parse_basic(header)
        if pair is not None and pair[0] == "token":
            token = pair[1]
        elif pair is None:
            token = parse_bearer(header)
        if token is not None:
            target = self.store.cache.routes.get(token.encode("utf-8", "replace"))
            if target is None:
                self.metrics.inc("logplex_messages_unknown_token_total")
                raise HttpError(401, "Unknown token.", BASIC_CHALLENGE)
            return target
        if pair is None:
            raise HttpError(401, "Authorization required: HTTP Basic with user 'token' and a t. token as password.",
                            BASIC_CHALLENGE)
        cred = await login(self.auth, self.throttle, request, *pair)
        if not cred.has(ANY_CHANNEL):
            raise HttpError(403, "Credential not permitted to post to arbitrary channels.")
        return None

    def _count_sender_losses(self, request) -> None:
        # log-shuttle reports what it dropped or lost before this request.
        for header, name in ((b"logplex-drop-count", "dropped"), (b"logplex-lost-count", "lost")):
            value = request.getHeader(header)
            if value and value.strip().isdigit() and int(value) > 0:
                self.metrics.inc("logplex_sender_losses_total", int(value), kind=name)


def _reactor():
    from twisted.internet import reactor

    return reactor
