"""This node's in-memory copy of the config, and the pieces that judge, compare and swap it.

No I/O here: nothing imports a Redis client or the reactor. The feed
(logplex.config.feed) reads pages from the config Redis and hands them to a
SnapshotDiff; Cooperation runs that work a slice at a time on the clock it is
given; the router reads the ConfigCache.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Callable, Iterable, Iterator

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from logplex.errors import ConfigError
from logplex.model import Channel, Credential, Drain, Token

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


# How long a job gives the reactor back for: only long enough for one turn.
_NEXT_TURN = 1e-8


class Cooperation:
    """Runs long jobs on the reactor a bounded unit at a time, giving the reactor back
    once a turn has used `budget` seconds, so that no job stalls ingest for longer.

    A job is an iterator that yields after each unit of bounded work. Jobs run
    side by side, a unit of each in turn, and share the one budget per reactor
    turn. A job started while none waits runs at once, as far as the budget
    goes (a small config loads within the call). `clock` schedules the next
    turn (the reactor, or a task.Clock in tests).
    """

    def __init__(self, clock, budget: float = 0.01, timer: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
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
                    self._next = self.clock.callLater(_NEXT_TURN, self._turn)
                    return
        finally:
            self._running = False

