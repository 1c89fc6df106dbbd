"""Shard choice: rendezvous hashing of channels over shard names (logplex/backlog/ring.py)."""

from logplex.backlog.ring import ShardRing


def test_every_channel_maps_to_one_of_the_shards_and_stays_there():
    ring = ShardRing(["redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0"])
    again = ShardRing(["redis://a:6379/0", "redis://b:6379/0", "redis://c:6379/0"])
    for n in range(500):
        assert ring.shard(f"app-{n}") == again.shard(f"app-{n}")
        assert ring.shard(f"app-{n}") in ring.shards


def test_channels_spread_evenly():
    ring = ShardRing(["s0", "s1", "s2", "s3"])
    counts = [0] * 4
    for n in range(8000):
        counts[ring.index(f"channel-{n}")] += 1
    assert all(1600 < c < 2400 for c in counts), counts


def test_adding_a_shard_moves_only_a_proportional_share():
    before = ShardRing(["s0", "s1", "s2"])
    after = ShardRing(["s0", "s1", "s2", "s3"])
    channels = [f"channel-{n}" for n in range(8000)]
    moved = [c for c in channels if before.shard(c) != after.shard(c)]
    # Everything that moved went to the new shard, and about a quarter moved.
    assert all(after.shard(c) == "s3" for c in moved)
    assert 1600 < len(moved) < 2400
