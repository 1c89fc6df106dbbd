"""Loading the whole config from a real Redis, page by page (the Lua page script over HSCAN)."""

import tempfile

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from logplex.model import Channel, Credential, Drain, Token
from logplex.config.store import ConfigStore
from logplex.redis.address import parse_redis_url
from logplex.redis.connection import connect
from logplex.redis.keys import RedisKeys
from logplex.settings import ApiSettings, NodeSettings
from tests.harness.procs import RedisServer

KEYS = RedisKeys("lp", 0)
# Ids and names a page must carry through Lua's JSON and back: quotes, backslashes,
# slashes, non-ASCII, control characters.
ODD = 'odd "quoted" \\ back/slash é ✓ \t'


class PagedLoadTests(TestCase):
    timeout = 30

    def setUp(self):
        self.server = RedisServer(tempfile.mkdtemp(prefix="logplex-test-"))
        self.server.start()
        self.addCleanup(self.server.stop)
        self.address = parse_redis_url(self.server.url)
        self.pool = connect(self.address, poolsize=2, reply_timeout=5)
        self.addCleanup(self.pool.disconnect)

    def store(self) -> ConfigStore:
        # Pages far smaller than the hashes: many HSCAN pages each, as at 100,000 channels.
        return ConfigStore(self.pool, self.address, reactor, ApiSettings(), keys=KEYS, timeout=5,
                           reconcile_interval=NodeSettings().reconcile_interval, page_size=40, slice_size=16)

    async def write(self, channels: dict[str, tuple[Channel, list[Token], list[Drain]]]) -> None:
        """As the store's scripts write them (the records' own JSON)."""
        await self.pool.hmset(KEYS.channels, {c.id: c.to_json() for c, _, _ in channels.values()})
        await self.pool.hmset(KEYS.tokens, {t.id: t.to_json() for _, ts, _ in channels.values() for t in ts})
        drains = {str(d.id): d.to_json() for _, _, ds in channels.values() for d in ds}
        if drains:
            await self.pool.hmset(KEYS.drains, drains)

    async def test_a_config_of_many_pages_loads_whole_and_a_reload_follows_every_change(self):
        channels = {}
        for n in range(600):
            cid = f"app-{n}" if n else ODD
            channels[cid] = (Channel(cid, frozenset({"no_tail"}) if n % 7 == 0 else frozenset(), f"inc{n}"),
                             [Token(f"t.{n}.{k}", cid, ODD if k else "web") for k in range(2)],
                             [Drain(n, cid, f"d.{n}", f"https://logs.example.com/{n}")] if n % 10 == 0 else [])
        await self.write(channels)
        cred = Credential("admin", "hash", frozenset({"full_api"}), note=ODD)
        await self.pool.hset(KEYS.creds, "admin", cred.to_json())
        store = self.store()
        await store.load()
        self.assertEqual(self.expected(channels), self.held(store))
        self.assertEqual(store.cache.routes[b"t.0.1"], (ODD, ODD.encode()))
        self.assertEqual(store.cache.creds, {"admin": cred})

        # Deleted, replaced, changed, added: what a node misses while its feed is down.
        for n in range(1, 100):
            del channels[f"app-{n}"]
        await self.pool.hdel(KEYS.channels, [f"app-{n}" for n in range(1, 100)])
        await self.pool.hdel(KEYS.tokens, [f"t.{n}.{k}" for n in range(1, 100) for k in range(2)])
        await self.pool.hdel(KEYS.drains, [str(n) for n in range(10, 100, 10)])
        channels["app-200"] = (Channel("app-200", incarnation="again"), [Token("t.again", "app-200", "web")], [])
        await self.pool.hdel(KEYS.tokens, ["t.200.0", "t.200.1"])
        await self.pool.hdel(KEYS.drains, "200")
        channels["app-300"][2][0] = Drain(300, "app-300", "d.300", "syslog://elsewhere.example.com:601")
        channels["new"] = (Channel("new", incarnation="n"), [Token("t.new", "new", "web")],
                           [Drain(9999, "new", "d.new", "https://new.example.com/")])
        await self.write(channels)
        await self.pool.hdel(KEYS.creds, "admin")
        await store.load()
        self.assertEqual(self.expected(channels), self.held(store))
        self.assertEqual(store.cache.creds, {})

    @staticmethod
    def expected(channels) -> tuple:
        return ({cid: c for cid, (c, _, _) in channels.items()},
                {t.id.encode(): (cid, t.name.encode()) for cid, (_, ts, _) in channels.items() for t in ts},
                {cid: {d.id: d for d in ds} for cid, (_, _, ds) in channels.items() if ds})

    @staticmethod
    def held(store: ConfigStore) -> tuple:
        return (dict(store.cache.channels), dict(store.cache.routes), dict(store.cache.channel_drains))

