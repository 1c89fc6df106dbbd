"""The live-tail web page: its files, and the event stream it reads.

``GET /tail`` serves a page (``logplex/static``) that signs in with a
credential, then reads ``GET /v3/channels/<ch>/stream`` with ``fetch()``: the
backlog, then live lines, as Server-Sent Events over a chunked response, one
JSON object per line. The credential travels in the ``Authorization`` header
of each request (never in a URL); a 401 carries no ``WWW-Authenticate`` so
that the browser leaves the sign-in to the page.

The stream is a TailSession in the node's TailRegistry, like a session URL:
the same registration before the backlog read, the same push-producer
backpressure, the same bounded buffer and L11 accounting, and it hears what
any node of the cluster ingests for the channel.
"""

from __future__ import annotations

import json
import time
from importlib import resources

from twisted.internet import task
from twisted.logger import Logger

from logplex import syslog
from logplex.api import validate
from logplex.api.schemas import CHANNEL, answer, error, json_content, operation, text, use
from logplex.model import FULL_API, NO_TAIL, READ_CHANNEL, SessionSpec
from logplex.http.auth import login, parse_basic
from logplex.settings import TailSettings
from logplex.tails.session import TailFilter, TailSession, l11_line
from logplex.tails.stream import TailStream
from logplex.http.routing import STREAMING, HttpError, Param, Reply, endpoint

log = Logger()

# What the page is made of: name -> content type. Nothing else is served.
STATIC_FILES = {
    "tail.css": b"text/css; charset=utf-8",
    "tail.js": b"text/javascript; charset=utf-8",
}
PAGE = "tail.html"
# The page loads only its own files and talks only to this node.
PAGE_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",
}
NO_STORE = {b"cache-control": b"no-store"}
STREAM_HEADERS = {
    b"content-type": b"text/event-stream; charset=utf-8",
    b"cache-control": b"no-store",
    # Tells a buffering reverse proxy (nginx) to pass events on at once.
    b"x-accel-buffering": b"no",
}
# A comment now and then keeps proxies from closing a quiet stream.
KEEPALIVE_SECONDS = 15.0
# How often an open stream checks that its credential still may read the channel.
RECHECK_SECONDS = 1.0
REVOKED = "Your credential was deleted or changed, or may no longer read this channel: sign in again."
# A grant names one channel: after a DELETE, a new channel of the same name is another's.
EARLIER_CHANNEL = ("This credential was granted an earlier channel named {channel}, which was deleted; "
                   "it cannot read the new one: ask for a new credential.")
# How many channel names /tail/channels offers a full_api credential.
MAX_LISTED_CHANNELS = 1000

SIGN_IN = "Sign in with a credential id and secret (HTTP Basic)."
NO_TAIL_WARNING = "Tailing is switched off for this channel."


# -- the routes' operations ------------------------------------------------------------------
STATIC_NAME = Param("name", r"[A-Za-z0-9_.-]+", {"type": "string", "enum": sorted(STATIC_FILES)},
                    "One of the page's files.")
# The page signs in itself: a 401 carries no challenge, so the browser shows no dialog of its own.
SIGNED_IN = [{"basic": []}]
SIGN_IN_ANSWERS = {
    "401": error("No credential, or not a valid one. Without a WWW-Authenticate header: the page asks "
                 "for the credential itself."),
    "429": use("TooManyLogins"),
    "503": error("SYSTEM BOOTING: the node has not loaded its configuration yet; or tail sessions are "
                 "switched off on this node, or the channel's backlog shard is not answering."),
}
PAGE_DOC = operation(
    "tailPage", "The live-tail web page", "tail page",
    {"200": text("The page: it signs in with a credential and reads the event stream.", "text/html")},
    guarded=False, description="Also served at /tail/.")
STATIC_DOC = operation(
    "tailPageFile", "A file of the live-tail page", "tail page",
    {"200": answer("The file.", {"text/css": {"schema": {"type": "string"}},
                                 "text/javascript": {"schema": {"type": "string"}}}),
     "404": use("NotFound")},
    guarded=False)
CHANNELS_DOC = operation(
    "tailPageChannels", "The channels the caller's credential may watch", "tail page",
    {"200": answer("Its named channels (read_channel), or every channel there is (full_api, at most "
                   f"{MAX_LISTED_CHANNELS}: `more` says whether there are others).", json_content({
                       "type": "object",
                       "required": ["credential", "channels", "any", "more"],
                       "properties": {
                           "credential": {"type": "string"},
                           "channels": {"type": "array", "items": {"type": "string"}},
                           "any": {"type": "boolean", "description": "A full_api credential: any channel."},
                           "more": {"type": "boolean"},
                       },
                       "additionalProperties": False,
                   })),
     "403": error("The credential can read no channel."),
     **SIGN_IN_ANSWERS},
    guarded=False, security=SIGNED_IN)
STREAM_DOC = operation(
    "tailStream", "A channel's lines as Server-Sent Events: the backlog, then live ones", "tail page",
    {"200": text("An event stream: a `data` event per line (JSON: ts, source, ps, severity, msg), a "
                 "`ready` event after the backlog, `l11` when the node dropped lines this reader did not "
                 "take, `notice` before a stream of a channel that may not be tailed ends, `revoked` "
                 "when the channel is deleted or the credential may no longer read it.",
                 "text/event-stream"),
     "403": error("The credential may not read this channel (or was granted an earlier channel of its "
                  "name, since deleted)."),
     "404": use("NotFound"),
     "422": error("num is not a number."),
     **SIGN_IN_ANSWERS},
    guarded=False, security=SIGNED_IN,
    params=[{"name": "num", "in": "query", "required": False, "schema": {"type": "string", "default": "100"},
             "description": "Backlog lines to send first, a number clamped to 0..--history."},
            {"name": "ps", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Only this proc id, or the ids before a dot (web matches web.1)."},
            {"name": "source", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Only this token name."}])


def channel_ended(channel_id: str) -> str:
    return f"Channel {channel_id} was deleted: this stream has ended."


def sse(data: dict, event: str | None = None) -> bytes:
    """One Server-Sent Event; JSON escapes every newline, so data is one line."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if event is None:
        return b"data: " + body + b"\n\n"
    return b"event: " + event.encode("ascii") + b"\ndata: " + body + b"\n\n"


def _text(value: bytes) -> str:
    return "" if value == syslog.NILVALUE else value.decode("utf-8", "replace")


def line_event(fields: syslog.Fields) -> bytes:
    """A cooked message as the page's JSON: APP-NAME is already the token's name."""
    msg = fields.msg
    if msg.endswith(b"\n"):
        msg = msg[:-2] if msg.endswith(b"\r\n") else msg[:-1]
    return sse({
        "ts": _text(fields.timestamp),
        "source": _text(fields.appname),
        "ps": _text(fields.procid),
        "severity": syslog.severity(fields.pri),
        "msg": msg.decode("utf-8", "replace"),
    })


def l11_event(dropped: int, since: float, now: float) -> bytes:
    """The L11 notice as an `l11` event; its msg is the tails' L11 wording."""
    _, _, text = l11_line(dropped, since, now).rstrip(b"\n").partition(b": ")
    return sse({
        "ts": syslog.utc_timestamp(now).decode(),
        "source": "logplex",
        "ps": "1",
        "severity": syslog.SEVERITY_ERROR,
        "msg": text.decode(),
        "dropped": dropped,
        "since": syslog.utc_timestamp(since).decode(),
    }, "l11")


def event_tail(spec: SessionSpec, write, metrics, settings: TailSettings, clock=time.time) -> TailSession:
    """A tail session that writes events: the same holding, buffering, backpressure and L11."""
    return TailSession(spec, write, metrics, settings, clock, render=line_event, notice=l11_event)


class TailPage:
    """The page's routes, served by the management API listener next to its own."""

    def __init__(self, api, clock=time.time) -> None:
        # The ManagementApi: its store, backlogs, tails, authenticator,
        # metrics and settings (tail buffer, history, deny_tail_sessions).
        self.api = api
        self.clock = clock
        self._files: dict[str, bytes] = {}

    def routes(self) -> list:
        return [
            endpoint("GET", "/tail", self.page, PAGE_DOC, slash=True),
            endpoint("GET", "/tail/static/{name}", self.static, STATIC_DOC, STATIC_NAME),
            endpoint("GET", "/tail/channels", self.channels, CHANNELS_DOC),
            endpoint("GET", "/v3/channels/{channel}/stream", self.stream, STREAM_DOC, CHANNEL),
        ]

    # -- files ----------------------------------------------------------------------------
    def _file(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            data = self._files[name] = resources.files("logplex").joinpath("static", name).read_bytes()
        return data

    async def page(self, request) -> Reply:
        return Reply(200, self._file(PAGE), dict(PAGE_HEADERS), content_type=b"text/html; charset=utf-8")

    async def static(self, request, name) -> Reply:
        content_type = STATIC_FILES.get(name)
        if content_type is None:
            raise HttpError(404, f"There is nothing at {request.path.decode('latin-1')}.")
        return Reply(200, self._file(name), dict(PAGE_HEADERS), content_type=content_type)

    # -- who may read ------------------------------------------------------------------------
    async def _credential(self, request):
        """The caller's credential; 401 without a challenge, so no browser dialog."""
        await self.api.booted()
        header = request.getHeader(b"authorization")
        if not header:
            raise HttpError(401, SIGN_IN, dict(NO_STORE))
        pair = parse_basic(header)
        if pair is None:
            raise HttpError(401, "Invalid credentials.", dict(NO_STORE))
        try:
            # Throttled per address like every other login.
            return await login(self.api.auth, self.api.throttle, request, *pair)
        except HttpError as e:
            raise HttpError(e.status, e.message, {**NO_STORE, **{
                k: v for k, v in e.headers.items() if k != b"www-authenticate"}}) from None

    async def channels(self, request) -> Reply:
        """The channels the caller may watch: its named ones, or (full_api) all there are."""
        cred = await self._credential(request)
        existing = self.api.store.cache.channels
        if cred.has(FULL_API):
            names = sorted(existing)
            listed = names[:MAX_LISTED_CHANNELS]
            doc = {"credential": cred.id, "channels": listed, "any": True, "more": len(names) > len(listed)}
        elif cred.has(READ_CHANNEL):
            names = sorted(c for c in cred.channels if c in existing and cred.can_read(existing[c]))
            doc = {"credential": cred.id, "channels": names, "any": False, "more": False}
        else:
            raise HttpError(403, "This credential cannot read any channel.")
        return Reply(200, doc, dict(NO_STORE))

    # -- the stream ---------------------------------------------------------------------------
    async def stream(self, request, channel_id) -> object:
        # The page encodes the id as a path segment; the Dispatcher has decoded it.
        cred = await self._credential(request)
        if not cred.may_read_name(channel_id):
            raise HttpError(403, f"This credential cannot read channel {channel_id}.")
        api = self.api
        channel = api.store.channel(channel_id)
        if channel is None:
            raise HttpError(404, f"Channel {channel_id} does not exist.")
        if not cred.can_read(channel):
            raise HttpError(403, EARLIER_CHANNEL.format(channel=channel_id))
        if api.deny_tail_sessions:
            raise HttpError(503, "Tail sessions are switched off on this node.")
        args = {k.decode("latin-1"): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        spec = SessionSpec(
            id="page",
            channel_id=channel_id,
            num=validate.number(args.get("num"), "num", 100, 0, api.history),
            tail=NO_TAIL not in channel.flags,
            ps=args.get("ps") or None,
            source=args.get("source") or None,
            incarnation=channel.incarnation,
        )
        if request.method == b"HEAD":
            return Reply(200, b"", dict(NO_STORE), content_type=b"text/event-stream")
        tail = keepalive = None
        if spec.tail:
            tail = event_tail(spec, request.write, api.metrics, api.tail_settings, self.clock)
        stream = TailStream(request, api.tails, tail, on_gone=lambda: self._end(
            request, channel_id, cred, channel_ended(channel_id), "tail_page_channel_ended"))
        if tail is not None:
            keepalive = task.LoopingCall(self._watch, tail, request, cred, channel_id, [api.reactor.seconds()])
            keepalive.clock = api.reactor
            request.notifyFinish().addBoth(lambda _: keepalive.stop() if keepalive.running else None)
        # A reader gone during the backlog read is noticed (stream.closed).
        backlog = await stream.backlog(api.backlogs, channel_id, spec.num, api.tail_settings.buffer_bytes)
        if stream.closed:
            return STREAMING
        if stream.gone:
            if api.store.channel(channel_id) is None:
                raise HttpError(404, f"Channel {channel_id} does not exist.")
            raise HttpError(403, EARLIER_CHANNEL.format(channel=channel_id))
        events = TailFilter(spec.ps, spec.source, line_event).lines(backlog)
        stream.start(STREAM_HEADERS, b"".join(events) + sse({"backlog": len(events), "live": tail is not None},
                                                            "ready"))
        if tail is None:
            stream.finish(sse({"msg": NO_TAIL_WARNING}, "notice"))
            return STREAMING
        stream.go_live(backlog)
        if not stream.closed:
            keepalive.start(RECHECK_SECONDS, now=False)
        log.info("tail_page_started channel={channel} credential={cred}", channel=channel_id, cred=cred.id)
        return STREAMING

    def _end(self, request, channel_id: str, cred, why: str, event: str) -> None:
        """End a live stream with a `revoked` event saying why; the page shows it and stops."""
        if request.finished:
            return
        log.info(event + " channel={channel} credential={cred}", channel=channel_id, cred=cred.id)
        request.write(sse({"msg": why}, "revoked"))
        request.finish()

    def _watch(self, tail: TailSession, request, cred, channel_id: str, last_keepalive: list[float]) -> None:
        """Every RECHECK_SECONDS: end the stream of a revoked credential or a deleted channel;
        now and then a keepalive."""
        if request.finished:
            return
        channel = self.api.store.channel(channel_id)
        if channel is None or not tail.spec.reads(channel):
            # The registry ends such a stream at once; this is the safety net.
            self._end(request, channel_id, cred, channel_ended(channel_id), "tail_page_channel_ended")
            return
        if self.api.store.cache.creds.get(cred.id) != cred or not cred.can_read(channel):
            self._end(request, channel_id, cred, REVOKED, "tail_page_revoked")
            return
        now = self.api.reactor.seconds()
        if now - last_keepalive[0] >= KEEPALIVE_SECONDS:
            last_keepalive[0] = now
            # Not into a transport that asked us to wait: the comment is only a sign of life.
            if not tail.paused:
                request.write(b": keepalive\n\n")
