"""Reading a channel's lines: sessions (a backlog read, and optionally a live tail) and its last lines."""

from __future__ import annotations

import uuid

from twisted.logger import Logger

from logplex import syslog
from logplex.api import validate
from logplex.api.schemas import CHANNEL, LOCATION, SESSION, answer, error, json_content, operation, ref, text, use
from logplex.framing import encode_logplex1
from logplex.http.routing import STREAMING, HttpError, Reply, endpoint
from logplex.model import NO_REDIS, NO_TAIL, SessionSpec
from logplex.tails.session import TailFilter, TailSession
from logplex.tails.stream import BACKLOG_DOWN, TailStream

log = Logger()

# logplex's own words, which its clients may look for.
NO_TAIL_WARNING = b"Error L20 (Tail sessions forbidden) Tail sessions for this app are forbidden due to log volume."
NO_REDIS_WARNING = b"Warning: log history discarded due to excessive volume."

# What creating a session answers besides its URL, in each of its spellings.
NOT_CREATED = {
    "400": error("The body is not JSON, or channel_id is missing or not a string or integer."),
    "422": error("Not a JSON object, an unknown channel, or a bad num, ps or source."),
    "503": error("SYSTEM BOOTING, the config Redis is not answering, or tail sessions are switched "
                 "off on this node."),
}
LOGS_PARAMS = [{"name": "num", "in": "query", "required": False, "schema": {"type": "string", "default": "100"},
                "description": "How many lines, a number clamped to 0..--history; anything else is ignored "
                               "(100), as in logplex."}]


def channel_ended(channel_id: str) -> bytes:
    """The last line of a live tail whose channel was deleted."""
    return f"Channel {channel_id} was deleted: this tail has ended.".encode()


def session_gone(spec: SessionSpec, channel) -> HttpError:
    """Why a session cannot be read: its channel is gone, or another channel has its name."""
    if channel is None:
        return HttpError(404, f"Channel {spec.channel_id} no longer exists.")
    return HttpError(410, f"This session was made for an earlier channel named {spec.channel_id}, "
                          f"which was deleted; make a new session.")


def tail_lines(messages: list[bytes], spec: SessionSpec) -> bytes:
    return b"".join(TailFilter(spec.ps, spec.source).lines(messages))


class Sessions:
    def __init__(self, api) -> None:
        # The ManagementApi: its store, backlogs, tails, metrics and settings.
        self.api = api

    def routes(self) -> list:
        return [
            endpoint("POST", "/v3/sessions", self.create, operation(
                "createSessionV3", "Create a session (a backlog read, and optionally a tail)", "sessions",
                {"201": answer("The session URL: GET it, without a credential.", json_content(ref("SessionUrl")),
                               LOCATION), **NOT_CREATED},
                body="SessionBody", body_required=True)),
            endpoint("POST", "/v2/sessions", self.create, operation(
                "createSessionV2", "The same as POST /v3/sessions", "sessions",
                {"201": answer("The session URL.", json_content(ref("SessionUrl")), LOCATION), **NOT_CREATED},
                body="SessionBody", body_required=True)),
            endpoint("POST", "/sessions", self.create_v1, operation(
                "createSessionV1", "Create a session; the URL comes back as text", "sessions",
                {"201": text("The session URL.", headers=LOCATION), **NOT_CREATED},
                body="SessionBody", body_required=True)),
            endpoint("GET", "/sessions/{session}", self.read, operation(
                "readSession", "Read a session: backlog lines, then live ones if it tails", "sessions",
                {"200": text("Chunked text, one line per message, oldest first: TIMESTAMP SOURCE[PS]: MSG. "
                             "A tail stays open; when its channel is deleted it ends with a line saying so."),
                 "404": use("NotFound"),
                 "410": error("The session was made for an earlier channel of this name, since deleted: "
                              "make a new session."),
                 "503": error("The config Redis or the channel's backlog shard is not answering.")},
                guarded=False,
                description="No credential: the unguessable URL is the capability, and it expires after "
                            "--session-expiry seconds."), SESSION),
            endpoint("GET", "/v3/channels/{channel}/logs", self.channel_logs, operation(
                "channelLogs", "The channel's last lines", "v3",
                {"200": text("Frames in logplex's output format, oldest first.", "application/logplex-1",
                             {"Logplex-Msg-Count": {"required": True,
                                                    "schema": {"type": "integer", "minimum": 0}}}),
                 "404": use("NotFound")},
                params=LOGS_PARAMS), CHANNEL),
        ]

    # -- making one ---------------------------------------------------------------------------
    async def _new(self, request) -> str:
        api = self.api
        if api.deny_tail_sessions:
            raise HttpError(503, "Tail sessions are switched off on this node.")
        body = api.body(request)
        channel_id = body.get("channel_id")
        if isinstance(channel_id, int) and not isinstance(channel_id, bool):
            channel_id = str(channel_id)
        if not isinstance(channel_id, str) or not channel_id:
            raise HttpError(400, "'channel_id' is required.")
        channel = api.store.channel(channel_id)
        if channel is None:
            raise HttpError(422, "channel not found")
        for key in ("ps", "source"):
            value = body.get(key)
            # They are compared with PROCID and APP-NAME: printable ASCII, no spaces.
            if value is not None and (not isinstance(value, str) or not validate.FIELD.fullmatch(value)):
                raise HttpError(422, f"'{key}' must be 1-128 printable ASCII characters without spaces.")
        tail = body.get("tail", False)
        spec = SessionSpec(
            id=str(uuid.uuid4()),
            channel_id=channel_id,
            num=validate.number(body.get("num"), "num", 100, 0, api.history),
            tail=tail not in (False, None, "false", "0", 0),
            ps=body.get("ps") or None,
            source=body.get("source") or None,
            # The session reads this channel, never a later one of its name.
            incarnation=channel.incarnation,
        )
        await api.store.create_session(spec)
        api.metrics.inc("logplex_sessions_created_total")
        return f"{api.api_url}/sessions/{spec.id}"

    async def create(self, request) -> Reply:
        url = await self._new(request)
        return Reply(201, {"url": url}, {b"location": url.encode()})

    async def create_v1(self, request) -> Reply:
        url = await self._new(request)
        return Reply(201, url.encode(), {b"location": url.encode()}, content_type=b"text/plain")

    # -- reading one ----------------------------------------------------------------------------
    def _notice(self, words: bytes) -> bytes:
        return syslog.utc_timestamp(self.api.reactor.seconds()) + b" Logplex: " + words + b"\n"

    async def read(self, request, session_id) -> object:
        api = self.api
        spec = await api.store.session(session_id)
        if spec is None:
            raise HttpError(404, "No such session (or it expired).")
        channel = api.store.channel(spec.channel_id)
        if channel is None or not spec.reads(channel):
            raise session_gone(spec, channel)
        live = spec.tail and NO_TAIL not in channel.flags and not api.deny_tail_sessions
        tail = None
        if live:
            tail = TailSession(spec, request.write, api.metrics, api.tail_settings)
        stream = TailStream(request, api.tails, tail,
                            on_gone=lambda: stream.finish(self._notice(channel_ended(spec.channel_id))))
        backlog = await stream.backlog(api.backlogs, spec.channel_id, spec.num, api.tail_settings.buffer_bytes)
        if stream.gone:
            raise session_gone(spec, api.store.channel(spec.channel_id))
        headers = {b"content-type": b"text/plain; charset=utf-8"}
        if NO_REDIS in channel.flags:
            headers[b"x-heroku-warning"] = NO_REDIS_WARNING
        if tail is None:
            headers[b"connection"] = b"close"
        stream.start(headers, tail_lines(backlog, spec))
        if tail is None:
            stream.finish(self._notice(NO_TAIL_WARNING) if spec.tail and NO_TAIL in channel.flags else b"")
            return STREAMING
        stream.go_live(backlog)
        log.info("tail_started channel={channel} session={session}", channel=spec.channel_id, session=spec.id)
        return STREAMING

    async def channel_logs(self, request, channel_id) -> Reply:
        api = self.api
        api.channel(channel_id)
        num = validate.query_number(request, b"num", 100, 0, api.history)
        try:
            backlog = await api.backlogs.recent(channel_id, num, api.tail_settings.buffer_bytes)
        except Exception:
            raise HttpError(503, BACKLOG_DOWN) from None
        out = []
        for message in backlog:
            fields = syslog.parse(message)
            if fields is not None:
                out.append(syslog.output_message(fields))
        return Reply(200, encode_logplex1(out), {b"logplex-msg-count": str(len(out)).encode()},
                     content_type=b"application/logplex-1")
