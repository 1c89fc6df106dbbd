"""The shard ring: which shard holds a channel, by rendezvous hashing of shard names."""

from __future__ import annotations

import hashlib
from typing import Sequence


class ShardRing:
    """Rendezvous hashing of channel ids over shard names.

    Each channel goes to the shard with the highest hash of (shard, channel),
    so adding a shard moves only the channels that now score highest on it
    (about 1/N of them) and removing one moves only its own channels.
    """

    def __init__(self, shards: Sequence[str]) -> None:
        if not shards:
            raise ValueError("A shard ring needs at least one shard.")
        self.shards = list(shards)
        self._seeds = [s.encode() + b"\x00" for s in self.shards]
        self._memo: dict[str, int] = {}

    def index(self, channel_id: str) -> int:
        found = self._memo.get(channel_id)
        if found is None:
            key = channel_id.encode()
            scores = [
                hashlib.blake2b(seed + key, digest_size=8).digest() for seed in self._seeds
            ]
            found = max(range(len(scores)), key=scores.__getitem__)
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            self._memo[channel_id] = found
        return found

    def shard(self, channel_id: str) -> str:
        return self.shards[self.index(channel_id)]
