"""The config Redis's writes: channels, tokens, drains, credentials and sessions, each one
atomic step (a Lua script of scripts/), and the re-seed of a config Redis that lost its data.

ConfigStore is the ConfigFeed (logplex.config.feed) that also writes: every write
refreshes this node's cache before it returns, so an API caller reads what it
just wrote on the same node; other nodes follow through the feed.
"""

from __future__ import annotations

import json
import uuid
from typing import Iterable

from twisted.internet import defer
from twisted.logger import Logger

from logplex import secrets
from logplex.config.cache import FOREIGN, OLDER
from logplex.config.feed import ConfigFeed
from logplex.errors import ConfigError, Conflict, NotFound, Unavailable
from logplex.model import (
    ANY_CHANNEL,
    FULL_API,
    Channel,
    Credential,
    Drain,
    SessionSpec,
    Token,
    new_drain_token,
    new_token_id,
)
from logplex.redis.address import RedisAddress
from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua
from logplex.settings import ApiSettings

log = Logger()


def _write_script(name: str) -> str:
    """A write of one channel: the names it touches, its announcement, then its own steps."""
    return lua("logplex.config", "names") + lua("logplex.config", "announce") + lua("logplex.config", name)


_ADD_DRAIN = _write_script("add_drain")
_SET_DRAIN_URL = _write_script("set_drain_url")
_DELETE_DRAIN = _write_script("delete_drain")
_PUT_CHANNEL = _write_script("put_channel")
_DELETE_CHANNEL = _write_script("delete_channel")
_SET_CHANNEL = _write_script("set_channel")
# A credential belongs to no channel: it announces itself.
_PUT_CRED = lua("logplex.config", "names") + lua("logplex.config", "put_credential")
_RESEED = lua("logplex.config", "reseed")
_UNLOCK = lua("logplex.config", "unlock")


class ConfigStore(ConfigFeed):
    """Writes go to the config Redis; reads come from the cache, which the feed keeps fresh.

    A write is refused (Unavailable) while the node refuses what the config
    Redis holds: it would land in a config the node does not follow.
    """

    def __init__(self, redis, address: RedisAddress, reactor, api: ApiSettings, *, keys: RedisKeys,
                 **feed) -> None:
        super().__init__(redis, address, reactor, keys=keys, **feed)
        self.max_drains = api.max_drains
        self.session_expiry = api.session_expiry
        self.reseed_lock_seconds = 10
        self._lock_value = uuid.uuid4().hex

    # -- one atomic step each ---------------------------------------------------
    def _writable(self) -> None:
        """Refuse a write (503) while the node refuses what the config Redis holds."""
        if self.refused is not None:
            raise Unavailable(self.refusal)

    def _eval(self, script: str, args: list, channel_id: str | None = None) -> defer.Deferred:
        """Run a config script; its KEYS are the names names.lua binds, those of channel_id's sets last."""
        if self.refused is not None:
            return defer.fail(Unavailable(self.refusal))
        k = self.keys
        names = [k.version, k.feed, k.channels, k.tokens, k.drains, k.creds]
        if channel_id is not None:
            names += [k.channel_tokens(channel_id), k.channel_drains(channel_id)]
        return self._call(self.redis.eval(script, names, [_arg(a) for a in args]))

    # -- re-seeding a config Redis this node refuses -----------------------------
    async def _reseed(self) -> None:
        """Write the cache back to the config Redis, if this node wins the re-seed lock.

        The script itself re-seeds only a Redis still without a cluster id, or
        with this cluster's and an older generation: a foreign config is never
        overwritten, and a node that loses the race changes nothing.
        """
        if self.refused == FOREIGN or self.held is None:
            return
        won = await self._call(self.redis.set(self.keys.reseed_lock, self._lock_value,
                                              expire=self.reseed_lock_seconds, only_if_not_exists=True))
        if not won:
            return  # another node re-seeds: its "reseeded" notification makes this one reload
        k, held = self.keys, self.held
        names = [k.cluster_id, k.epoch, k.version, k.feed, k.channels, k.tokens, k.drains, k.creds,
                 k.channel_seq, k.drain_seq]
        document = {"channels": [], "creds": [[c.id, c.to_json()] for c in self.cache.creds.values()],
                    "max_drain": max(self.cache.drains, default=0)}
        for channel in self.cache.channels.values():
            names += [k.channel_tokens(channel.id), k.channel_drains(channel.id)]
            document["channels"].append([
                channel.id, channel.to_json(),
                [[t.id, t.to_json()] for t in self.cache.channel_tokens.get(channel.id, {}).values()],
                [[str(d.id), d.to_json()] for d in self.cache.channel_drains.get(channel.id, {}).values()],
            ])
        replace = self.refused == OLDER
        if replace:
            # The sets of channels deleted since the snapshot go too (the drain limit counts them).
            present = {c.decode() for c in await self._call(self.redis.hkeys(k.channels))}
            for channel_id in sorted(present - set(self.cache.channels)):
                names += [k.channel_tokens(channel_id), k.channel_drains(channel_id)]
        args = [held.cluster_id, held.epoch, held.version, json.dumps(document), "1" if replace else "0"]
        outcome = (await self._call(self.redis.eval(_RESEED, names, [_arg(a) for a in args]))).decode()
        if outcome != "ok":
            log.info("config_reseed_skipped outcome={outcome}", outcome=outcome)
            # Nothing written: the next attempt (this node's or another's) need not wait for the expiry.
            await self._call(self.redis.eval(_UNLOCK, [k.reseed_lock], [self._lock_value]))
            return
        if self.metrics is not None:
            self.metrics.inc("logplex_config_reseeds_total")
        log.warn("config_reseeded reason={reason} channels={channels} tokens={tokens} drains={drains} "
                 "credentials={creds} note='sessions were not re-seeded: session URLs made before are gone'",
                 reason=self.refused, channels=len(self.cache.channels), tokens=len(self.cache.tokens),
                 drains=len(self.cache.drains), creds=len(self.cache.creds))
        # Adopt what was just written (a generation above any node's) at once.
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = self.reactor.callLater(0, self._retry_load)

    # -- channels and tokens --------------------------------------------------
    def channel(self, channel_id: str) -> Channel | None:
        return self.cache.channels.get(channel_id)

    def tokens_of(self, channel_id: str) -> list[Token]:
        return sorted(self.cache.channel_tokens.get(channel_id, {}).values(), key=lambda t: (t.name, t.id))

    def drains_of(self, channel_id: str) -> list[Drain]:
        return sorted(self.cache.channel_drains.get(channel_id, {}).values(), key=lambda d: d.id)

    async def create_channel_v2(self, token_names: list[str]) -> tuple[Channel, list[Token]]:
        """A channel with the next free integer id (v2 API)."""
        self._writable()
        while True:
            number = await self._call(self.redis.incr(self.keys.channel_seq))
            channel_id = str(int(number))
            tokens = [Token(new_token_id(), channel_id, n) for n in token_names]
            outcome = await self._put_channel(Channel.new(channel_id), tokens, [], create_only=True)
            if outcome != "exists":
                return self.cache.channels[channel_id], tokens

    async def put_channel(self, channel_id: str, token_names: list[str]) -> bool:
        """Create or update a v3 channel so that its tokens are exactly token_names.

        Tokens whose name is kept keep their value; returns True when created.
        """
        self._writable()
        await self.refresh_channel(channel_id)
        current = self.cache.channel_tokens.get(channel_id, {})
        wanted = set(token_names)
        have = {t.name for t in current.values()}
        add = [Token(new_token_id(), channel_id, n) for n in sorted(wanted - have)]
        remove = [t.id for t in current.values() if t.name not in wanted]
        outcome = await self._put_channel(Channel.new(channel_id), add, remove, create_only=False)
        return outcome == "created"

    async def _put_channel(
        self, channel: Channel, add: list[Token], remove: list[str], *, create_only: bool
    ) -> str:
        """Add and remove tokens; `channel` is written only if no channel of its name exists,
        so it must be a new one (Channel.new): never an old incarnation brought back."""
        args = [channel.id, channel.to_json(), "1" if create_only else "0"]
        for t in add:
            args += [t.id, t.to_json()]
        args.append("--")
        args += remove
        outcome = (await self._eval(_PUT_CHANNEL, args, channel.id)).decode()
        if outcome != "exists":
            await self.refresh_channel(channel.id)
        return outcome

    async def set_channel_flags(self, channel_id: str, flags: frozenset[str]) -> None:
        current = self.cache.channels.get(channel_id)
        if current is None:
            raise NotFound(f"Channel {channel_id} does not exist.")
        changed = Channel(channel_id, flags, current.incarnation)
        outcome = await self._eval(_SET_CHANNEL, [channel_id, changed.to_json(), current.incarnation],
                                   channel_id)
        if outcome == b"nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")
        await self.refresh_channel(channel_id)

    async def delete_channel(self, channel_id: str) -> None:
        drain_ids = list(self.cache.channel_drains.get(channel_id, {}))
        outcome = await self._eval(_DELETE_CHANNEL, [channel_id], channel_id)
        if outcome == b"ok":
            # Before the refresh: the spools go with the drains (the feed says so to the others).
            for drain_id in drain_ids:
                self._tombstone(drain_id)
        await self.refresh_channel(channel_id)
        if outcome == b"nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")

    async def add_token(self, channel_id: str, name: str) -> Token:
        if channel_id not in self.cache.channels:
            await self.refresh_channel(channel_id)
            if channel_id not in self.cache.channels:
                raise NotFound(f"Channel {channel_id} does not exist.")
        token = Token(new_token_id(), channel_id, name)
        await self._put_channel(Channel.new(channel_id), [token], [], create_only=False)
        return token

    # -- drains -----------------------------------------------------------------
    async def add_drain(self, channel_id: str, url: str | None) -> Drain:
        """Create a drain, or reserve an id and token for one when url is None."""
        self._writable()
        drain_id = int(await self._call(self.redis.incr(self.keys.drain_seq)))
        drain = Drain(drain_id, channel_id, new_drain_token(), url)
        outcome = (
            await self._eval(
                _ADD_DRAIN,
                [channel_id, drain_id, drain.to_json(), url or "", self.max_drains],
                channel_id,
            )
        ).decode()
        if outcome == "nochannel":
            raise NotFound(f"Channel {channel_id} does not exist.")
        if outcome == "max":
            raise ConfigError(
                f"Channel {channel_id} already has the maximum of {self.max_drains} drains."
            )
        if outcome == "dup":
            raise Conflict(f"Channel {channel_id} already has a drain to that URL.")
        await self.refresh_channel(channel_id)
        return drain

    async def set_drain_url(self, channel_id: str, drain_id: int, url: str) -> Drain:
        outcome = (await self._eval(_SET_DRAIN_URL, [channel_id, drain_id, url], channel_id)).decode()
        if outcome == "nodrain":
            raise NotFound(f"Channel {channel_id} has no drain {drain_id}.")
        if outcome == "dup":
            raise Conflict(f"Channel {channel_id} already has a drain to that URL.")
        await self.refresh_channel(channel_id)
        return self.cache.drains[drain_id]

    async def delete_drain(self, channel_id: str, drain_id: int) -> None:
        outcome = await self._eval(_DELETE_DRAIN, [channel_id, drain_id], channel_id)
        if outcome == b"nodrain":
            raise NotFound(f"Channel {channel_id} has no drain {drain_id}.")
        self._tombstone(drain_id)  # before the refresh that stops its worker
        await self.refresh_channel(channel_id)

    # -- credentials ----------------------------------------------------------------
    async def put_credential(self, cred: Credential) -> None:
        await self._eval(_PUT_CRED, [cred.id, cred.to_json()])
        self.cache.set_credential(cred.id, cred)

    async def create_credential(
        self, perms: Iterable[str] = (FULL_API,), note: str = "", cred_id: str | None = None,
        secret: str | None = None, channels: Iterable[Channel] = (),
    ) -> tuple[Credential, str]:
        """A new credential; read_channel grants name `channels` by identity, not only by name."""
        channels = list(channels)
        secret = secret or secrets.new_secret()
        cred = Credential(
            id=cred_id or uuid.uuid4().hex,
            secret_hash=secrets.hash_secret(secret),
            perms=frozenset(perms),
            note=note,
            channels=frozenset(c.id for c in channels),
            incarnations=frozenset((c.id, c.incarnation) for c in channels),
        )
        await self.put_credential(cred)
        return cred, secret

    async def ensure_credential(self, cred_id: str, secret: str) -> None:
        """The --auth credential: exists with this secret, full_api and any_channel.

        Written only over what was read: workers (or nodes) that start together
        with the same --auth keep the first one's hash, so a login another worker
        is checking is not refused because the hash it checks was replaced.
        """
        self._writable()
        perms = frozenset({FULL_API, ANY_CHANNEL})
        while True:
            raw = await self._call(self.redis.hget(self.keys.creds, cred_id))
            if raw:
                cred = Credential.from_json(cred_id, raw)
                if perms <= cred.perms and secrets.check_secret(secret, cred.secret_hash):
                    self.cache.set_credential(cred_id, cred)
                    return
            cred = Credential(id=cred_id, secret_hash=secrets.hash_secret(secret), perms=perms, note="--auth")
            if await self._eval(_PUT_CRED, [cred_id, cred.to_json(), raw or ""]) == b"ok":
                self.cache.set_credential(cred_id, cred)
                return

    async def delete_credential(self, cred_id: str) -> None:
        outcome = await self._eval(_PUT_CRED, [cred_id, ""])
        self.cache.set_credential(cred_id, None)
        if outcome == b"nocred":
            raise NotFound(f"Credential {cred_id} does not exist.")

    # -- sessions -------------------------------------------------------------------------
    async def create_session(self, spec: SessionSpec) -> None:
        await self._call(
            self.redis.set(self.keys.session(spec.id), spec.to_json(), expire=self.session_expiry)
        )

    async def session(self, session_id: str) -> SessionSpec | None:
        raw = await self._call(self.redis.get(self.keys.session(session_id)))
        return SessionSpec.from_json(session_id, raw) if raw else None


def _arg(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
