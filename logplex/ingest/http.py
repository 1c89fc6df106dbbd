"""Syslog over HTTP: `POST /logs` with application/logplex-1 bodies, as log-shuttle sends them."""

from __future__ import annotations

import hashlib
import os
import re
import time
import zlib
from collections import OrderedDict
from typing import Callable

from twisted.internet import task
from twisted.logger import Logger

from logplex.http.auth import BASIC_CHALLENGE, Authenticator, LoginThrottle, login, parse_basic, parse_bearer
from logplex.framing import FramingError, decode_logplex1
from logplex.health import BootWait, Health, assess
from logplex.model import ANY_CHANNEL
from logplex.config.store import ConfigStore
from logplex.router import IngressDenied, Router
from logplex.saturation import HoldMeter
from logplex.settings import ListenSettings
from logplex.http.routing import Dispatcher, HttpError, Reply, route

log = Logger()

CONTENT_TYPES = {b"application/logplex-1", b"application/x-logplex-1"}


# Frame ids are the sender's own numbering (log-shuttle sends 32 hex digits).
MAX_FRAME_ID = 256


class FrameIdMemory:
    """Frame ids seen lately, so a sender's retransmission is not delivered twice.

    Bounded in count and in bytes: each id is kept as a fixed-size keyed
    digest, whatever its length, so `size` entries take at most
    `size * ENTRY_BYTES` (about 20 MB for the default 100,000).
    """

    # Measured with tracemalloc on CPython 3.11: 178 bytes for the digest,
    # its timestamp and the OrderedDict slot; rounded up.
    ENTRY_BYTES = 200
    DIGEST_BYTES = 16

    def __init__(self, size: int = 100_000, ttl: float = 600.0, clock=time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        # A per-process key: nobody can make two senders' ids collide on purpose.
        self._key = os.urandom(16)
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    @property
    def max_bytes(self) -> int:
        return self.size * self.ENTRY_BYTES

    def __len__(self) -> int:
        return len(self._seen)

    def _digest(self, frame_id: bytes) -> bytes:
        return hashlib.blake2b(frame_id, digest_size=self.DIGEST_BYTES, key=self._key).digest()

    def seen(self, frame_id: bytes) -> bool:
        self._expire()
        return self._digest(frame_id) in self._seen

    def remember(self, frame_id: bytes) -> None:
        digest = self._digest(frame_id)
        self._seen.pop(digest, None)
        self._seen[digest] = self.clock()
        self._expire()

    def _expire(self) -> None:
        now = self.clock()
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl and len(self._seen) <= self.size:
                break
            self._seen.popitem(last=False)


class GzipError(ValueError):
    """A compressed body that is refused; `reason` names it for the metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class GzipBody:
    """Inflates a gzip (or zlib) body, every member of it, a bounded slice per step.

    Sans-IO: the caller runs step() until it returns True, yielding to
    other work in between. Each step reads at most `slice_in` input bytes
    and writes at most `slice_out` output bytes, and the whole is linear in
    the input: what a member leaves unread is at most twice what it read
    plus 1 KiB, so a body of many tiny members costs no more than one
    large one. At most `max_members` members and `limit` output bytes; past
    either, step() raises GzipError.
    """

    FIRST_READ = 1024

    def __init__(self, body: bytes, limit: int, *, max_members: int = 1000,
                 slice_in: int = 64 * 1024, slice_out: int = 256 * 1024) -> None:
        self._body = memoryview(body)
        self.limit = limit
        self.max_members = max_members
        self.slice_in = slice_in
        self.slice_out = slice_out
        self.members = 0
        self.size = 0
        self._pos = 0  # the next input byte no inflater has seen
        self._inflater = None  # None between members
        self._member_read = 0
        self._tail = b""  # input the inflater was given but has not used yet
        self._out: list[bytes] = []
        self.done = False

    def result(self) -> bytes:
        return b"".join(self._out)

    def step(self) -> bool:
        """Do one bounded slice of the work; True once the whole body is inflated."""
        if self.done:
            return True
        if self._inflater is None:
            return self._start_member()
        if self._tail:
            data, self._tail = self._tail, b""
        else:
            # Read little of a member at first: what it leaves unread is
            # copied, so that copy must stay proportional to its size.
            n = min(self.slice_in, max(self.FIRST_READ, 2 * self._member_read))
            data = self._body[self._pos:self._pos + n]
            self._pos += len(data)
            self._member_read += len(data)
        try:
            out = self._inflater.decompress(data, min(self.slice_out, self.limit + 1 - self.size))
        except zlib.error as e:
            raise GzipError("gzip_malformed", f"The gzip body could not be decompressed: {e}.") from None
        self.size += len(out)
        if self.size > self.limit:
            raise GzipError("gzip_too_large", f"The decompressed body is larger than {self.limit} bytes.")
        if out:
            self._out.append(out)
        self._tail = self._inflater.unconsumed_tail
        if self._inflater.eof:
            # What followed the member in the input it was given (its
            # unconsumed_tail may be stale then: unused_data is the truth).
            self._pos -= len(self._inflater.unused_data)
            self._tail = b""
            self._inflater = None
            return self._finished()
        if not data and not out:
            raise GzipError("gzip_malformed", "The gzip body is truncated.")
        return False

    def _start_member(self) -> bool:
        # Members may be separated or followed by zero padding (gzip does
        # that on tapes); skip it a slice at a time without copying.
        nonzero = _NONZERO.search(self._body, self._pos, self._pos + self.slice_in)
        if nonzero is None:
            self._pos = min(self._pos + self.slice_in, len(self._body))
            return self._finished()
        self._pos = nonzero.start()
        self.members += 1
        if self.members > self.max_members:
            raise GzipError(
                "gzip_members",
                f"The body has more than {self.max_members} gzip members; "
                f"compress each request as one gzip stream (or at most {self.max_members}).")
        self._inflater = zlib.decompressobj(wbits=47)  # gzip or zlib, detected from the header
        self._member_read = 0
        return False

    def _finished(self) -> bool:
        if self._inflater is None and self._pos >= len(self._body):
            if self.members == 0 and len(self._body):
                raise GzipError("gzip_malformed", "The gzip body holds only zero bytes.")
            self.done = True
        return self.done


_NONZERO = re.compile(rb"[^\0]")


class LogInput:
    """`POST /logs`: authorizes the sender, inflates and frames its body, and routes the frames."""

    # Seconds of inflating per reactor turn, shared by every request being
    # inflated: other connections wait at most about this long.
    INFLATE_BUDGET = 0.004
    SYNC_SLICES = 4

    def __init__(self, store: ConfigStore, router: Router, auth: Authenticator, metrics,
                 listen: ListenSettings, throttle: LoginThrottle | None = None,
                 reactor=None, max_gzip_members: int = 1000, health: Callable[[], Health] | None = None,
                 holds: HoldMeter | None = None, listener: str = "logs", boot: BootWait | None = None) -> None:
        # Time its senders spend waiting for a held answer, under this listener's name.
        self.holds = holds
        self.listener = listener
        # Without the node's health: whether the config is loaded and ingress is on.
        self.health = health or self._own_health
        if reactor is None:
            reactor = _reactor()
        self.reactor = reactor
        # A --workers worker's listener takes connections before its boot is over (logplex.health).
        self.boot = boot or BootWait(reactor, 0)
        self.throttle = throttle or LoginThrottle(reactor, listen.login_failures)
        self.max_gzip_members = max_gzip_members
        # One cooperator for every request being inflated: they take turns,
        # and together hold the reactor for at most INFLATE_BUDGET a turn.
        self.cooperator = task.Cooperator(
            terminationPredicateFactory=lambda: _Budget(self.INFLATE_BUDGET),
            scheduler=lambda work: reactor.callLater(0, work),
        )
        self.store = store
        self.router = router
        self.auth = auth
        self.metrics = metrics
        self.max_body = listen.max_body
        self.max_frame = listen.max_frame
        self.frame_ids = FrameIdMemory()

    def resource(self) -> Dispatcher:
        # logplex accepts /logs/ too, and serves /healthcheck here for the
        # load balancers in front of the log input.
        return Dispatcher([route("POST", "/logs/?", self.post_logs),
                           route("GET", "/healthcheck", self.healthcheck)])

    async def healthcheck(self, request) -> Reply:
        """200 OK while this node takes logs; 503 SYSTEM BOOTING, STOPPING or INGRESS OFF otherwise."""
        health = await self.boot.health(self.health)
        return Reply(health.code, health.words(), content_type=b"text/plain")

    def _own_health(self) -> Health:
        return assess(stopping=False, ready=self.store.loaded, ingress=not self.router.deny_ingress,
                      config_redis=True, shards={})

    async def post_logs(self, request) -> Reply:
        try:
            reply = await self._post_logs(request)
        except Refused as e:
            self.metrics.inc("logplex_http_refused_total", reason=e.reason)
            self.metrics.inc("logplex_http_requests_total", status=str(e.status))
            raise
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
        frame_id = request.getHeader(b"logplex-frame-id")
        if frame_id is not None and len(frame_id) > MAX_FRAME_ID:
            # Remembered ids must stay small, whatever a sender sends.
            raise Refused("frame_id_too_long", 400,
                          f"The Logplex-Frame-Id header is {len(frame_id)} bytes long; send an id of at most "
                          f"{MAX_FRAME_ID} bytes (log-shuttle sends 32 hex digits).")
        body = request.content.read()
        self.metrics.inc("logplex_bytes_received_total", len(body))
        encoding = (request.getHeader(b"content-encoding") or b"").strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            body = await self._inflate(request, body)
        elif encoding not in (b"", b"identity"):
            raise HttpError(415, f"Content-Encoding {encoding.decode('latin-1')} is not supported; use gzip.")
        try:
            messages = decode_logplex1(body, self.max_frame)
        except FramingError as e:
            raise HttpError(400, f"Malformed logplex-1 body: {e}") from None
        expected = request.getHeader(b"logplex-msg-count")
        if expected is not None and expected.strip() != str(len(messages)).encode():
            raise HttpError(400, "Message count mismatch")
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
            if self.holds is None:
                await hold
            else:
                started = self.holds.begin(self.listener)
                try:
                    await hold
                finally:
                    self.holds.end(self.listener, started)
        return Reply(204)

    async def _inflate(self, request, body: bytes) -> bytes:
        """The body inflated in slices between which the reactor serves everyone else."""
        inflating = GzipBody(body, self.max_body, max_members=self.max_gzip_members)
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def slices():
            # A client that hung up needs no answer: stop working for it.
            while not gone and not inflating.step():
                yield None

        try:
            # Most bodies are small: what the first few slices finish (a
            # millisecond or two) is answered without waiting for a turn.
            for _ in range(self.SYNC_SLICES):
                if inflating.step():
                    return inflating.result()
            await self.cooperator.coiterate(slices())
        except GzipError as e:
            raise Refused(e.reason, 413 if e.reason == "gzip_too_large" else 400, e.message) from None
        if gone:
            # Nobody reads this answer; the status says why in the metrics.
            raise HttpError(499, "The client closed the connection before its body was read.")
        return inflating.result()

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
            raw = token.encode("utf-8", "replace")
            target = self.store.cache.routes.get(raw)
            misses = self.router.misses
            if target is None and misses is not None and not misses.recently_unknown(raw):
                # Made a moment ago through another worker or node? Looked up again
                # once this worker's config has caught up with the config Redis.
                target = await misses.again(raw, lambda token: self.store.cache.routes.get(token))
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


class Refused(HttpError):
    """A request refused for what it carries; `reason` labels logplex_http_refused_total."""

    def __init__(self, reason: str, status: int, message: str) -> None:
        super().__init__(status, message)
        self.reason = reason


class _Budget:
    """A Cooperator's termination predicate: true once `seconds` have passed since it was made."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def __call__(self) -> bool:
        return time.monotonic() >= self.end


def _reactor():
    from twisted.internet import reactor

    return reactor
