"""The config Redis: atomic writes of channels, tokens, drains, credentials and sessions,
and every node's in-memory copy of them, kept fresh by a change feed."""

from __future__ import annotations

import gc
import json
import time
import uuid
from collections import deque
from typing import Callable, Iterable, Iterator

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from logplex import secrets
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
from logplex.redis.subscription import Subscription
from logplex.redis.connection import RedisAddress
from logplex.redis.keys import RedisKeys
from logplex.redis.scripts import lua
from logplex.errors import ConfigError, Conflict, NotFound, Unavailable

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
_PAGE = lua("logplex.config", "page")
_UNLOCK = lua("logplex.config", "unlock")


# Why a node refuses what the config Redis holds, as config_refused logs it.
EMPTY = "empty"
FOREIGN = "foreign"
OLDER = "older"


@attrs.frozen
class Generation:
    """What identifies a config: its cluster's id, and how far it got (re-seeds, then writes)."""

    cluster_id: bytes | None
    epoch: int = 0
    version: int = 0

    @property
    def rank(self) -> tuple[int, int]:
        return (self.epoch, self.version)

    def describe(self) -> str:
        return f"{self.epoch}.{self.version}"


def judge(held: Generation | None, found: Generation) -> str | None:
    """None when a node holding `held` may adopt the config `found`; otherwise why not.

    A node that holds nothing yet adopts anything (the first node seeds the
    cluster id before it reads). A node that holds a config never adopts one
    without a cluster id (a config Redis that lost its data), another
    cluster's, or an older one (a restore of an old snapshot): it would
    forget every channel, token, drain and credential at once.
    """
    if held is None or held.cluster_id is None:
        return None
    if found.cluster_id is None:
        return EMPTY
    if found.cluster_id != held.cluster_id:
        return FOREIGN
    if found.rank < held.rank:
        return OLDER
    return None


def refusal_sentence(reason: str, held: Generation, found: Generation) -> str:
    """What a refused write answers: what the config Redis holds and what happens next."""
    what = {
        EMPTY: "has lost the cluster's config (it holds no cluster id: restarted without its data?)",
        FOREIGN: f"holds another cluster's config (cluster id {(found.cluster_id or b'').decode()!r}, "
                 f"this node's is {(held.cluster_id or b'').decode()!r})",
        OLDER: f"holds an older config (generation {found.describe()}, this node holds {held.describe()})",
    }[reason]
    then = ("; a node re-seeds it from its copy within seconds, then writes work again"
            if reason != FOREIGN else
            "; check --config-redis and --namespace, or move the other cluster's keys away")
    return (f"The config Redis {what}. This node keeps routing with the config it holds and "
            f"refuses changes until then{then}.")


# The fields a Snapshot holds, in the order a swap moves them.
_VIEWS = ("channels", "tokens", "routes", "drains", "creds", "channel_tokens", "channel_drains", "flagged")


class Snapshot:
    """A whole config, indexed the ways the hot path reads it; no I/O here.

    The cache is one. A load changes it in one step, or brings a copy in line to
    the side and swaps it in at once: a reader never sees half a config.
    """

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        # Keyed by the token as bytes: the router looks tokens up straight
        # from APP-NAME without decoding.
        self.tokens: dict[bytes, Token] = {}
        # token -> (channel id, token name as bytes): what routing needs, ready-made.
        self.routes: dict[bytes, tuple[str, bytes]] = {}
        self.drains: dict[int, Drain] = {}
        self.creds: dict[str, Credential] = {}
        self.channel_tokens: dict[str, dict[str, Token]] = {}
        self.channel_drains: dict[str, dict[int, Drain]] = {}
        # The channels with flags (no_redis, no_tail …) and theirs: few, and the
        # router looks up only these instead of every channel of every read.
        self.flagged: dict[str, frozenset[str]] = {}

    def set_channel(self, channel_id: str, channel: Channel) -> None:
        """Hold this channel record (a new one, or a new version of one held)."""
        self.channels[channel_id] = channel
        if channel.flags:
            self.flagged[channel_id] = channel.flags
        else:
            self.flagged.pop(channel_id, None)

    def copy_from(self, other: Snapshot) -> Iterator[None]:
        """Become a copy of `other` that shares its records and per-channel dicts (never changed
        in place: a change replaces them): one C-speed copy of each index, one per turn.

        Between turns `other` may change (a refresh): whoever copies a cache watches it
        and carries what changed into the copy (ConfigCache.swap).
        """
        for name in _VIEWS:
            setattr(self, name, dict(getattr(other, name)))
            yield

    def add_token(self, t: Token) -> None:
        """Add a token of a channel this snapshot holds; a token of any other is left out."""
        if t.channel_id not in self.channels:
            return
        key = t.id.encode()
        self.tokens[key] = t
        self.routes[key] = (t.channel_id, t.name.encode())
        toks = self.channel_tokens.get(t.channel_id)
        if toks is None:
            self.channel_tokens[t.channel_id] = {t.id: t}
        else:
            toks[t.id] = t

    def add_drain(self, d: Drain) -> None:
        """Add a drain of a channel this snapshot holds; a drain of any other is left out."""
        if d.channel_id not in self.channels:
            return
        self.drains[d.id] = d
        drains = self.channel_drains.get(d.channel_id)
        if drains is None:
            self.channel_drains[d.channel_id] = {d.id: d}
        else:
            drains[d.id] = d

    # -- changed one record at a time (a refresh) ---------------------------------
    def replace_channel(
        self, channel_id: str, channel: Channel | None, tokens: Iterable[Token],
        drains: Iterable[Drain],
    ) -> bool:
        """Replace one channel with its tokens and drains; True when its drains changed."""
        for t in self.channel_tokens.pop(channel_id, {}).values():
            self.tokens.pop(t.id.encode(), None)
            self.routes.pop(t.id.encode(), None)
        old_drains = self.channel_drains.pop(channel_id, {})
        for d in old_drains.values():
            self.drains.pop(d.id, None)
        if channel is None:
            self.channels.pop(channel_id, None)
            self.flagged.pop(channel_id, None)
            return bool(old_drains)
        self.set_channel(channel_id, channel)
        toks = {t.id: t for t in tokens}
        if toks:
            self.channel_tokens[channel_id] = toks
            for t in toks.values():
                self.tokens[t.id.encode()] = t
                self.routes[t.id.encode()] = (channel_id, t.name.encode())
        new_drains = {d.id: d for d in drains}
        if new_drains:
            self.channel_drains[channel_id] = new_drains
            self.drains.update(new_drains)
        return new_drains != old_drains

    def set_credential(self, cred_id: str, cred: Credential | None) -> None:
        if cred is None:
            self.creds.pop(cred_id, None)
        else:
            self.creds[cred_id] = cred


def _page_items(page: bytes, what: str) -> list:
    """The key, record, key, record… of one page; a record that is not a JSON object is refused."""
    try:
        flat = json.loads(page)
        if len(flat) % 2 or not all(type(doc) is dict for doc in flat[1::2]):
            raise ValueError("not pairs of a key and a JSON object")
    except ValueError as e:
        raise ConfigError(
            f"The config Redis's {what} hash holds a record this node cannot read ({e}); "
            f"fix or delete that record, and the node loads the config again within a second.") from None
    return flat


class SnapshotDiff:
    """What the config Redis holds that the cache does not, read page by page; no I/O here.

    Reading compares each record with the cache's and keeps only those that
    differ, so a reload of an unchanged config allocates almost nothing: it
    neither costs memory nor wakes the garbage collector (whose full pass over
    100,000 channels takes longer than the reactor may stall). apply() then
    brings a snapshot in line: the cache itself in one step when few records
    changed, or a copy to be swapped in, a slice at a time, when many did.

    Feed it every page (channels first, then tokens, drains, credentials: any
    order works), then gone(); each method yields after every `per_slice`
    records, and whoever drives it decides when to give the reactor back.
    """

    def __init__(self, base: Snapshot, per_slice: int = 500) -> None:
        self.base = base
        self.per_slice = per_slice
        self._seen_channels: set[str] = set()
        self._seen_tokens: set[bytes] = set()
        self._seen_drains: set[int] = set()
        self._seen_creds: set[str] = set()
        # Records that differ from the base's (None: gone from the config Redis).
        self.channels: dict[str, Channel | None] = {}
        self.tokens: dict[bytes, Token | None] = {}
        self.drains: dict[int, Drain | None] = {}
        self.creds: dict[str, Credential | None] = {}
        # Filled by apply(), for the listeners: what the snapshot held before of the
        # channels replaced or gone, and of the channels whose drains changed.
        self.old_channels: dict[str, Channel | None] = {}
        self.old_drains: dict[str, dict[int, Drain] | None] = {}
        self._own_tokens: set[str] = set()
        self._own_drains: set[str] = set()
        self.records = 0  # records taken from pages so far (a test counts them per turn)

    def __len__(self) -> int:
        return len(self.channels) + len(self.tokens) + len(self.drains) + len(self.creds)

    # -- reading ------------------------------------------------------------------
    def _slices(self, page: bytes, what: str) -> Iterator[list]:
        flat = _page_items(page, what)
        step = 2 * self.per_slice
        for start in range(0, len(flat), step):
            part = flat[start:start + step]
            self.records += len(part) // 2
            yield list(zip(part[::2], part[1::2]))

    def read_channels(self, page: bytes) -> Iterator[None]:
        held, seen, changed, from_doc = self.base.channels, self._seen_channels, self.channels, Channel.from_doc
        for part in self._slices(page, "channels"):
            for channel_id, doc in part:
                seen.add(channel_id)
                # Most records are unchanged: compared as read, made only when they differ.
                record = held.get(channel_id)
                if record is None or not record.is_doc(doc):
                    changed[channel_id] = from_doc(channel_id, doc)
            yield

    def read_tokens(self, page: bytes) -> Iterator[None]:
        held, seen, changed, from_doc = self.base.tokens, self._seen_tokens, self.tokens, Token.from_doc
        for part in self._slices(page, "tokens"):
            for token_id, doc in part:
                key = token_id.encode()
                seen.add(key)
                record = held.get(key)
                if record is None or not record.is_doc(doc):
                    changed[key] = from_doc(token_id, doc)
            yield

    def read_drains(self, page: bytes) -> Iterator[None]:
        held, seen, changed, from_doc = self.base.drains, self._seen_drains, self.drains, Drain.from_doc
        for part in self._slices(page, "drains"):
            for drain_id, doc in part:
                drain_id = int(drain_id)
                seen.add(drain_id)
                record = held.get(drain_id)
                if record is None or not record.is_doc(doc):
                    changed[drain_id] = from_doc(drain_id, doc)
            yield

    def read_creds(self, page: bytes) -> Iterator[None]:
        held, seen, changed, from_doc = self.base.creds, self._seen_creds, self.creds, Credential.from_doc
        for part in self._slices(page, "creds"):
            for cred_id, doc in part:
                seen.add(cred_id)
                cred = from_doc(cred_id, doc)
                if held.get(cred_id) != cred:
                    changed[cred_id] = cred
            yield

    def gone(self) -> Iterator[None]:
        """After every page: what the base holds and no page did is gone."""
        base = self.base
        for held, seen, changed in ((base.channels, self._seen_channels, self.channels),
                                    (base.tokens, self._seen_tokens, self.tokens),
                                    (base.drains, self._seen_drains, self.drains),
                                    (base.creds, self._seen_creds, self.creds)):
            keys = list(held)  # the base may change between slices (refreshes): walk a copy
            yield
            for start in range(0, len(keys), self.per_slice):
                for key in keys[start:start + self.per_slice]:
                    if key not in seen:
                        changed[key] = None
                yield
            # Freed a slice at a time too: 100,000 keys take milliseconds to free.
            while seen:
                for _ in range(min(len(seen), 10 * self.per_slice)):
                    seen.pop()
                yield

    # -- applying -------------------------------------------------------------------
    def apply(self, target: Snapshot) -> Iterator[None]:
        """Bring `target` (the base, or a copy of it) in line with the pages read.

        Per-channel dicts are copied before they change, never changed in place:
        the base's stay as they were (a copy shares them), and the listeners
        compare them with the new ones.
        """
        self.target, n = target, 0
        for channel_id, channel in self.channels.items():
            self._remember(channel_id)
            if channel is None:
                target.replace_channel(channel_id, None, (), ())
                self._own_tokens.discard(channel_id)
                self._own_drains.discard(channel_id)
            else:
                target.set_channel(channel_id, channel)
            n += 1
            if n % self.per_slice == 0:
                yield
        for key, token in self.tokens.items():
            held = target.tokens.get(key)
            if held is not None:
                self._drop_token(held)
            if token is not None and token.channel_id in target.channels:
                self._own(target.channel_tokens, self._own_tokens, token.channel_id)
                target.add_token(token)
            n += 1
            if n % self.per_slice == 0:
                yield
        for drain_id, drain in self.drains.items():
            held = target.drains.get(drain_id)
            if held is not None:
                self._drop_drain(held)
            if drain is not None and drain.channel_id in target.channels:
                self._remember_drains(drain.channel_id)
                self._own(target.channel_drains, self._own_drains, drain.channel_id)
                target.add_drain(drain)
            n += 1
            if n % self.per_slice == 0:
                yield
        for cred_id, cred in self.creds.items():
            target.set_credential(cred_id, cred)
        yield

    def _remember(self, channel_id: str) -> None:
        if channel_id not in self.old_channels:
            self.old_channels[channel_id] = self.target.channels.get(channel_id)
        self._remember_drains(channel_id)

    def _remember_drains(self, channel_id: str) -> None:
        if channel_id not in self.old_drains:
            self.old_drains[channel_id] = self.target.channel_drains.get(channel_id)

    @staticmethod
    def _own(per_channel: dict, owned: set[str], channel_id: str) -> None:
        """Copy a channel's dict before the first change to it (a copy of the snapshot shares it)."""
        if channel_id not in owned:
            owned.add(channel_id)
            held = per_channel.get(channel_id)
            if held is not None:
                per_channel[channel_id] = dict(held)

    def _drop_token(self, token: Token) -> None:
        target, key = self.target, token.id.encode()
        target.tokens.pop(key, None)
        target.routes.pop(key, None)
        if token.channel_id in target.channel_tokens:
            self._own(target.channel_tokens, self._own_tokens, token.channel_id)
            toks = target.channel_tokens[token.channel_id]
            toks.pop(token.id, None)
            if not toks:
                del target.channel_tokens[token.channel_id]
                self._own_tokens.discard(token.channel_id)

    def _drop_drain(self, drain: Drain) -> None:
        target = self.target
        target.drains.pop(drain.id, None)
        if drain.channel_id in target.channel_drains:
            self._remember_drains(drain.channel_id)
            self._own(target.channel_drains, self._own_drains, drain.channel_id)
            drains = target.channel_drains[drain.channel_id]
            drains.pop(drain.id, None)
            if not drains:
                del target.channel_drains[drain.channel_id]
                self._own_drains.discard(drain.channel_id)


class ConfigCache(Snapshot):
    """The in-memory copy of the config the hot path reads; no I/O here.

    While a load builds the next snapshot, the cache remembers which channels
    and credentials changed under it (refreshes from the feed, this node's own
    writes), so the swap keeps those rather than put the older page back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.touched_channels: set[str] | None = None
        self.touched_creds: set[str] | None = None

    def watch(self) -> None:
        """Start remembering what changes, until the next swap or forget."""
        self.touched_channels, self.touched_creds = set(), set()

    def forget(self) -> None:
        self.touched_channels = self.touched_creds = None

    def replace_channel(self, channel_id: str, channel: Channel | None, tokens: Iterable[Token],
                        drains: Iterable[Drain]) -> bool:
        if self.touched_channels is not None:
            self.touched_channels.add(channel_id)
        return super().replace_channel(channel_id, channel, tokens, drains)

    def set_credential(self, cred_id: str, cred: Credential | None) -> None:
        if self.touched_creds is not None:
            self.touched_creds.add(cred_id)
        super().set_credential(cred_id, cred)

    def swap(self, new: Snapshot) -> Snapshot:
        """Adopt `new` in one step (the router reads either all of the old or all of the new);
        returns the old one, which nothing changes any more.

        What changed in the cache since watch() is carried into `new` first: it
        was read from the config Redis after the load started, and the page
        `new` holds of it may be older.
        """
        for channel_id in self.touched_channels or ():
            new.replace_channel(channel_id, self.channels.get(channel_id),
                                self.channel_tokens.get(channel_id, {}).values(),
                                self.channel_drains.get(channel_id, {}).values())
        for cred_id in self.touched_creds or ():
            new.set_credential(cred_id, self.creds.get(cred_id))
        self.forget()
        old = Snapshot()
        for name in _VIEWS:
            setattr(old, name, getattr(self, name))
            setattr(self, name, getattr(new, name))
        return old

    def patch(self, diff: SnapshotDiff) -> None:
        """Apply a few changes read while watching, in one step; what changed in the cache
        since watch() stays as it is (it was read after the pages may have been)."""
        saved = [(channel_id, self.channels.get(channel_id),
                  list(self.channel_tokens.get(channel_id, {}).values()),
                  list(self.channel_drains.get(channel_id, {}).values()))
                 for channel_id in self.touched_channels or ()]
        saved_creds = [(cred_id, self.creds.get(cred_id)) for cred_id in self.touched_creds or ()]
        self.forget()
        for _ in diff.apply(self):
            pass
        for channel_id, channel, tokens, drains in saved:
            self.replace_channel(channel_id, channel, tokens, drains)
        for cred_id, cred in saved_creds:
            self.set_credential(cred_id, cred)

    def replace_all(self, channels, tokens, drains, creds) -> set[str]:
        """Load a whole snapshot at once (from records); returns the channels whose drains changed."""
        new = Snapshot()
        for c in channels:
            new.set_channel(c.id, c)
        for t in tokens:
            new.add_token(t)
        for d in drains:
            new.add_drain(d)
        new.creds = {c.id: c for c in creds}
        old = self.swap(new)
        return {ch for ch in old.channel_drains.keys() | self.channel_drains.keys()
                if old.channel_drains.get(ch) != self.channel_drains.get(ch)}


class Cooperation:
    """Runs long jobs on the reactor a bounded unit at a time, giving the reactor back
    once a turn has used `budget` seconds, so that no job stalls ingest for longer.

    A job is an iterator that yields after each unit of bounded work. Jobs run
    side by side, a unit of each in turn, and share the one budget per reactor
    turn. A job started while none waits runs at once, as far as the budget
    goes (a small config loads within the call).
    """

    def __init__(self, reactor, budget: float = 0.01, timer: Callable[[], float] = time.perf_counter) -> None:
        self.reactor = reactor
        self.budget = budget
        self.timer = timer
        self.turns = 0  # turns given back to the reactor, ever: for tests and curious operators
        self._jobs: deque[tuple[Iterator[object], defer.Deferred]] = deque()
        self._running = False
        self._next = None  # the reactor turn the waiting jobs go on in

    def run(self, job: Iterable[object]) -> defer.Deferred:
        done: defer.Deferred = defer.Deferred()
        self._jobs.append((iter(job), done))
        if not self._running and self._next is None:
            self._turn()
        return done

    def _turn(self) -> None:
        self._next, self._running = None, True
        started = self.timer()
        try:
            while self._jobs:
                units, done = self._jobs[0]
                try:
                    next(units)
                except StopIteration:
                    self._jobs.popleft()
                    done.callback(None)  # its caller may start a job: it joins this turn's loop
                    continue
                except BaseException:
                    self._jobs.popleft()
                    done.errback(Failure())
                    continue
                self._jobs.rotate(-1)
                if self._jobs and self.timer() - started >= self.budget:
                    self.turns += 1
                    # Not 0: a turn of its own even on a test Clock, as Twisted's Cooperator does.
                    self._next = self.reactor.callLater(_NEXT_TURN, self._turn)
                    return
        finally:
            self._running = False


# A first load of at least this many channels and tokens freezes what it built (ConfigStore._load).
_FREEZE_AT = 20_000
# A load that finds at most this many records changed applies them to the cache in one
# step (a few ms); more are applied to a copy, a slice at a time, and the copy swapped in.
_IN_PLACE = 2_000

# How long a job gives the reactor back for: only long enough for one turn.
_NEXT_TURN = 1e-8


class ConfigStore:
    """Writes go to the config Redis; reads come from the cache, which the feed keeps fresh.

    Every write also refreshes this node's cache before it returns, so an API
    caller reads what it just wrote on the same node; other nodes follow
    through the feed within milliseconds, and a periodic reconcile catches any
    notification lost while the feed was down.
    """

    def __init__(
        self,
        redis,
        address: RedisAddress,
        reactor,
        *,
        keys: RedisKeys,
        max_drains: int = 6,
        session_expiry: int = 360,
        reconcile_interval: float = 30.0,
        timeout: float = 5.0,
        metrics=None,
        node: str | None = None,
        page_size: int = 1000,
        slice_size: int = 250,
        turn_budget: float = 0.01,
    ) -> None:
        self.metrics = metrics
        self.redis = redis
        self.address = address
        self.keys = keys
        self.reactor = reactor
        self.max_drains = max_drains
        self.session_expiry = session_expiry
        self.reconcile_interval = reconcile_interval
        self.timeout = timeout
        self.cache = ConfigCache()
        self.loaded = False
        self.loaded_at: float | None = None
        self.version = b""
        self.drain_listeners: list[Callable[[str], None]] = []
        # Told (channel id, the channel now or None) when a channel this node
        # knew is deleted or replaced by a new one of the same name: what was
        # made for the old one (tails, streams) ends.
        self.identity_listeners: list[Callable[[str, Channel | None], None]] = []
        # Other notifications on the feed (b"tail", b"shards"), by kind.
        self.feed_listeners: dict[bytes, list[Callable[[bytes], None]]] = {}
        self._feed: Subscription | None = None
        self._reconcile: task.LoopingCall | None = None
        self._loading: defer.Deferred | None = None
        self._load_waiters: list[defer.Deferred] = []
        self._retry = None  # a reload after a failed one
        self._stopped = False
        # The generation of the config the cache holds (None before the first load),
        # read from the config Redis only (never counted from notifications).
        self.held: Generation | None = None
        # Why this node refuses what the config Redis holds (None: it does not).
        self.refused: str | None = None
        self.refusal: str = ""  # the sentence refused writes answer
        # Told when the node adopts the config again after refusing one (the
        # --auth credential is ensured again then).
        self.recovered_listeners: list[Callable[[], object]] = []
        # Drains deleted through the API (newest last, bounded): only these lose their spools.
        self.tombstones: dict[int, None] = {}
        self.tombstone_listeners: list[Callable[[int], None]] = []
        self.reseed_lock_seconds = 10
        self.node = node  # this node's name: its own heartbeat is not another node's
        self._lock_value = uuid.uuid4().hex
        self._refreshes: dict[str, list[int]] = {}
        self._collector_held = False
        # A load reads page_size records per round trip and works through them in
        # slices of slice_size records (a millisecond or two), turn_budget seconds of
        # slices per reactor turn.
        self.page_size = page_size
        self.slice_size = slice_size
        self.cooperation = Cooperation(reactor, budget=turn_budget)

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        self._feed = Subscription(
            self.address, self._on_feed, self._on_feed_connected, reactor=self.reactor
        )
        self._feed.subscribe([self.keys.feed])
        self._feed.start()
        self._reconcile = task.LoopingCall(self._reconcile_tick)
        self._reconcile.clock = self.reactor
        self._reconcile.start(self.reconcile_interval, now=False)

    def stop(self):
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._reconcile is not None and self._reconcile.running:
            self._reconcile.stop()
        if self._feed is not None:
            return self._feed.stop()
        return None

    def _call(self, d: defer.Deferred) -> defer.Deferred:
        """Bound a Redis call; a dead config Redis becomes Unavailable (HTTP 503)."""
        d.addTimeout(self.timeout, self.reactor)
        if self.metrics is not None:
            started = self.reactor.seconds()

            def timed(result):
                self.metrics.observe("logplex_redis_command_seconds", self.reactor.seconds() - started,
                                     redis="config", op="config")
                return result

            d.addCallback(timed)

        def unavailable(failure):
            failure.trap(Exception)
            if isinstance(failure.value, ConfigError):
                return failure
            if failure.check(defer.TimeoutError, defer.CancelledError):
                why = f"no answer within {self.timeout:g} s"
            else:
                why = failure.getErrorMessage() or failure.type.__name__
            raise Unavailable(f"The config Redis is not answering ({why}); try again shortly.")

        return d.addErrback(unavailable)

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

    # -- the cache ----------------------------------------------------------
    def _on_feed_connected(self) -> None:
        # Notifications may have been missed while the feed was down.
        self.load().addErrback(self._catch_up_later, "reload")

    def _catch_up_later(self, failure, what: str) -> None:
        """A reload or refresh failed (the command connection may still be
        reconnecting after an outage the feed already got over): reload the
        whole config in a second, and again until it works, rather than wait
        for the next reconcile."""
        log.warn("config_{what}_failed error={e!r}", what=what, e=failure.getErrorMessage())
        if self._stopped or self._retry is not None and self._retry.active():
            return
        self._retry = self.reactor.callLater(1.0, self._retry_load)

    def _retry_load(self) -> None:
        self._retry = None
        self.load().addErrback(self._catch_up_later, "reload")

    def _on_feed(self, channel: bytes, message: bytes) -> None:
        kind, _, ident = message.partition(b" ")
        if kind == b"drain-deleted":
            if ident.isdigit():
                self._tombstone(int(ident))
            return
        if kind in (b"channel", b"cred", b"reseeded") and (self.refused is not None or kind == b"reseeded"):
            # Nothing from a config this node refuses lands in its cache: it
            # judges the whole config again instead.
            self.load().addErrback(self._catch_up_later, "reload")
            return
        if kind == b"channel":
            d = self.refresh_channel(ident.decode())
        elif kind == b"cred":
            d = self.refresh_credential(ident.decode())
        else:
            for listener in self.feed_listeners.get(kind, ()):
                listener(message)
            return
        self._heard_write()
        d.addErrback(self._catch_up_later, "refresh")

    def _heard_write(self) -> None:
        """Every write bumps the version once and announces itself once: a node that heard
        every announcement holds the version Redis holds, and the reconcile reloads only
        when one was missed (not after every write, as it did)."""
        if self.version.isdigit() or not self.version:  # b"": nothing was ever written
            self.version = b"%d" % (int(self.version or b"0") + 1)

    def _reconcile_tick(self):
        d = defer.ensureDeferred(self._found())

        def compare(found):
            if self.refused is not None or judge(self.held, found) is not None:
                return self.load()  # judged again; refused (and re-seeded) or adopted
            version = b"%d" % found.version if found.version else b""
            if version != self.version:
                log.info("config_reconcile_reload reason='version moved without a notification'")
                return self.load()

        return d.addCallback(compare).addErrback(
            lambda f: log.warn("config_reconcile_failed error={e!r}", e=f.getErrorMessage())
        )

    def load(self) -> defer.Deferred:
        """Load the whole config (at boot, and after a feed reconnect).

        Callers share the one load in flight, so an older snapshot can never
        land on top of a newer one.
        """
        if self._loading is None:
            self._loading = defer.ensureDeferred(self._load())
            self._loading.addBoth(self._load_finished)
        waiter = defer.Deferred()
        self._load_waiters.append(waiter)
        return waiter

    def _load_finished(self, result) -> None:
        self._loading = None
        waiters, self._load_waiters = self._load_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    async def _found(self) -> Generation:
        """The generation the config Redis holds now."""
        cluster_id, epoch, version = await self._call(
            self.redis.mget([self.keys.cluster_id, self.keys.epoch, self.keys.version]))
        return Generation(cluster_id, int(epoch or 0), int(version or 0))

    async def _others_alive(self) -> bool:
        """Whether another node's heartbeat (NodeRegistry's) is within its TTL."""
        entries = await self._call(self.redis.hgetall(self.keys.nodes))
        now = time.time()
        for name, raw in entries.items():
            try:
                doc = json.loads(raw)
                if name.decode() != self.node and now - doc["seen_at"] <= doc.get("ttl", 15.0):
                    return True
            except (ValueError, KeyError, TypeError):
                continue
        return False

    async def _load(self) -> None:
        if self.held is None and await self._call(self.redis.get(self.keys.cluster_id)) is None:
            if await self._call(self.redis.get(self.keys.version)) is None and await self._others_alive():
                # A config Redis that lost its data while the cluster runs: one of
                # the running nodes re-seeds it within seconds. A cluster id made
                # now would make their config foreign to it, and they would all
                # refuse it for good.
                raise Unavailable("The config Redis is empty while other nodes of the cluster are alive; "
                                  "waiting for one of them to re-seed it from its copy.")
            # The first node to find a config Redis without a cluster id (a new
            # cluster, or one older than cluster ids) gives it one.
            await self._call(self.redis.set(self.keys.cluster_id, uuid.uuid4().hex, only_if_not_exists=True))
        # The first load of a big config holds the garbage collector off while it builds,
        # then freezes what it built: otherwise each of the several full collections that
        # hundreds of thousands of new objects set off walks all of them (150 ms each at
        # 100,000 channels), then and at every full collection after. gc.freeze() keeps
        # what exists then (at boot: the config and the node's services) out of every
        # later collection; records are freed by their reference counts as ever. Later
        # loads keep what did not change (SnapshotDiff), so they leave the collector alone.
        self._collector_held = not self.loaded and gc.isenabled()
        if self._collector_held:
            gc.disable()
        try:
            await self._load_generation()
        finally:
            self._release_collector(freeze=False)

    def _release_collector(self, *, freeze: bool) -> None:
        if self._collector_held:
            self._collector_held = False
            if freeze and len(self.cache.tokens) + len(self.cache.channels) >= _FREEZE_AT:
                gc.freeze()
            gc.enable()

    async def _load_generation(self) -> None:
        """Judge what the config Redis holds; adopt it (read to the side, swapped in at once) or refuse it."""
        for attempt in range(3):
            found = await self._found()
            version = await self._call(self.redis.get(self.keys.version))
            reason = judge(self.held, found)
            if reason is not None:
                self._refuse(reason, found)
                await self._reseed()
                return
            # From here on, what changes in the cache (refreshes from the feed, this node's
            # writes) is remembered, and kept rather than the page read of it.
            diff = SnapshotDiff(self.cache, self.slice_size)
            self.cache.watch()
            try:
                await self._read_pages(diff)
                # A re-seed while the pages were read (by another node) may have mixed two
                # configs in them: read them again. Plain writes bump only the version, and
                # their notifications refresh what they touched, which is kept.
                after = await self._found()
            except BaseException:
                self.cache.forget()
                raise
            if (after.cluster_id, after.epoch) == (found.cluster_id, found.epoch):
                break
            self.cache.forget()
            log.info("config_load_restarted reason='the config Redis was re-seeded while this node read it' "
                     "found={found} now={now}", found=found.describe(), now=after.describe())
        else:
            raise Unavailable("The config Redis was re-seeded three times while this node read it; "
                              "it tries again within a second.")
        if len(diff) <= _IN_PLACE:
            # The usual reload: little changed. In place, in this one step.
            touched = set(self.cache.touched_channels or ())
            self.cache.patch(diff)
        else:
            # A first load, or much changed: a copy (sharing the records and per-channel
            # dicts: C-speed), brought in line a slice at a time, then swapped in at once.
            new = Snapshot()
            try:
                await self.cooperation.run(new.copy_from(self.cache))
                await self.cooperation.run(diff.apply(new))
            except BaseException:
                self.cache.forget()
                raise
            touched = set(self.cache.touched_channels or ())
            self.cache.swap(new)
        # Before the listeners are told: what they make (drain workers…) is not frozen.
        self._release_collector(freeze=True)
        self.version = version or b""
        self.held = found
        self.loaded = True
        self.loaded_at = self.reactor.seconds()
        if self.refused is not None:
            log.info("config_adopted_again generation={generation} after='config_refused reason={reason}'",
                     generation=found.describe(), reason=self.refused)
            self.refused = None
            for listener in self.recovered_listeners:
                try:
                    listener()
                except Exception:
                    log.failure("recovered_listener_failed")
        log.info(
            "config_loaded channels={channels} tokens={tokens} drains={drains} changed_records={changed}",
            channels=len(self.cache.channels), tokens=len(self.cache.tokens),
            drains=len(self.cache.drains), changed=len(diff),
        )
        await self.cooperation.run(self._tell_changes(diff, touched))

    async def _read_pages(self, diff: SnapshotDiff) -> None:
        """Every channel, token, drain and credential, a page per round trip, compared with the cache.

        The four hashes are read side by side, and each one's next page is asked for
        before this one is compared, so that Redis and the node work at once.
        """
        k = self.keys
        reads = [defer.ensureDeferred(self._read_hash(key, read))
                 for key, read in ((k.channels, diff.read_channels), (k.tokens, diff.read_tokens),
                                   (k.drains, diff.read_drains), (k.creds, diff.read_creds))]
        try:
            await defer.gatherResults(reads, consumeErrors=True)
        except defer.FirstError as e:
            raise e.subFailure.value from None
        await self.cooperation.run(diff.gone())

    async def _read_hash(self, key: bytes, read: Callable[[bytes], Iterator[None]]) -> None:
        pending: defer.Deferred | None = self._page(key, b"0")
        while pending is not None:
            cursor, page = await pending
            pending = None if cursor in (b"0", "0", 0) else self._page(key, cursor)
            try:
                await self.cooperation.run(read(page))
            except BaseException as e:
                if pending is not None:
                    pending.addErrback(lambda _: None)  # nobody waits for it any more
                if isinstance(e, (KeyError, TypeError, ValueError, AttributeError)):
                    raise ConfigError(
                        f"The config Redis's {key.decode(errors='replace')} hash holds a record this node "
                        f"cannot read (missing or wrong field: {e!r}); fix or delete that record, and the "
                        "node loads the config again within a second.") from e
                raise

    def _page(self, key: bytes, cursor: bytes) -> defer.Deferred:
        return self._call(self.redis.eval(_PAGE, [key], [cursor, b"%d" % self.page_size]))

    def _tell_changes(self, diff: SnapshotDiff, touched: set[str]) -> Iterator[None]:
        """After the change: tell of the channels whose drains changed, then of those that ended, one at a time.

        Listeners are told what the cache holds when they are told, as a refresh
        would. A channel a refresh changed during the load was told then.
        """
        for channel_id, before in diff.old_drains.items():
            if channel_id not in touched and before != self.cache.channel_drains.get(channel_id):
                self._drains_changed(channel_id)
                yield
        for channel_id, before in diff.old_channels.items():
            if channel_id not in touched and before is not None:
                self._identity_check(channel_id, before)
                yield

    def refresh_channel(self, channel_id: str) -> defer.Deferred:
        return defer.ensureDeferred(self._refresh_channel(channel_id))

    async def _refresh_channel(self, channel_id: str) -> None:
        # Refreshes of one channel overlap (a write's own, its notification's):
        # one started earlier and finishing later must not put older data back.
        # [last started, last applied, running], while any runs.
        tickets = self._refreshes.setdefault(channel_id, [0, 0, 0])
        tickets[0] += 1
        tickets[2] += 1
        ticket = tickets[0]
        try:
            await self._refresh_channel_once(channel_id, ticket, tickets)
        finally:
            tickets[2] -= 1
            if tickets[2] == 0 and self._refreshes.get(channel_id) is tickets:
                del self._refreshes[channel_id]

    async def _still_ours(self) -> bool:
        """Before a refresh takes something out of the cache: is the config Redis still the one it
        was read from? (Not one that lost its data meanwhile: that would look like deletions.)
        Asked only then, so that the refreshes that add or change cost no more than before."""
        found = await self._found()
        if judge(self.held, found) is not None:
            await self.load()
            return False
        if self.held is not None and found.rank > self.held.rank:
            self.held = found  # read from Redis: how far the config this node holds has got
        return True

    def _superseded(self, ticket: int, tickets: list[int]) -> bool:
        """Whether a refresh started after this one has already landed; else this one lands now."""
        if ticket < tickets[1]:
            return True
        tickets[1] = ticket
        return False

    async def _refresh_channel_once(self, channel_id: str, ticket: int, tickets: list[int]) -> None:
        if self.refused is not None:
            return
        raw = await self._call(self.redis.hget(self.keys.channels, channel_id))
        if raw is None:
            if channel_id in self.cache.channels and not await self._still_ours():
                return
            if self._superseded(ticket, tickets):
                return
            before = self.cache.channels.get(channel_id)
            changed = self.cache.replace_channel(channel_id, None, (), ())
        else:
            token_ids = sorted(await self._call(self.redis.smembers(self.keys.channel_tokens(channel_id))))
            drain_ids = sorted(await self._call(self.redis.smembers(self.keys.channel_drains(channel_id))))
            tokens = []
            if token_ids:
                docs = await self._call(self.redis.hmget(self.keys.tokens, token_ids))
                tokens = [Token.from_json(t.decode(), d) for t, d in zip(token_ids, docs) if d]
            drains = []
            if drain_ids:
                docs = await self._call(self.redis.hmget(self.keys.drains, drain_ids))
                drains = [Drain.from_json(int(i), d) for i, d in zip(drain_ids, docs) if d]
            removes = (set(self.cache.channel_tokens.get(channel_id, {})) - {t.id for t in tokens}
                       or set(self.cache.channel_drains.get(channel_id, {})) - {d.id for d in drains})
            if removes and not await self._still_ours():
                return
            if self.refused is not None or self._superseded(ticket, tickets):
                return
            # Read only now: what the cache held just before it changes.
            before = self.cache.channels.get(channel_id)
            changed = self.cache.replace_channel(
                channel_id, Channel.from_json(channel_id, raw), tokens, drains
            )
        self.loaded_at = self.reactor.seconds()
        if changed:
            self._drains_changed(channel_id)
        if before is not None:
            self._identity_check(channel_id, before)

    def refresh_credential(self, cred_id: str) -> defer.Deferred:
        d = self._call(self.redis.hget(self.keys.creds, cred_id))
        d.addCallback(
            lambda raw: None if self.refused is not None else self.cache.set_credential(
                cred_id, Credential.from_json(cred_id, raw) if raw else None
            )
        )
        return d

    # -- refusing a config, and re-seeding the config Redis -----------------------------
    def _refuse(self, reason: str, found: Generation) -> None:
        """Keep the cache as it is, refuse writes, and say why (once per reason)."""
        held = self.held or Generation(None)
        self.refusal = refusal_sentence(reason, held, found)
        if self.refused != reason:
            log.warn("config_refused reason={reason} held={held} found={found} cluster={cluster!r} "
                     "action=routing_from_cache", reason=reason, held=held.describe(),
                     found=found.describe(), cluster=(found.cluster_id or b"").decode())
        self.refused = reason
        # Judge again in a second: the winner's re-seed, or an operator's fix.
        if not self._stopped and (self._retry is None or not self._retry.active()):
            self._retry = self.reactor.callLater(1.0, self._retry_load)

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

    def _tombstone(self, drain_id: int) -> None:
        """A drain deleted through the API: its spools may go."""
        self.tombstones.pop(drain_id, None)
        self.tombstones[drain_id] = None
        while len(self.tombstones) > 10_000:
            self.tombstones.pop(next(iter(self.tombstones)))
        for listener in self.tombstone_listeners:
            try:
                listener(drain_id)
            except Exception:
                log.failure("tombstone_listener_failed drain={drain}", drain=drain_id)

    def _identity_check(self, channel_id: str, old: Channel) -> None:
        """Tell the identity listeners if the channel `old` is gone (deleted, or another of its name)."""
        now = self.cache.channels.get(channel_id)
        if now is not None and now.incarnation == old.incarnation:
            return
        log.info("channel_ended channel={channel} successor={successor}", channel=channel_id,
                 successor=now is not None)
        for listener in self.identity_listeners:
            try:
                listener(channel_id, now)
            except Exception:
                log.failure("identity_listener_failed channel={channel}", channel=channel_id)

    def _drains_changed(self, channel_id: str) -> None:
        for listener in self.drain_listeners:
            try:
                listener(channel_id)
            except Exception:
                log.failure("drain_listener_failed channel={channel}", channel=channel_id)

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
        """The --auth credential: exists with this secret, full_api and any_channel."""
        self._writable()
        raw = await self._call(self.redis.hget(self.keys.creds, cred_id))
        perms = frozenset({FULL_API, ANY_CHANNEL})
        if raw:
            cred = Credential.from_json(cred_id, raw)
            if perms <= cred.perms and secrets.check_secret(secret, cred.secret_hash):
                self.cache.set_credential(cred_id, cred)
                return
        await self.create_credential(perms, note="--auth", cred_id=cred_id, secret=secret)

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
