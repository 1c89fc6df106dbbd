"""The pieces of the API's OpenAPI 3.1 document: component schemas, shared answers, path
parameters, and the builder of one operation.

Each route carries its operation where it is declared (logplex/api/channels.py
and its siblings); logplex/api/openapi.py assembles the document from the
route table. The document says what the node answers, status by status: the
integration tests run schemathesis against a live node with it and reach
every status it lists.
"""

from __future__ import annotations

from logplex.api import validate
from logplex.http.routing import Param

# -- schemas --------------------------------------------------------------------------------------------
# The grammars the node checks (logplex/api/validate.py), as JSON Schema patterns.
CHANNEL_ID_PATTERN = "^" + validate.CHANNEL_ID.pattern + "$"
TOKEN_NAME_PATTERN = "^" + validate.TOKEN_NAME.pattern + "$"
CREDENTIAL_ID_PATTERN = r"^[A-Za-z0-9._@-]+$"
SESSION_ID_PATTERN = r"^[A-Za-z0-9-]+$"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_AUTHORITY = r"(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?[A-Za-z0-9.-]+"
_REST = r"(?:[/?#][!-~]*)?"
# The usual spelling of a drain destination: http(s) with an optional port,
# syslog schemes with a required one.
DRAIN_URL_PATTERN = (
    rf"^(?:https?://{_AUTHORITY}(?::{_PORT})?{_REST}"
    rf"|syslog(?:\+tls)?://{_AUTHORITY}(?::{_PORT})?{_REST})$"
)
NUMBER_STRING_PATTERN = r"^\s*-?[0-9]+\s*$"

UUID4 = "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, dict] = {
    "Error": {
        "type": "object",
        "description": "Every error answer: one sentence for a person to read.",
        "required": ["error"],
        "properties": {"error": {"type": "string", "minLength": 1}},
        "additionalProperties": False,
    },
    "ChannelId": {
        "type": "string",
        "pattern": CHANNEL_ID_PATTERN,
        "description": "1-128 characters: letters, digits and . _ : @ -, starting with a letter or digit. "
                       "Channels made through v1/v2 have integer ids.",
        "examples": ["my-app"],
    },
    "TokenName": {
        "type": "string",
        "pattern": TOKEN_NAME_PATTERN,
        "description": "1-48 printable ASCII characters without spaces; it becomes the APP-NAME of the "
                       "channel's messages.",
        "examples": ["app"],
    },
    "TokenId": {"type": "string", "pattern": f"^t\\.{UUID4}$"},
    "DrainToken": {"type": "string", "pattern": f"^d\\.{UUID4}$"},
    "DrainId": {"type": "integer", "minimum": 1},
    "DrainUrl": {
        "type": "string",
        "minLength": 1,
        "maxLength": 2048,
        "pattern": DRAIN_URL_PATTERN,
        "description": "http://, https://, syslog:// (port 601 unless given) or syslog+tls:// (port "
                       "6514 unless given); UDP syslog is refused. Addresses that are not globally routable (loopback, private, "
                       "link-local, shared, reserved) are refused (422) unless the node runs with "
                       "--allow-private-drains.",
        "examples": ["https://logs.example.com/drain", "syslog+tls://logs.example.com:6514"],
    },
    "Drain": {
        "type": "object",
        "required": ["id", "token", "url"],
        "properties": {"id": ref("DrainId"), "token": ref("DrainToken"), "url": {"type": "string"}},
        "additionalProperties": False,
    },
    "DrainState": {
        "type": ["object", "null"],
        "description": "This node's delivery figures for the drain (each node delivers what it "
                       "ingested); null while this node runs no worker for it (e.g. a reserved drain).",
        "required": ["delivered", "dropped", "retried", "last_error", "last_error_at", "buffered",
                     "spool_depth"],
        "properties": {
            "delivered": {"type": "integer", "minimum": 0},
            "dropped": {"type": "integer", "minimum": 0},
            "retried": {"type": "integer", "minimum": 0},
            "last_error": {"type": ["string", "null"]},
            "last_error_at": {"type": ["number", "null"], "description": "Unix time."},
            "buffered": {"type": "integer", "minimum": 0},
            "spool_depth": {"type": "integer", "minimum": 0},
            "holding_senders": {
                "type": "boolean",
                "description": "Senders of the channel are waiting for this drain (pushback).",
            },
        },
        "additionalProperties": False,
    },
    "DrainWithState": {
        "type": "object",
        "required": ["id", "token", "url", "state"],
        "properties": {
            "id": ref("DrainId"),
            "token": ref("DrainToken"),
            "url": {"type": ["string", "null"], "description": "null while the drain is only reserved."},
            "state": ref("DrainState"),
        },
        "additionalProperties": False,
    },
    "NewDrainV3": {
        "type": "object",
        "required": ["id", "token"],
        "properties": {
            "id": ref("DrainId"),
            "token": ref("DrainToken"),
            "url": {"type": "string", "description": "Absent when the drain was only reserved."},
        },
        "additionalProperties": False,
    },
    "DrainReservationV1": {
        "type": "object",
        "required": ["id", "token", "msg"],
        "properties": {"id": ref("DrainId"), "token": ref("DrainToken"), "msg": {"type": "string"}},
        "additionalProperties": False,
    },
    "TokenMap": {
        "type": "object",
        "description": "Token name -> token.",
        "additionalProperties": ref("TokenId"),
    },
    "NamedToken": {
        "type": "object",
        "required": ["name", "token"],
        "properties": {"name": {"type": "string"}, "token": ref("TokenId")},
        "additionalProperties": False,
    },
    "ChannelV3": {
        "type": "object",
        "required": ["channel"],
        "properties": {
            "channel": {"type": "string"},
            "tokens": {**ref("TokenMap"), "description": "Absent when the channel has no tokens."},
            "drains": {
                "type": "array",
                "items": ref("Drain"),
                "minItems": 1,
                "description": "Drains with a URL; absent when there are none.",
            },
        },
        "additionalProperties": False,
    },
    "ChannelPage": {
        "type": "object",
        "required": ["channels", "next"],
        "properties": {
            "channels": {"type": "array", "items": {
                "type": "object",
                "required": ["channel", "tokens", "drains"],
                "properties": {
                    "channel": {"type": "string"},
                    "tokens": {"type": "array", "items": {"type": "string"}, "description": "Token names."},
                    "drains": {"type": "integer", "minimum": 0},
                },
                "additionalProperties": False,
            }},
            "next": {"type": ["string", "null"]},
        },
        "additionalProperties": False,
    },
    "NewChannelV2": {
        "type": "object",
        "required": ["channel_id", "tokens"],
        "properties": {"channel_id": {"type": "integer"}, "tokens": ref("TokenMap")},
        "additionalProperties": False,
    },
    "ChannelV2": {
        "type": "object",
        "required": ["channel_id", "tokens", "drains"],
        "properties": {
            "channel_id": {"type": "integer"},
            "tokens": {"type": "array", "items": ref("NamedToken")},
            "drains": {"type": "array", "items": ref("Drain")},
        },
        "additionalProperties": False,
    },
    "ChannelInfoV1": {
        "type": "object",
        "required": ["channel_id", "tokens", "drains"],
        "properties": {
            "channel_id": {"type": "integer"},
            "tokens": ref("TokenMap"),
            "drains": {"type": "array", "items": {"type": "string"}, "description": "Drain URLs."},
        },
        "additionalProperties": False,
    },
    "SessionUrl": {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "format": "uri"}},
        "additionalProperties": False,
    },
    "Permission": {"type": "string", "enum": ["any_channel", "full_api", "read_channel"]},
    "Credential": {
        "type": "object",
        "required": ["id", "perms", "note"],
        "properties": {
            "id": {"type": "string", "pattern": CREDENTIAL_ID_PATTERN},
            "perms": {"type": "array", "items": ref("Permission"), "minItems": 1},
            "note": {"type": "string"},
            "channels": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "What a read_channel credential may read; absent otherwise.",
            },
        },
        "additionalProperties": False,
    },
    "NewCredential": {
        "type": "object",
        "required": ["id", "perms", "note", "secret"],
        "properties": {
            "id": {"type": "string", "pattern": CREDENTIAL_ID_PATTERN},
            "perms": {"type": "array", "items": ref("Permission"), "minItems": 1},
            "note": {"type": "string"},
            "channels": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "secret": {"type": "string", "minLength": 1, "description": "Shown this once: only its hash is kept."},
        },
        "additionalProperties": False,
    },
    "Node": {
        "type": "object",
        "required": ["node", "version", "uptime", "api_url", "pid"],
        "properties": {
            "node": {"type": "string"},
            "version": {"type": "string"},
            "uptime": {"type": "number", "minimum": 0, "description": "Seconds."},
            "api_url": {"type": "string"},
            "pid": {"type": ["integer", "null"]},
            "shard_map_version": {"type": ["integer", "null"],
                                  "description": "The shard map version the node writes by (null: a node "
                                                 "that does not report it)."},
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "description": "What the node is doing and the state of each Redis it depends on, as its connection "
                       "pools know it (no Redis command is sent for a health check).",
        "required": ["status", "config_redis", "shards"],
        "properties": {
            "status": {
                "enum": ["normal", "degraded", "booting", "stopping", "ingress off"],
                "description": "normal: serving, every Redis up. degraded: serving (200) with the config "
                               "Redis or a shard down: routing to tails and drains goes on, backlog "
                               "writes to a down shard are retried within their bound. booting: the "
                               "configuration is not loaded yet or a listener is not bound yet (503). "
                               "stopping: the node got SIGTERM and closes its listeners after "
                               "--stop-grace seconds (503). ingress off: the admin shell switched log "
                               "ingress off (503).",
            },
            "config_redis": ref("RedisState"),
            "shards": {
                "type": "object",
                "description": "Each backlog shard by name (shard-0, shard-1, ...); empty until the "
                               "shard map is loaded.",
                "additionalProperties": ref("RedisState"),
            },
        },
        "additionalProperties": False,
    },
    "RedisState": {
        "enum": ["up", "down"],
        "description": "up: the node holds a connection to it that passed AUTH and SELECT.",
    },
    # -- request bodies (unknown members are ignored, so none forbids them) --
    "TokenList": {
        "type": ["array", "null"],
        "items": ref("TokenName"),
        "description": "Token names; null or absent is none. Repeated names count once.",
    },
    "PutChannelV3Body": {"type": "object", "properties": {"tokens": ref("TokenList")}},
    "CreateChannelV2Body": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Accepted for logplex's clients, and ignored."},
            "tokens": ref("TokenList"),
        },
    },
    "TokenBody": {"type": "object", "required": ["name"], "properties": {"name": ref("TokenName")}},
    "DrainUrlBody": {"type": "object", "required": ["url"], "properties": {"url": ref("DrainUrl")}},
    "NewDrainV3Body": {
        "type": "object",
        "properties": {
            "url": {
                "anyOf": [ref("DrainUrl"), {"type": "null"}],
                "description": "Without it (or null) the drain is reserved: an id and a token, no URL yet.",
            },
        },
    },
    "SessionBody": {
        "type": "object",
        "required": ["channel_id"],
        "properties": {
            "channel_id": {
                "anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}],
                "description": "The channel to read; an unknown channel is 422.",
            },
            "num": {
                "anyOf": [{"type": "integer"}, {"type": "string", "pattern": NUMBER_STRING_PATTERN},
                          {"type": "null"}],
                "description": "Backlog lines to send first (default 100, also for null), clamped to "
                               "0..--history. A numeric string is read as the number.",
            },
            "tail": {
                "description": "Stay open with live lines. Any value; false, null, \"false\", \"0\" and 0 "
                               "mean no.",
                "default": False,
            },
            "ps": {
                "type": ["string", "null"],
                "description": "Only this proc id, or the ids before a dot (web matches web.1).",
            },
            "source": {"type": ["string", "null"], "description": "Only this token name."},
        },
    },
    "CredentialBody": {
        "type": "object",
        "properties": {
            "perms": {
                "type": "array",
                "items": ref("Permission"),
                "minItems": 1,
                "default": ["full_api"],
            },
            "note": {"type": "string", "maxLength": 200, "default": ""},
            "channels": {
                "type": "array",
                "items": {"type": "string", "pattern": CHANNEL_ID_PATTERN},
                "description": "The channels a read_channel credential may read: required with "
                               "read_channel, refused without it. Each must exist: the grant is "
                               "for that channel, never a later one of the same name.",
            },
        },
        "if": {"required": ["perms"], "properties": {"perms": {"contains": {"const": "read_channel"}}}},
        "then": {"required": ["channels"], "properties": {"channels": {"minItems": 1}}},
        "else": {"properties": {"channels": {"maxItems": 0}}},
    },
}

# -- responses -------------------------------------------------------------------------------------------
REQUEST_ID = {"$ref": "#/components/headers/Request-Id"}


def json_content(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def answer(description: str, content: dict | None = None, headers: dict | None = None) -> dict:
    doc = {"description": description, "headers": {"Request-Id": REQUEST_ID, **(headers or {})}}
    if content is not None:
        doc["content"] = content
    return doc


def error(description: str, headers: dict | None = None) -> dict:
    return answer(description, json_content(ref("Error")), headers)


def text(description: str, media_type: str = "text/plain", headers: dict | None = None) -> dict:
    return answer(description, {media_type: {"schema": {"type": "string"}}}, headers)


RESPONSES = {
    "BadJson": error("The body is not JSON (or not UTF-8 JSON), or a member has the wrong type; on v3 (as "
                     "logplex's v3), also a body that is not an object, a token without a name, or a "
                     "drain URL that is not a URL."),
    "NotFound": error("No such channel, drain, credential or session."),
    "Conflict": error("The channel already has a drain to that URL."),
    "TooLarge": error("The body is larger than --max-json (64 KiB) or --max-body."),
    "Unprocessable": error("The body is not a JSON object, or a value is not acceptable."),
    "Unauthorized": error(
        "No credential, or not a valid one.",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Basic realm=Logplex"}}},
    ),
    "Forbidden": error("The credential lacks the full_api permission."),
    "TooManyLogins": error(
        "Too many failed logins from this client address (--login-failures a minute); nothing is "
        "checked until Retry-After seconds have passed.",
        {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    ),
    "Unavailable": error(
        "SYSTEM BOOTING: the node has not loaded its configuration yet; or the config Redis (or the "
        "channel's backlog shard) is not answering. Try again."
    ),
}


def use(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


# ASCII digits, at most 18 of them: ids, never numbers int() chokes on.
_NUMBER = r"[0-9]{1,18}"
# A v3 channel id is checked by the handler (422), so the router takes any segment.
CHANNEL = Param("channel", r"[^/]+", ref("ChannelId"), "A channel id.")
V2_CHANNEL = Param("channel", _NUMBER, {"type": "integer", "minimum": 0}, "An integer channel id (v1/v2).")
DRAIN = Param("drain", _NUMBER, ref("DrainId"), "A drain id.")
CREDENTIAL = Param("credential", CREDENTIAL_ID_PATTERN[1:-1], {"type": "string", "pattern": CREDENTIAL_ID_PATTERN},
                   "A credential id.")
SESSION = Param("session", SESSION_ID_PATTERN[1:-1], {"type": "string", "pattern": SESSION_ID_PATTERN},
                "The session id from the session URL.")


def operation(op_id: str, summary: str, tag: str, responses: dict, *, guarded: bool = True,
              body: str | None = None, body_required: bool = False, params: list | None = None,
              description: str | None = None, security: list | None = None) -> dict:
    """One operation; a guarded one also answers 401, 403, 429 and 503, one with a JSON body 400, 413
    and 422. (Path parameters are the route's: the document adds them.)

    A guarded operation without `security` of its own is behind the API's
    full_api guard, which the API puts in front of its handler; one with
    `security` checks its credential itself.
    """
    doc: dict = {"operationId": op_id, "summary": summary, "tags": [tag]}
    if description:
        doc["description"] = description
    if params:
        doc["parameters"] = params
    all_responses = dict(responses)
    if body is not None:
        doc["requestBody"] = {"required": body_required, "content": json_content(ref(body))}
        all_responses.setdefault("400", use("BadJson"))
        all_responses.setdefault("413", use("TooLarge"))
        all_responses.setdefault("422", use("Unprocessable"))
    if guarded:
        all_responses.setdefault("401", use("Unauthorized"))
        all_responses.setdefault("403", use("Forbidden"))
        all_responses.setdefault("429", use("TooManyLogins"))
        all_responses.setdefault("503", use("Unavailable"))
    if security is not None:
        doc["security"] = security
    elif not guarded:
        doc["security"] = []
    doc["responses"] = dict(sorted(all_responses.items()))
    return doc


OK_TEXT = text("Done: the body is OK.")
LOCATION = {"Location": {"required": True, "schema": {"type": "string", "format": "uri"}}}
