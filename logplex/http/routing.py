"""Routing of HTTP requests to async handlers: the route table, replies and JSON errors.

A route may carry its OpenAPI operation: where a route is declared, it is
documented, and the API's document is built from the table that serves it.
"""

from __future__ import annotations

import json
import re
from typing import Awaitable, Callable, Mapping
from urllib.parse import unquote

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

log = Logger()


class HttpError(Exception):
    """An answer other than success; message is the sentence the client reads."""

    def __init__(self, status: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@attrs.frozen
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON; bytes as they are; None -> empty
    headers: dict = attrs.field(factory=dict)
    content_type: bytes = b"application/json"


# A handler that has taken over the request (streaming) returns this.
STREAMING = object()

Handler = Callable[..., Awaitable[object]]


@attrs.frozen
class Param:
    """A {name} in a route's path: what the router matches it with, and what the document says of it."""

    name: str
    regex: str
    schema: Mapping
    description: str

    def openapi(self) -> dict:
        return {"name": self.name, "in": "path", "required": True, "schema": dict(self.schema),
                "description": self.description}


@attrs.frozen
class Route:
    method: bytes
    pattern: re.Pattern
    handler: Handler
    # The path as documented ("/v3/channels/{channel}"), its parameters, and
    # the OpenAPI operation object; None on a route nobody documents.
    path: str | None = None
    params: tuple[Param, ...] = ()
    doc: Mapping | None = None


def route(method: str, pattern: str, handler: Handler) -> Route:
    """An undocumented route matched by a regular expression; its groups are the handler's arguments."""
    return Route(method.encode(), re.compile("^" + pattern + "$"), handler)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def endpoint(method: str, path: str, handler: Handler, doc: Mapping, *params: Param,
             slash: bool = False) -> Route:
    """A documented route: `path` names each of `params` as {name}; `slash` also serves path + "/"."""
    by_name = {p.name: p for p in params}
    named = _PLACEHOLDER.findall(path)
    if sorted(named) != sorted(by_name):
        raise ValueError(f"{path} names {named}, but its parameters are {sorted(by_name)}")
    pieces = _PLACEHOLDER.split(path)
    # split() alternates literal text and placeholder names.
    regex = "".join(re.escape(piece) if i % 2 == 0 else f"({by_name[piece].regex})"
                    for i, piece in enumerate(pieces))
    if slash:
        regex += "/?"
    ordered = tuple(by_name[name] for name in named)
    return Route(method.encode(), re.compile("^" + regex + "$"), handler, path, ordered, doc)


def write_reply(request, reply: Reply) -> None:
    request.setResponseCode(reply.status)
    for name, value in reply.headers.items():
        request.setHeader(name, value)
    body = reply.body
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = body
        request.setHeader(b"content-type", reply.content_type)
    else:
        data = json.dumps(body).encode()
        request.setHeader(b"content-type", b"application/json")
    if reply.status != 204:
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
    request.finish()


def error_reply(status: int, message: str, headers: dict | None = None) -> Reply:
    return Reply(status, {"error": message}, headers or {})


def decode_path(raw: bytes) -> str:
    """The request path with its percent-escapes decoded, segment by segment.

    A client may escape a channel id's ':' or '@'; an escaped '/' stays
    escaped, so it can never split a segment in two and reach another route.
    """
    return "/".join(unquote(segment, errors="replace").replace("/", "%2F")
                    for segment in raw.decode("latin-1").split("/"))


class Dispatcher(Resource):
    """A leaf resource that matches (method, path) against routes and runs async handlers.

    Handlers receive (request, *path groups) and return a Reply or STREAMING;
    HttpError becomes a JSON error; anything unexpected a logged 500, never a
    traceback to the client.
    """

    isLeaf = True

    def __init__(self, routes: list[Route], error_map: Callable[[Exception], Reply | None] = lambda e: None) -> None:
        super().__init__()
        served = [(r.method, r.path) for r in routes if r.path is not None]
        twice = sorted({f"{m.decode()} {p}" for m, p in served if served.count((m, p)) > 1})
        if twice:
            raise ValueError("Routes declared twice: " + ", ".join(twice))
        self.routes = routes
        self.error_map = error_map

    def render(self, request):
        path = decode_path(request.path)
        allowed = []
        for r in self.routes:
            match = r.pattern.match(path)
            if match is None:
                continue
            if r.method != request.method and not (r.method == b"GET" and request.method == b"HEAD"):
                allowed.append(r.method)
                continue
            self._run(request, r.handler, match.groups())
            return server.NOT_DONE_YET
        if allowed:
            reply = error_reply(405, f"{request.method.decode('latin-1')} is not allowed on {path}.",
                                {b"allow": b", ".join(sorted(set(allowed)))})
        else:
            reply = error_reply(404, f"There is nothing at {path}.")
        write_reply(request, reply)
        return server.NOT_DONE_YET

    def _run(self, request, handler: Handler, groups) -> None:
        d = defer.ensureDeferred(handler(request, *groups))
        finished = []
        request.notifyFinish().addBoth(lambda _: finished.append(True))

        def done(reply):
            if reply is STREAMING or finished:
                return
            write_reply(request, reply)

        def failed(failure):
            e = failure.value
            if isinstance(e, HttpError):
                reply = error_reply(e.status, e.message, e.headers)
            else:
                reply = self.error_map(e)
                if reply is None:
                    log.failure("api_handler_failed path={path!r}", failure, path=request.path)
                    reply = error_reply(500, "The node hit an internal error; it is logged.")
            if not finished:
                write_reply(request, reply)

        def unwritable(failure):
            # The reply itself could not be written: say so rather than
            # leave the client waiting.
            log.failure("api_reply_failed path={path!r}", failure, path=request.path)
            if not finished and not request.finished:
                request.responseHeaders.removeHeader(b"content-type")
                write_reply(request, error_reply(500, "The node hit an internal error; it is logged."))

        d.addCallbacks(done, failed).addErrback(unwritable).addErrback(
            lambda f: log.failure("api_error_reply_failed", f)
        )


def read_json(request, max_bytes: int | None = None) -> object:
    """The request body as JSON, or HttpError 400/413 with a sentence."""
    if getattr(request, "body_too_large", False):
        raise HttpError(413, "The request body is too large.")
    raw = request.content.read() if request.content is not None else b""
    if max_bytes is not None and len(raw) > max_bytes:
        raise HttpError(413, f"The JSON body is larger than {max_bytes} bytes.")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"The body is not valid JSON: {e}.") from None
    except RecursionError:
        raise HttpError(400, "The body's JSON is nested too deeply.") from None
