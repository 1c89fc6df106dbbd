"""The API's OpenAPI 3.1 document, built from the route table that serves it, at GET /v3/openapi.json.

Every route carries its operation where it is declared (logplex/api/channels.py
and its siblings, logplex/api/tailpage.py); this module only assembles them, so
a route served is a route documented, once.
"""

from __future__ import annotations

import json

import attrs

from logplex import __version__
from logplex.api.schemas import RESPONSES, SCHEMAS, answer, json_content, operation
from logplex.http.routing import Reply, Route, endpoint

OPENAPI_PATH = "/v3/openapi.json"

INFO = {
    "title": "logplex management API",
    "version": __version__,
    "description": (
        "Channels, tokens, drains, sessions and credentials of a logplex node (v3, and logplex's "
        "v2/v1 routes), and the live-tail page. JSON over HTTP Basic with a full_api credential. Every "
        "error is {\"error\": sentence}; every answer carries a Request-Id header (an incoming one is "
        "echoed). A path nothing serves is 404 and a method a path does not serve is 405 with an "
        "Allow header, both with the same JSON error body; HEAD is served wherever GET is. Unknown "
        "members of a request body are ignored; an empty body is read as {}."
    ),
}
TAGS = [
    {"name": "v3", "description": "Channels named by the caller."},
    {"name": "v2", "description": "logplex v2: integer channel ids."},
    {"name": "v1", "description": "logplex v1 spellings."},
    {"name": "sessions", "description": "Backlog reads and tails."},
    {"name": "credentials", "description": "API and log-input credentials."},
    {"name": "operations", "description": "Health, metrics, nodes and this document."},
    {"name": "tail page", "description": "The live-tail web page and the event stream it reads."},
]
COMPONENTS = {
    "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                  "description": "A credential id and its secret."}},
    "headers": {"Request-Id": {"required": True, "schema": {"type": "string", "minLength": 1},
                               "description": "The request's id: the caller's Request-Id, or a new UUID."}},
    "schemas": SCHEMAS,
    "responses": RESPONSES,
}

SELF = operation("openapi", "This document", "operations",
                 {"200": answer("The OpenAPI document.", json_content({"type": "object"}))}, guarded=False)


def document(routes: list[Route]) -> dict:
    """The OpenAPI document of these routes; a route without an operation is an error, not a gap."""
    paths: dict[str, dict] = {}
    for r in routes:
        method = r.method.decode().lower()
        if r.doc is None:
            raise ValueError(f"{method.upper()} {r.pattern.pattern} carries no OpenAPI operation")
        item = paths.setdefault(r.path, {})
        if method in item:
            raise ValueError(f"{method.upper()} {r.path} is declared twice")
        doc = dict(r.doc)
        params = [p.openapi() for p in r.params] + list(doc.pop("parameters", []))
        item[method] = {**doc, "parameters": params} if params else doc
    return {
        "openapi": "3.1.0",
        "info": INFO,
        "tags": TAGS,
        "security": [{"basic": []}],
        "paths": paths,
        "components": COMPONENTS,
    }


def served(routes: list[Route]) -> Route:
    """GET /v3/openapi.json: the document of `routes` and of itself. No credential, and it answers
    while the node boots."""
    own = endpoint("GET", OPENAPI_PATH, None, SELF)
    body = json.dumps(document([*routes, own]), indent=1).encode()

    async def serve(request) -> Reply:
        return Reply(200, body, content_type=b"application/json")

    return attrs.evolve(own, handler=serve)
