"""The management API: channels, tokens, drains, sessions and channel logs (logplex v2 and v3)."""

from __future__ import annotations

import heapq
import uuid
from urllib.parse import urlsplit

import attrs
from twisted.logger import Logger

from logplex import syslog
from logplex.api import openapi as openapi_document
from logplex.api import validate
from logplex.http.auth import BASIC_CHALLENGE, Authenticator, LoginThrottle, login, parse_basic
from logplex.framing import encode_logplex1
from logplex.health import assess
from logplex.model import FULL_API, NO_REDIS, NO_TAIL, PERMISSIONS, READ_CHANNEL, SessionSpec
from logplex.config.store import ConfigStore
from logplex.errors import ConfigError, Conflict, NotFound, Unavailable
from logplex.tails.session import DEFAULT_TAIL_BUFFER_BYTES, TailFilter, TailRegistry, TailSession
from logplex.http.routing import STREAMING, Dispatcher, HttpError, Reply, error_reply, read_json, route

log = Logger()

# logplex's own words, which its clients may look for.
NO_TAIL_WARNING = b"Error L20 (Tail sessions forbidden) Tail sessions for this app are forbidden due to log volume."
NO_REDIS_WARNING = b"Warning: log history discarded due to excessive volume."
# Requests that change nothing: a page of any origin may send them.
SAFE_METHODS = {b"GET", b"HEAD", b"OPTIONS"}

# How the API answers what the config refuses; any other ConfigError is a 422.
CONFIG_ERROR_STATUS = {NotFound: 404, Conflict: 409, Unavailable: 503}


def channel_ended(channel_id: str) -> bytes:
    """The last line of a live tail whose channel was deleted."""
    return f"Channel {channel_id} was deleted: this tail has ended.".encode()


def session_gone(spec: SessionSpec, channel) -> HttpError:
    """Why a session cannot be read: its channel is gone, or another channel has its name."""
    if channel is None:
        return HttpError(404, f"Channel {spec.channel_id} no longer exists.")
    return HttpError(410, f"This session was made for an earlier channel named {spec.channel_id}, "
                          f"which was deleted; make a new session.")


def v2_channel_id(channel_id: str):
    """v2 answers carry integer channel ids, as logplex's clients expect."""
    return int(channel_id) if channel_id.isdigit() else channel_id


class ManagementApi:
    def __init__(
        self,
        store: ConfigStore,
        backlogs,
        tails: TailRegistry,
        auth: Authenticator,
        metrics,
        *,
        api_url: str,
        history: int = 1500,
        allow_private_drains: bool = False,
        tail_buffer: int = 1024,
        tail_buffer_bytes: int = DEFAULT_TAIL_BUFFER_BYTES,
        reactor,
        drain_state=lambda drain_id: None,
        nodes=None,
        metrics_auth: bool = False,
        health=None,
        throttle: LoginThrottle | None = None,
        max_json: int = 64 * 1024,
    ) -> None:
        self.throttle = throttle or LoginThrottle(reactor)
        self.max_json = max_json
        # What /healthcheck answers (logplex.health.Health); without one,
        # whether the config is loaded.
        self.health = health or self._loaded_health
        self.metrics_auth = metrics_auth
        self.nodes = nodes
        self.drain_state = drain_state
        self.store = store
        self.backlogs = backlogs
        self.tails = tails
        self.auth = auth
        self.metrics = metrics
        self.api_url = api_url.rstrip("/")
        self.history = history
        self.allow_private_drains = allow_private_drains
        self.tail_buffer = tail_buffer
        self.tail_buffer_bytes = tail_buffer_bytes
        self.reactor = reactor
        self.deny_tail_sessions = False

    def resource(self, extra_routes=()) -> Dispatcher:
        g = self._guard
        ch = r"([^/]+)"
        # ASCII digits, at most 18 of them: ids, never numbers int() chokes on.
        num = r"([0-9]{1,18})"
        routes = [
            route("GET", "/healthcheck", self.healthcheck),
            route("GET", "/v3/healthcheck", self.healthcheck),
            route("GET", "/v3/openapi.json", self.openapi),
            route("GET", "/metrics", g(self.metrics_text) if self.metrics_auth else self.metrics_text),
            # v1 / v2
            route("POST", "/channels", g(self.create_channel_v2)),
            route("GET", f"/v2/channels/{num}", g(self.get_channel_v2)),
            route("DELETE", f"/v2/channels/{num}", g(self.delete_channel_v2)),
            route("DELETE", f"/channels/{num}", g(self.delete_channel_v2)),
            route("GET", f"/channels/{num}/info", g(self.channel_info_v1)),
            route("POST", f"/v2/channels/{num}/tokens", g(self.add_token_v2)),
            route("POST", f"/channels/{num}/token", g(self.add_token_v1)),
            route("POST", f"/v2/channels/{num}/drains", g(self.add_drain_v2)),
            route("POST", f"/channels/{num}/drains/tokens", g(self.reserve_drain_v1)),
            route("POST", f"/v2/channels/{num}/drains/{num}", g(self.set_drain_url_v2)),
            route("DELETE", f"/v2/channels/{num}/drains/{num}", g(self.delete_drain_v2)),
            route("POST", "/sessions", g(self.create_session_v1)),
            route("POST", "/v2/sessions", g(self.create_session)),
            route("POST", "/v3/sessions", g(self.create_session)),
            route("GET", r"/sessions/([A-Za-z0-9-]+)", self.read_session),
            # v3
            route("GET", "/v3/channels", g(self.list_channels_v3)),
            route("PUT", f"/v3/channels/{ch}", g(self.put_channel_v3)),
            route("GET", f"/v3/channels/{ch}", g(self.get_channel_v3)),
            route("DELETE", f"/v3/channels/{ch}", g(self.delete_channel_v3)),
            route("POST", f"/v3/channels/{ch}/tokens", g(self.add_token_v3)),
            route("POST", f"/v3/channels/{ch}/drains", g(self.add_drain_v3)),
            route("GET", f"/v3/channels/{ch}/drains/{num}", g(self.get_drain_v3)),
            route("PUT", f"/v3/channels/{ch}/drains/{num}", g(self.put_drain_v3)),
            route("DELETE", f"/v3/channels/{ch}/drains/{num}", g(self.delete_drain_v3)),
            route("GET", f"/v3/channels/{ch}/logs", g(self.channel_logs_v3)),
            route("GET", "/v3/nodes", g(self.list_nodes)),
            route("POST", "/v3/credentials", g(self.create_credential)),
            route("GET", "/v3/credentials", g(self.list_credentials)),
            route("DELETE", r"/v3/credentials/([A-Za-z0-9._@-]+)", g(self.delete_credential)),
            *extra_routes,
        ]
        # Every write, whatever it does, is refused to other origins' pages.
        routes = [r if r.method in SAFE_METHODS else attrs.evolve(r, handler=self._same_origin(r.handler))
                  for r in routes]
        return Dispatcher(routes, self._config_error)

    # -- plumbing -------------------------------------------------------------------
    @staticmethod
    def _config_error(e: Exception) -> Reply | None:
        if isinstance(e, ConfigError):
            return error_reply(CONFIG_ERROR_STATUS.get(type(e), 422), e.message)
        return None

    def _same_origin(self, handler):
        """Wrap a write: refused (403) when a browser says another origin's page sent it.

        A browser attaches cached Basic credentials to a form post from any
        site, and a text/plain body is read as JSON: without this, any page
        an operator visits could create drains. Browsers send Origin on such
        requests; curl and other programs send none and are not affected.
        Checked before the login, so such a request costs no KDF and no
        failure on the operator's address.
        """

        async def checked(request, *args):
            origin = request.getHeader(b"origin")
            if origin is not None and not self._own_origin(request, origin):
                self.metrics.inc("logplex_api_cross_origin_refused_total")
                shown = origin.decode("latin-1")[:100]
                raise HttpError(403, f"This API does not accept writes from a web page of another origin "
                                     f"({shown}); send the request from {self.api_url} itself, or from a "
                                     f"program that sends no Origin header (such as curl).")
            return await handler(request, *args)

        return checked

    def _own_origin(self, request, origin: bytes) -> bool:
        """Whether origin is the one this request came to, or the --api-url's."""
        seen = _origin(origin.decode("latin-1"))
        if seen is None:
            return False  # "null" (a sandboxed page, a file) or garbage
        scheme = "https" if request.isSecure() else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        return seen in (_origin(f"{scheme}://{host}"), _origin(self.api_url))

    def _guard(self, handler):
        """Wrap a handler: node booted, caller holds a full_api credential."""

        async def guarded(request, *args):
            if not self.store.loaded:
                raise HttpError(503, "SYSTEM BOOTING: this node has not loaded its configuration yet.")
            header = request.getHeader(b"authorization")
            if not header:
                raise HttpError(401, "Authorization required: HTTP Basic with an API credential.",
                                BASIC_CHALLENGE)
            pair = parse_basic(header)
            if pair is None:
                raise HttpError(401, "Invalid credentials.", BASIC_CHALLENGE)
            cred = await login(self.auth, self.throttle, request, *pair)
            if not cred.has(FULL_API):
                raise HttpError(403, "This credential lacks the full_api permission.")
            return await handler(request, *args)

        return guarded

    def _channel(self, channel_id: str):
        channel = self.store.channel(channel_id)
        if channel is None:
            raise HttpError(404, f"Channel {channel_id} does not exist.")
        return channel

    def _drain(self, channel_id: str, drain_id: str):
        self._channel(channel_id)
        drain = self.store.cache.channel_drains.get(channel_id, {}).get(int(drain_id))
        if drain is None:
            raise HttpError(404, f"Channel {channel_id} has no drain {drain_id}.")
        return drain

    def _drain_url(self, body: dict, required: bool, malformed: int = 422) -> str | None:
        url = body.get("url")
        if url is None and not required:
            return None
        return validate.drain_url(url, self.allow_private_drains, malformed)

    def _body(self, request, status: int = 422) -> dict:
        return validate.json_object(read_json(request, self.max_json), status)

    # -- health and metrics -----------------------------------------------------------
    async def openapi(self, request) -> Reply:
        return await openapi_document.serve(request)

    async def healthcheck(self, request) -> Reply:
        """200 while the node routes logs (status normal, or degraded with a Redis down), else 503."""
        health = self.health()
        return Reply(health.code, health.document())

    def _loaded_health(self):
        return assess(stopping=False, ready=self.store.loaded, ingress=True, config_redis=True, shards={})

    async def metrics_text(self, request) -> Reply:
        self.metrics.set("logplex_config_channels", len(self.store.cache.channels))
        if self.store.loaded_at is not None:
            self.metrics.set("logplex_config_cache_age_seconds",
                             round(self.reactor.seconds() - self.store.loaded_at, 3))
        return Reply(200, self.metrics.exposition(),
                     content_type=b"text/plain; version=0.0.4; charset=utf-8")

    # -- v1 / v2 ----------------------------------------------------------------------------
    async def create_channel_v2(self, request) -> Reply:
        body = self._body(request)
        name = body.get("name", "")
        if not isinstance(name, str):
            raise HttpError(400, "Channel name must be a string.")
        names = validate.token_names(body.get("tokens"))
        channel, tokens = await self.store.create_channel_v2(names)
        return Reply(201, {
            "channel_id": v2_channel_id(channel.id),
            "tokens": {t.name: t.id for t in tokens},
        })

    def _v2_description(self, channel_id: str) -> dict:
        self._channel(channel_id)
        return {
            "channel_id": v2_channel_id(channel_id),
            "tokens": [{"name": t.name, "token": t.id} for t in self.store.tokens_of(channel_id)],
            "drains": [d.describe() for d in self.store.drains_of(channel_id) if d.url],
        }

    async def get_channel_v2(self, request, channel_id) -> Reply:
        return Reply(200, self._v2_description(channel_id))

    async def delete_channel_v2(self, request, channel_id) -> Reply:
        await self._delete_channel(channel_id)
        return Reply(200, b"OK", content_type=b"text/plain")

    async def _delete_channel(self, channel_id: str) -> None:
        self._channel(channel_id)
        await self.store.delete_channel(channel_id)
        await self._clear_backlog(channel_id)

    async def _clear_backlog(self, channel_id: str) -> None:
        """Delete a backlog: of a deleted channel, and again when a channel of its name is made
        (a DELETE whose shard was down, or a late write from another node, left it lines)."""
        try:
            await self.backlogs.delete(channel_id)
        except Exception as e:
            # The backlog expires by itself; the channel is gone (or made) either way.
            log.warn("backlog_delete_failed channel={channel} error={e}", channel=channel_id, e=repr(e))

    async def channel_info_v1(self, request, channel_id) -> Reply:
        self._channel(channel_id)
        return Reply(200, {
            "channel_id": v2_channel_id(channel_id),
            "tokens": {t.name: t.id for t in self.store.tokens_of(channel_id)},
            "drains": [d.url for d in self.store.drains_of(channel_id) if d.url],
        })

    async def add_token_v2(self, request, channel_id) -> Reply:
        name = validate.token_name(self._body(request).get("name"))
        token = await self.store.add_token(self._channel(channel_id).id, name)
        return Reply(201, {"name": token.name, "token": token.id})

    async def add_token_v1(self, request, channel_id) -> Reply:
        name = validate.token_name(self._body(request).get("name"), missing=400)
        token = await self.store.add_token(self._channel(channel_id).id, name)
        return Reply(201, token.id.encode(), content_type=b"text/plain")

    async def add_drain_v2(self, request, channel_id) -> Reply:
        self._channel(channel_id)
        url = self._drain_url(self._body(request), required=True)
        drain = await self.store.add_drain(channel_id, url)
        return Reply(201, drain.describe())

    async def reserve_drain_v1(self, request, channel_id) -> Reply:
        self._channel(channel_id)
        drain = await self.store.add_drain(channel_id, None)
        return Reply(201, {"id": drain.id, "token": drain.token,
                           "msg": "Successfully reserved drain token"})

    async def set_drain_url_v2(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        url = self._drain_url(self._body(request), required=True)
        drain = await self.store.set_drain_url(channel_id, int(drain_id), url)
        return Reply(201, drain.describe())

    async def delete_drain_v2(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        await self.store.delete_drain(channel_id, int(drain_id))
        return Reply(200, b"OK", content_type=b"text/plain")

    # -- sessions -----------------------------------------------------------------------------
    async def _new_session(self, request) -> str:
        if self.deny_tail_sessions:
            raise HttpError(503, "Tail sessions are switched off on this node.")
        body = self._body(request)
        channel_id = body.get("channel_id")
        if isinstance(channel_id, int) and not isinstance(channel_id, bool):
            channel_id = str(channel_id)
        if not isinstance(channel_id, str) or not channel_id:
            raise HttpError(400, "'channel_id' is required.")
        channel = self.store.channel(channel_id)
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
            num=validate.number(body.get("num"), "num", 100, 0, self.history),
            tail=tail not in (False, None, "false", "0", 0),
            ps=body.get("ps") or None,
            source=body.get("source") or None,
            # The session reads this channel, never a later one of its name.
            incarnation=channel.incarnation,
        )
        await self.store.create_session(spec)
        self.metrics.inc("logplex_sessions_created_total")
        return f"{self.api_url}/sessions/{spec.id}"

    async def create_session(self, request) -> Reply:
        url = await self._new_session(request)
        return Reply(201, {"url": url}, {b"location": url.encode()})

    async def create_session_v1(self, request) -> Reply:
        url = await self._new_session(request)
        return Reply(201, url.encode(), {b"location": url.encode()}, content_type=b"text/plain")

    async def read_session(self, request, session_id) -> object:
        spec = await self.store.session(session_id)
        if spec is None:
            raise HttpError(404, "No such session (or it expired).")
        channel = self.store.channel(spec.channel_id)
        if channel is None or not spec.reads(channel):
            raise session_gone(spec, channel)
        live = spec.tail and NO_TAIL not in channel.flags and not self.deny_tail_sessions
        tail = None
        # The channel deleted: before the answer started (an error instead), or while live.
        ended = {"gone": False, "live": False}

        def end() -> None:
            ended["gone"] = True
            if ended["live"] and not request.finished:
                request.write(syslog.utc_timestamp(self.reactor.seconds()) + b" Logplex: "
                              + channel_ended(spec.channel_id) + b"\n")
                request.finish()

        if live:
            # Registered before the backlog is read, so nothing falls in between.
            tail = TailSession(spec, request.write, self.metrics, self.tail_buffer,
                               buffer_bytes=self.tail_buffer_bytes)
            self.tails.add(tail, end)
            request.notifyFinish().addBoth(lambda _: self.tails.remove(tail))
        try:
            backlog = await self.backlogs.recent(spec.channel_id, spec.num, self.tail_buffer_bytes)
        except Exception:
            if tail is not None:
                self.tails.remove(tail)
            raise HttpError(503, "The channel's backlog shard is not answering; try again.") from None
        if ended["gone"]:
            raise session_gone(spec, self.store.channel(spec.channel_id))
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if NO_REDIS in channel.flags:
            request.setHeader(b"x-heroku-warning", NO_REDIS_WARNING)
        if tail is None:
            request.setHeader(b"connection", b"close")
        # Written even when empty: it sends the status line and headers, so a
        # tail of a quiet channel is answered at once.
        request.write(tail_lines(backlog, spec))
        if tail is None:
            if spec.tail and NO_TAIL in channel.flags:
                request.write(syslog.utc_timestamp(self.reactor.seconds()) + b" Logplex: " + NO_TAIL_WARNING + b"\n")
            request.finish()
            return STREAMING
        request.registerProducer(tail, True)
        ended["live"] = True
        tail.go_live(backlog)
        log.info("tail_started channel={channel} session={session}", channel=spec.channel_id, session=spec.id)
        return STREAMING

    # -- v3 -----------------------------------------------------------------------------------
    def _v3_description(self, channel_id: str) -> dict:
        self._channel(channel_id)
        doc = {"channel": channel_id}
        tokens = self.store.tokens_of(channel_id)
        if tokens:
            doc["tokens"] = {t.name: t.id for t in tokens}
        drains = [d.describe() for d in self.store.drains_of(channel_id) if d.url]
        if drains:
            doc["drains"] = drains
        return doc

    async def put_channel_v3(self, request, channel_id) -> Reply:
        validate.channel_id(channel_id)
        names = validate.token_names(self._body(request, 400).get("tokens"), malformed=400)
        created = await self.store.put_channel(channel_id, names)
        if created:
            await self._clear_backlog(channel_id)
        return Reply(201 if created else 200, self._v3_description(channel_id))

    async def get_channel_v3(self, request, channel_id) -> Reply:
        return Reply(200, self._v3_description(channel_id))

    async def delete_channel_v3(self, request, channel_id) -> Reply:
        await self._delete_channel(channel_id)
        return Reply(204)

    async def add_token_v3(self, request, channel_id) -> Reply:
        # logplex's v3: no name is 400, a new token 200.
        name = validate.token_name(self._body(request, 400).get("name"), missing=400)
        self._channel(channel_id)
        token = await self.store.add_token(channel_id, name)
        return Reply(200, {"token": token.id, "name": token.name})

    def _drain_location(self, channel_id: str, drain_id: int) -> dict:
        return {b"location": f"{self.api_url}/v3/channels/{channel_id}/drains/{drain_id}".encode()}

    async def add_drain_v3(self, request, channel_id) -> Reply:
        self._channel(channel_id)
        url = self._drain_url(self._body(request, 400), required=False, malformed=400)
        drain = await self.store.add_drain(channel_id, url)
        doc = {"id": drain.id, "token": drain.token}
        if url:
            doc["url"] = url
        return Reply(201, doc, self._drain_location(channel_id, drain.id))

    async def get_drain_v3(self, request, channel_id, drain_id) -> Reply:
        drain = self._drain(channel_id, drain_id)
        doc = drain.describe()
        # Delivery figures are this node's: each node delivers what it ingested.
        doc["state"] = self.drain_state(drain.id)
        return Reply(200, doc)

    async def put_drain_v3(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        url = self._drain_url(self._body(request, 400), required=True, malformed=400)
        drain = await self.store.set_drain_url(channel_id, int(drain_id), url)
        return Reply(200, drain.describe())

    async def delete_drain_v3(self, request, channel_id, drain_id) -> Reply:
        self._drain(channel_id, drain_id)
        await self.store.delete_drain(channel_id, int(drain_id))
        return Reply(204)

    # -- credentials ------------------------------------------------------------------------------
    async def create_credential(self, request) -> Reply:
        body = self._body(request)
        perms = body.get("perms", [FULL_API])
        if not isinstance(perms, list) or not perms or not all(isinstance(p, str) and p in PERMISSIONS for p in perms):
            raise HttpError(422, "'perms' must be a non-empty list of: " + ", ".join(sorted(PERMISSIONS)) + ".")
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > 200:
            raise HttpError(422, "'note' must be a string of at most 200 characters.")
        channels = body.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise HttpError(422, "'channels' must be a list of channel ids.")
        if (READ_CHANNEL in perms) != bool(channels):
            raise HttpError(422, "A read_channel credential names its channels, and only it does.")
        # A grant names a channel that exists: its identity, not only its name.
        granted = []
        for channel_id in sorted(set(channels)):
            if self.store.channel(channel_id) is None:
                # Perhaps just made on another node: ask the config Redis, not only the cache.
                await self.store.refresh_channel(channel_id)
            channel = self.store.channel(channel_id)
            if channel is None:
                raise HttpError(404, f"Channel {channel_id} does not exist: make it before granting it.")
            granted.append(channel)
        cred, secret = await self.store.create_credential(perms, note, channels=granted)
        # The only time the secret is shown: only its hash is kept.
        return Reply(201, {**describe_credential(cred), "secret": secret})

    async def list_credentials(self, request) -> Reply:
        return Reply(200, [describe_credential(c)
                           for c in sorted(self.store.cache.creds.values(), key=lambda c: c.id)])

    async def delete_credential(self, request, cred_id) -> Reply:
        if cred_id not in self.store.cache.creds:
            raise HttpError(404, f"Credential {cred_id} does not exist.")
        await self.store.delete_credential(cred_id)
        return Reply(204)

    async def list_nodes(self, request) -> Reply:
        if self.nodes is None:
            return Reply(200, [])
        try:
            return Reply(200, await self.nodes())
        except Exception:
            raise HttpError(503, "The config Redis is not answering; try again shortly.") from None

    async def list_channels_v3(self, request) -> Reply:
        """A page of channels in id order, with token names (never tokens) and drain counts."""
        limit = _query_number(request, b"limit", 100, 1, 1000)
        after = request.args.get(b"after", [b""])[0].decode("utf-8", "replace")
        # The page's smallest ids, without sorting every channel of a large cluster.
        ids = heapq.nsmallest(limit + 1, (c for c in self.store.cache.channels if c > after))
        page = [{"channel": channel_id,
                 "tokens": sorted(t.name for t in self.store.tokens_of(channel_id)),
                 "drains": sum(1 for d in self.store.drains_of(channel_id) if d.url)}
                for channel_id in ids[:limit]]
        return Reply(200, {"channels": page, "next": ids[limit - 1] if len(ids) > limit else None})

    async def channel_logs_v3(self, request, channel_id) -> Reply:
        self._channel(channel_id)
        num = _query_number(request, b"num", 100, 0, self.history)
        try:
            backlog = await self.backlogs.recent(channel_id, num, self.tail_buffer_bytes)
        except Exception:
            raise HttpError(503, "The channel's backlog shard is not answering; try again.") from None
        out = []
        for message in backlog:
            fields = syslog.parse(message)
            if fields is not None:
                out.append(syslog.output_message(fields))
        return Reply(200, encode_logplex1(out), {b"logplex-msg-count": str(len(out)).encode()},
                     content_type=b"application/logplex-1")


def _query_number(request, name: bytes, default: int, low: int, high: int) -> int:
    """A number from the query string, clamped; as logplex, one that is not a number is ignored."""
    raw = request.args.get(name, [None])[0]
    try:
        return validate.number(None if raw is None else raw.decode("latin-1"), name.decode(), default, low, high)
    except HttpError:
        return default


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL, default ports filled in; None if it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def describe_credential(cred) -> dict:
    doc = {"id": cred.id, "perms": sorted(cred.perms), "note": cred.note}
    if cred.channels:
        doc["channels"] = sorted(cred.channels)
    return doc


def tail_lines(messages: list[bytes], spec: SessionSpec) -> bytes:
    return b"".join(TailFilter(spec.ps, spec.source).lines(messages))
