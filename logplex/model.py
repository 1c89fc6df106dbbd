"""The records logplex keeps in its config Redis: channels, tokens, drains, credentials, sessions."""

from __future__ import annotations

import json
import uuid

import attrs

# Permissions a credential can hold.
FULL_API = "full_api"
ANY_CHANNEL = "any_channel"
# Read (tail, backlog) only the channels named in the credential: for the
# browser tail page and for people who should see an app's logs, nothing more.
READ_CHANNEL = "read_channel"
PERMISSIONS = frozenset({FULL_API, ANY_CHANNEL, READ_CHANNEL})
# The port a syslog drain URL without one means, as in logplex: RFC 6587's and RFC 5425's.
SYSLOG_DEFAULT_PORTS = {"syslog": 601, "syslog+tls": 6514}

# Channel flags, as logplex's operators used them.
NO_TAIL = "no_tail"
NO_REDIS = "no_redis"
CHANNEL_FLAGS = frozenset({NO_TAIL, NO_REDIS})


def new_token_id() -> str:
    return "t." + str(uuid.uuid4())


def new_drain_token() -> str:
    return "d." + str(uuid.uuid4())


@attrs.frozen
class Channel:
    id: str
    flags: frozenset[str] = frozenset()

    def to_json(self) -> str:
        return json.dumps({"flags": sorted(self.flags)})

    @classmethod
    def from_json(cls, channel_id: str, data: bytes) -> Channel:
        doc = json.loads(data)
        return cls(id=channel_id, flags=frozenset(doc.get("flags", ())))


@attrs.frozen
class Token:
    id: str
    channel_id: str
    name: str

    def to_json(self) -> str:
        return json.dumps({"channel_id": self.channel_id, "name": self.name})

    @classmethod
    def from_json(cls, token_id: str, data: bytes) -> Token:
        doc = json.loads(data)
        return cls(id=token_id, channel_id=doc["channel_id"], name=doc["name"])


@attrs.frozen
class Drain:
    """A push destination; url is None while the drain is only reserved."""

    id: int
    channel_id: str
    token: str
    url: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"channel_id": self.channel_id, "token": self.token, "url": self.url}
        )

    @classmethod
    def from_json(cls, drain_id: int, data: bytes) -> Drain:
        doc = json.loads(data)
        return cls(
            id=drain_id, channel_id=doc["channel_id"], token=doc["token"], url=doc["url"]
        )

    def describe(self) -> dict:
        return {"id": self.id, "token": self.token, "url": self.url}


@attrs.frozen
class Credential:
    """An API user; secret_hash is a KDF string from logplex.secrets, never the secret."""

    id: str
    secret_hash: str
    perms: frozenset[str] = frozenset()
    note: str = ""
    channels: frozenset[str] = frozenset()  # what read_channel covers

    def to_json(self) -> str:
        return json.dumps({"hash": self.secret_hash, "perms": sorted(self.perms), "note": self.note,
                           "channels": sorted(self.channels)})

    @classmethod
    def from_json(cls, cred_id: str, data: bytes) -> Credential:
        doc = json.loads(data)
        return cls(
            id=cred_id,
            secret_hash=doc["hash"],
            perms=frozenset(doc.get("perms", ())),
            note=doc.get("note", ""),
            channels=frozenset(doc.get("channels", ())),
        )

    def has(self, perm: str) -> bool:
        return perm in self.perms

    def can_read(self, channel_id: str) -> bool:
        """Tail and read the backlog of this channel."""
        return FULL_API in self.perms or (READ_CHANNEL in self.perms and channel_id in self.channels)


@attrs.frozen
class SessionSpec:
    """What a session reads: a channel's backlog, optionally a live tail, with filters."""

    id: str
    channel_id: str
    num: int = 100
    tail: bool = False
    ps: str | None = None
    source: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "channel_id": self.channel_id,
                "num": self.num,
                "tail": self.tail,
                "ps": self.ps,
                "source": self.source,
            }
        )

    @classmethod
    def from_json(cls, session_id: str, data: bytes) -> SessionSpec:
        doc = json.loads(data)
        return cls(
            id=session_id,
            channel_id=doc["channel_id"],
            num=doc["num"],
            tail=doc["tail"],
            ps=doc["ps"],
            source=doc["source"],
        )
