"""The one place that spells a Redis key or pub/sub channel name: a cluster's key schema.

Every key starts with the cluster's namespace (``--namespace``, default
``lp``), so clusters with different namespaces share a Redis db without
meeting. Keys need no db number (the db already separates them), but
pub/sub ignores the db: every channel name carries it, except db 0's,
which keep the names of the versions before namespaces existed
(``lp:config``, ``lp:tail:ID``), so a rolling upgrade of a cluster on db 0
never splits its feed or its tails.
"""

from __future__ import annotations

import re

import attrs

NAMESPACE_RULE = re.compile(r"[A-Za-z0-9_-]{1,32}")

# The sentinels' own pub/sub channels (Redis names them, not the cluster): a
# replica being promoted, and a service's new primary.
SENTINEL_PROMOTING = b"+failover-state-send-slaveof-noone"
SENTINEL_SWITCHED = b"+switch-master"


class BadNamespace(ValueError):
    """A namespace that is not 1-32 letters, digits, '_' or '-'."""


def check_namespace(namespace: str) -> str:
    """The namespace if it is valid; otherwise a BadNamespace that says what is allowed."""
    if not isinstance(namespace, str) or not NAMESPACE_RULE.fullmatch(namespace):
        raise BadNamespace(
            f"The namespace {namespace!r} is not valid: use 1 to 32 letters, digits, '_' or '-' "
            "(e.g. lp, staging, team-a).")
    return namespace


def _valid_namespace(instance, attribute, value) -> None:
    check_namespace(value)


def _valid_db(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"A Redis db number is a whole number of 0 or more, not {value!r}.")


@attrs.frozen
class RedisKeys:
    """The key and channel names of one cluster: its namespace, on its config Redis's db."""

    namespace: str = attrs.field(validator=_valid_namespace)
    # The config Redis's db: the pub/sub channels (feed, tail bus) live there.
    db: int = attrs.field(validator=_valid_db)
    _key_prefix: bytes = attrs.field(init=False, repr=False, eq=False)
    _channel_prefix: bytes = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        key_prefix = self.namespace.encode() + b":"
        # A namespace has no ':', and no name after a prefix starts with a digit
        # then ':', so "lp:3:config" (db 3) can never be a db 0 channel's name.
        channel_prefix = key_prefix if self.db == 0 else key_prefix + b"%d:" % self.db
        object.__setattr__(self, "_key_prefix", key_prefix)
        object.__setattr__(self, "_channel_prefix", channel_prefix)

    # -- the config Redis: tenants' config ---------------------------------------------
    @property
    def channels(self) -> bytes:
        """Hash: channel id -> channel JSON."""
        return self._key_prefix + b"channels"

    @property
    def tokens(self) -> bytes:
        """Hash: token -> token JSON."""
        return self._key_prefix + b"tokens"

    @property
    def drains(self) -> bytes:
        """Hash: drain id -> drain JSON."""
        return self._key_prefix + b"drains"

    @property
    def creds(self) -> bytes:
        """Hash: credential id -> credential JSON."""
        return self._key_prefix + b"creds"

    @property
    def version(self) -> bytes:
        """Counter bumped by every config write."""
        return self._key_prefix + b"version"

    @property
    def channel_seq(self) -> bytes:
        """Counter of v2 channel ids."""
        return self._key_prefix + b"seq:channel"

    @property
    def drain_seq(self) -> bytes:
        """Counter of drain ids."""
        return self._key_prefix + b"seq:drain"

    def channel_tokens(self, channel_id: str) -> bytes:
        """Set: the tokens of a channel."""
        return self._key_prefix + b"chtok:" + channel_id.encode()

    def channel_drains(self, channel_id: str) -> bytes:
        """Set: the drain ids of a channel."""
        return self._key_prefix + b"chdrain:" + channel_id.encode()

    def session(self, session_id: str) -> bytes:
        """String with an expiry: a session URL's spec."""
        return self._key_prefix + b"session:" + session_id.encode()

    # -- the config Redis: the cluster itself --------------------------------------------
    @property
    def shards(self) -> bytes:
        """Hash: shard name -> Redis URL."""
        return self._key_prefix + b"shards"

    @property
    def tailing(self) -> bytes:
        """Hash: node|channel -> expiry of that node's tail interest."""
        return self._key_prefix + b"tailing"

    @staticmethod
    def tail_interest(node: str, channel_id: str) -> str:
        """A field of `tailing`: one node's interest in one channel."""
        return f"{node}|{channel_id}"

    @staticmethod
    def interest_of(field: bytes) -> tuple[str, str]:
        """(node, channel id) of a field of `tailing`."""
        node, _, channel_id = field.decode().partition("|")
        return node, channel_id

    @property
    def nodes(self) -> bytes:
        """Hash: node name -> heartbeat JSON."""
        return self._key_prefix + b"nodes"

    # -- shards: backlogs and drain spools -------------------------------------------------
    def backlog(self, channel_id: str) -> bytes:
        """List, newest first: a channel's backlog."""
        return self.backlog_prefix + channel_id.encode()

    def backlog_writes(self, writer: str) -> bytes:
        """Hash of one backlog writer's script calls not known to be answered (call id -> 1)."""
        return self._key_prefix + b"writes:" + writer.encode()

    @property
    def backlog_prefix(self) -> bytes:
        """What a backlog's key is before the channel id (UTF-8)."""
        return self._key_prefix + b"log:"

    @property
    def backlog_pattern(self) -> bytes:
        """SCAN pattern of every backlog of this namespace."""
        # A namespace has no glob character: the prefix matches itself.
        return self._key_prefix + b"log:*"

    def channel_of_backlog(self, key: bytes) -> str | None:
        """The channel id of a backlog key; None for another key."""
        prefix = self._key_prefix + b"log:"
        return key[len(prefix):].decode() if key.startswith(prefix) else None

    def spool(self, drain_id: int, node: str) -> bytes:
        """List of chunks: what a node could not deliver to a drain yet."""
        return self._key_prefix + b"spool:%d:%s" % (drain_id, node.encode())

    @staticmethod
    def spool_meta(spool_key: bytes) -> bytes:
        """Hash next to a spool: its bytes and messages."""
        return spool_key + b":meta"

    @property
    def spool_pattern(self) -> bytes:
        """SCAN pattern of every spool (and spool meta) key of this namespace."""
        return self._key_prefix + b"spool:*"

    def drain_of_spool(self, key: bytes) -> int | None:
        """The drain id of a spool list key; None for its meta hash or another key."""
        prefix = self._key_prefix + b"spool:"
        if not key.startswith(prefix) or key.endswith(b":meta"):
            return None
        drain_id, sep, _node = key[len(prefix):].partition(b":")
        return int(drain_id) if sep and drain_id.isdigit() else None

    # -- pub/sub channels (on the config Redis; named with its db) ----------------------------
    @property
    def feed(self) -> bytes:
        """The change feed: config writes, tail interest and shard map changes."""
        return self._channel_prefix + b"config"

    def tail(self, channel_id: str) -> bytes:
        """The tail bus of one channel: its lines, for the nodes that tail it."""
        return self._channel_prefix + b"tail:" + channel_id.encode()

    def channel_of_tail(self, name: bytes) -> str | None:
        """The channel id of a tail bus channel name; None for another name."""
        prefix = self._channel_prefix + b"tail:"
        return name[len(prefix):].decode() if name.startswith(prefix) else None


    # -- the config Redis: the shard map's version and its merge in progress -----------------
    @property
    def shard_map_version(self) -> bytes:
        """Counter bumped by every change of the shard map (absent: version 0)."""
        return self._key_prefix + b"shardmap:version"

    @property
    def shard_merge(self) -> bytes:
        """Hash: the merge a shard map change still owes (plan JSON, version); absent when none."""
        return self._key_prefix + b"shardmap:merge"

    def moved_mark(self, key: bytes) -> bytes:
        """String with an expiry, next to a backlog or spool moved onto a shard: which move
        wrote it there, so that a move resumed after a crash never copies it twice."""
        return self._key_prefix + b"moved:" + key

    # -- the config Redis: spool adoption (a departed node's spools) --------------------------
    @property
    def spoolers(self) -> bytes:
        """Set: the names of the nodes that ever spooled (and whose spools were not all adopted)."""
        return self._key_prefix + b"spoolers"

    def spooled_drains(self, node: str) -> bytes:
        """Set: the drain ids a node spooled for (where to look for its spools)."""
        return self._key_prefix + b"spooled:" + node.encode()

    def adoption_lease(self, node: str) -> bytes:
        """String with an expiry: the name of the node adopting this departed node's spools."""
        return self._key_prefix + b"adopting:" + node.encode()
    # -- the config Redis: its identity and generation (issue 15) -------------------------------
    @property
    def cluster_id(self) -> bytes:
        """String: the cluster's random id, set by the first node that finds the config Redis without one."""
        return self._key_prefix + b"cluster"

    @property
    def epoch(self) -> bytes:
        """Counter bumped by every re-seed: with the version, the config's generation."""
        return self._key_prefix + b"epoch"

    @property
    def reseed_lock(self) -> bytes:
        """String with an expiry: the node re-seeding the config Redis from its cache."""
        return self._key_prefix + b"reseed-lock"
