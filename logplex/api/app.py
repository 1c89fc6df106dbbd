"""The management API assembled: what its handlers share, the guards in front of them, and the route table.

Each resource keeps its handlers and their OpenAPI operations in a module of
its own (channels, drains, sessions, credentials, ops); the tail page's routes
come in as extra routes. The guards are put here, from what each route's
operation says: a guarded one without security of its own is behind the
full_api guard, and every write is refused to other origins' pages.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

import attrs

from logplex.api import openapi, validate
from logplex.api.channels import Channels
from logplex.api.credentials import Credentials
from logplex.api.drains import Drains
from logplex.api.ops import Ops
from logplex.api.sessions import Sessions
from logplex.config.store import ConfigStore
from logplex.errors import ConfigError, Conflict, NotFound, Unavailable
from logplex.health import BootWait
from logplex.http.auth import BASIC_CHALLENGE, Authenticator, LoginThrottle, login, parse_basic
from logplex.http.routing import Dispatcher, HttpError, Reply, Route, error_reply, read_json
from logplex.model import FULL_API
from logplex.settings import Settings
from logplex.tails.session import TailRegistry

# Requests that change nothing: a page of any origin may send them.
SAFE_METHODS = {b"GET", b"HEAD", b"OPTIONS"}

# How the API answers what the config refuses; any other ConfigError is a 422.
CONFIG_ERROR_STATUS = {NotFound: 404, Conflict: 409, Unavailable: 503}


class ManagementApi:
    """The API's collaborators and settings, read by its resources at each request
    (the admin shell may switch deny_tail_sessions). `api_url` is asked for the API's public URL
    at each use: without --api-url it is known once the API listener is bound."""

    def __init__(
        self,
        store: ConfigStore,
        backlogs,
        tails: TailRegistry,
        auth: Authenticator,
        metrics,
        settings: Settings,
        *,
        api_url: Callable[[], str],
        reactor,
        drain_state=lambda drain_id: None,
        nodes=None,
        health=None,
        throttle: LoginThrottle | None = None,
        boot: BootWait | None = None,
    ) -> None:
        self.throttle = throttle or LoginThrottle(reactor, settings.listen.login_failures)
        self.max_json = settings.api.max_json
        self.metrics_auth = settings.api.metrics_auth
        self.nodes = nodes
        self.drain_state = drain_state
        self.store = store
        self.backlogs = backlogs
        self.tails = tails
        self.auth = auth
        self.metrics = metrics
        self._api_url = api_url
        # What a tail may ask for and hold, and which drain URLs are taken: other wings' settings.
        self.history = settings.backlog.history
        self.allow_private_drains = settings.drains.allow_private
        self.tail_settings = settings.tails
        self.reactor = reactor
        self.deny_tail_sessions = False
        # True while the node, its config loaded, still puts the --auth credential in
        # place: until then a right login would be a 401, so every guard says 503.
        self.booting = False
        # How long a request that comes while the node boots waits for it (a --workers worker).
        self.boot = boot or BootWait(reactor, 0)
        # What /healthcheck answers (logplex.health.Health); without one,
        # whether the config is loaded.
        self.ops = Ops(self)
        self.health = health or self.ops.loaded_health
        self.resources = (self.ops, Channels(self), Drains(self), Sessions(self), Credentials(self))

    @property
    def api_url(self) -> str:
        return self._api_url().rstrip("/")

    def resource(self, extra_routes=()) -> Dispatcher:
        routes = [self._secured(r) for resource in self.resources for r in resource.routes()]
        routes += [self._secured(r) for r in extra_routes]
        return Dispatcher([*routes, openapi.served(routes)], self._config_error)

    # -- what the resources share ------------------------------------------------------
    def channel(self, channel_id: str):
        """The channel of this id, or 404."""
        channel = self.store.channel(channel_id)
        if channel is None:
            raise HttpError(404, f"Channel {channel_id} does not exist.")
        return channel

    async def booted(self) -> None:
        """Go on once the config is loaded and the --auth credential in place; 503 if it is not."""
        await self.boot.until(self._booted)
        if not self._booted():
            raise HttpError(503, "SYSTEM BOOTING: this node has not loaded its configuration yet.")

    def _booted(self) -> bool:
        return self.store.loaded and not self.booting

    def body(self, request, status: int = 422) -> dict:
        """The request's JSON object; what is not one is `status` (logplex's v3 answers 400, v2 422)."""
        return validate.json_object(read_json(request, self.max_json), status)

    def guard(self, handler):
        """Wrap a handler: node booted, caller holds a full_api credential."""

        async def guarded(request, *args):
            await self.booted()
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

    # -- guards and errors ------------------------------------------------------------------
    def _secured(self, r: Route) -> Route:
        handler = r.handler
        if r.doc is not None and "security" not in r.doc:
            handler = self.guard(handler)
        # Every write, whatever it does, is refused to other origins' pages.
        if r.method not in SAFE_METHODS:
            handler = self._same_origin(handler)
        return attrs.evolve(r, handler=handler)

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
