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


# Most channels have no flags: one shared empty set rather than one per channel.
_NO_FLAGS: frozenset[str] = frozenset()


def new_token_id() -> str:
    return "t." + str(uuid.uuid4())


def new_drain_token() -> str:
    return "d." + str(uuid.uuid4())


# The incarnation of a channel stored before channels had one: a stable
# default, so such a channel, its sessions and the grants naming it keep
# matching each other until the channel is deleted. A channel made since
# always has a random incarnation, never this one.
LEGACY_INCARNATION = ""


def new_incarnation() -> str:
    return uuid.uuid4().hex


@attrs.frozen
class Channel:
    """A channel; its id is a name a new owner may take after a DELETE, its
    incarnation is what tells this channel from every other of that name."""

    id: str
    flags: frozenset[str] = frozenset()
    incarnation: str = LEGACY_INCARNATION

    @classmethod
    def new(cls, channel_id: str) -> Channel:
        """A channel about to be made: an incarnation no other channel had."""
        return cls(id=channel_id, incarnation=new_incarnation())

    def to_json(self) -> str:
        doc: dict = {"flags": sorted(self.flags)}
        if self.incarnation != LEGACY_INCARNATION:
            doc["incarnation"] = self.incarnation
        return json.dumps(doc)

    @classmethod
    def from_json(cls, channel_id: str, data: bytes) -> Channel:
        return cls.from_doc(channel_id, json.loads(data))

    @classmethod
    def from_doc(cls, channel_id: str, doc: dict) -> Channel:
        """From a record already decoded (a config load decodes a whole page of them at once)."""
        flags = doc.get("flags")
        return cls(channel_id, frozenset(flags) if flags else _NO_FLAGS,
                   doc.get("incarnation") or LEGACY_INCARNATION)

    def is_doc(self, doc: dict) -> bool:
        """Whether from_doc(self.id, doc) would give this very record (without making one)."""
        flags = doc.get("flags")
        return (self.incarnation == (doc.get("incarnation") or LEGACY_INCARNATION)
                and (self.flags == frozenset(flags) if flags else not self.flags))


@attrs.frozen
class Token:
    id: str
    channel_id: str
    name: str

    def to_json(self) -> str:
        return json.dumps({"channel_id": self.channel_id, "name": self.name})

    @classmethod
    def from_json(cls, token_id: str, data: bytes) -> Token:
        return cls.from_doc(token_id, json.loads(data))

    @classmethod
    def from_doc(cls, token_id: str, doc: dict) -> Token:
        return cls(token_id, doc["channel_id"], doc["name"])

    def is_doc(self, doc: dict) -> bool:
        """Whether from_doc(self.id, doc) would give this very record (without making one)."""
        return self.channel_id == doc["channel_id"] and self.name == doc["name"]


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
        return cls.from_doc(drain_id, json.loads(data))

    @classmethod
    def from_doc(cls, drain_id: int, doc: dict) -> Drain:
        return cls(drain_id, doc["channel_id"], doc["token"], doc["url"])

    def is_doc(self, doc: dict) -> bool:
        """Whether from_doc(self.id, doc) would give this very record (without making one)."""
        return self.channel_id == doc["channel_id"] and self.token == doc["token"] and self.url == doc["url"]

    def describe(self) -> dict:
        return {"id": self.id, "token": self.token, "url": self.url}


def _named(pairs) -> frozenset[tuple[str, str]]:
    return frozenset((name, inc) for name, inc in pairs if inc != LEGACY_INCARNATION)


@attrs.frozen
class Credential:
    """An API user; secret_hash is a KDF string from logplex.secrets, never the secret."""

    id: str
    secret_hash: str
    perms: frozenset[str] = frozenset()
    note: str = ""
    channels: frozenset[str] = frozenset()  # what read_channel covers, by name
    # (name, incarnation) of the channels granted: a grant reads the channel
    # it was made for, never a later one of the same name. A name missing
    # here (a grant stored before channels had an identity) is LEGACY_INCARNATION,
    # which is why it is never kept here: one record, one way to say it.
    incarnations: frozenset[tuple[str, str]] = attrs.field(default=frozenset(), converter=_named)

    def to_json(self) -> str:
        doc = {"hash": self.secret_hash, "perms": sorted(self.perms), "note": self.note,
               "channels": sorted(self.channels)}
        if self.incarnations:
            doc["incarnations"] = dict(sorted(self.incarnations))
        return json.dumps(doc)

    @classmethod
    def from_json(cls, cred_id: str, data: bytes) -> Credential:
        return cls.from_doc(cred_id, json.loads(data))

    @classmethod
    def from_doc(cls, cred_id: str, doc: dict) -> Credential:
        return cls(
            id=cred_id,
            secret_hash=doc["hash"],
            perms=frozenset(doc.get("perms", ())),
            note=doc.get("note", ""),
            channels=frozenset(doc.get("channels", ())),
            incarnations=frozenset((doc.get("incarnations") or {}).items()),
        )

    def has(self, perm: str) -> bool:
        return perm in self.perms

    def granted(self, channel_id: str) -> str | None:
        """The incarnation of the channel of this name that read_channel grants, or None."""
        if READ_CHANNEL not in self.perms or channel_id not in self.channels:
            return None
        return dict(self.incarnations).get(channel_id, LEGACY_INCARNATION)

    def may_read_name(self, channel_id: str) -> bool:
        """Whether some channel of this name was ever granted: a 403 rather than a 404 otherwise."""
        return FULL_API in self.perms or self.granted(channel_id) is not None

    def can_read(self, channel: Channel) -> bool:
        """Tail and read the backlog of this channel: the one granted, not only one of its name."""
        return FULL_API in self.perms or self.granted(channel.id) == channel.incarnation


@attrs.frozen
class SessionSpec:
    """What a session reads: a channel's backlog, optionally a live tail, with filters."""

    id: str
    channel_id: str
    num: int = 100
    tail: bool = False
    ps: str | None = None
    source: str | None = None
    # The channel's incarnation when the session was made: a session never
    # reads a later channel of the same name.
    incarnation: str = LEGACY_INCARNATION

    def to_json(self) -> str:
        doc = {
            "channel_id": self.channel_id,
            "num": self.num,
            "tail": self.tail,
            "ps": self.ps,
            "source": self.source,
        }
        if self.incarnation != LEGACY_INCARNATION:
            doc["incarnation"] = self.incarnation
        return json.dumps(doc)

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
            incarnation=doc.get("incarnation") or LEGACY_INCARNATION,
        )

    def reads(self, channel: Channel) -> bool:
        """Whether this session was made for this channel, not an earlier one of its name."""
        return channel.id == self.channel_id and channel.incarnation == self.incarnation
