"""The key schema: today's names kept for namespace lp on db 0, no two clusters' names alike,
and no module but logplex/redis/keys.py spelling a key or channel name."""

from __future__ import annotations

import ast
import pathlib
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logplex.redis.keys import BadNamespace, RedisKeys, check_namespace

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "logplex"
DEFAULT = RedisKeys("lp", 0)


def test_namespace_lp_on_db_0_keeps_the_names_existing_clusters_have_in_redis():
    k = DEFAULT
    assert [k.channels, k.tokens, k.drains, k.creds, k.version, k.channel_seq, k.drain_seq,
            k.shards, k.tailing, k.nodes] == [
        b"lp:channels", b"lp:tokens", b"lp:drains", b"lp:creds", b"lp:version", b"lp:seq:channel",
        b"lp:seq:drain", b"lp:shards", b"lp:tailing", b"lp:nodes"]
    assert k.channel_tokens("app") == b"lp:chtok:app"
    assert k.channel_drains("app") == b"lp:chdrain:app"
    assert k.session("s1") == b"lp:session:s1"
    assert k.backlog("app") == b"lp:log:app"
    assert k.spool(42, "n1") == b"lp:spool:42:n1"
    assert k.spool_meta(k.spool(42, "n1")) == b"lp:spool:42:n1:meta"
    assert (k.backlog_pattern, k.spool_pattern) == (b"lp:log:*", b"lp:spool:*")
    # The pub/sub channels too: a node of the previous version hears this one's feed and tails.
    assert k.feed == b"lp:config"
    assert k.tail("app") == b"lp:tail:app"


def test_the_namespace_prefixes_every_name_and_the_db_every_channel_name_but_db_0s():
    k = RedisKeys("team-a", 3)
    assert k.channels == b"team-a:channels"
    assert k.backlog("app") == b"team-a:log:app"
    assert k.spool(7, "n") == b"team-a:spool:7:n"
    # Keys need no db (the db separates them); pub/sub ignores the db, so channels carry it.
    assert k.feed == b"team-a:3:config"
    assert k.tail("app") == b"team-a:3:tail:app"
    assert RedisKeys("team-a", 0).feed == b"team-a:config"


def test_names_read_back():
    k = RedisKeys("ns", 2)
    assert k.channel_of_tail(k.tail("a:b")) == "a:b"
    assert k.channel_of_tail(k.feed) is None
    assert k.channel_of_backlog(k.backlog("x")) == "x"
    assert k.channel_of_backlog(b"other:log:x") is None
    assert k.drain_of_spool(k.spool(12, "node:1")) == 12
    assert k.drain_of_spool(k.spool_meta(k.spool(12, "n"))) is None
    assert k.drain_of_spool(DEFAULT.spool(12, "n")) is None


@pytest.mark.parametrize("bad", ["", "x" * 33, "a:b", "a b", "a*", "lp:", "é", "a\n", None, 3])
def test_a_namespace_is_1_to_32_letters_digits_underscores_or_dashes(bad):
    with pytest.raises(BadNamespace, match="1 to 32 letters, digits, '_' or '-'"):
        check_namespace(bad)
    with pytest.raises(BadNamespace):
        RedisKeys(bad, 0)


def test_good_namespaces_and_dbs():
    assert check_namespace("x" * 32) == "x" * 32
    assert check_namespace("A_b-9") == "A_b-9"
    with pytest.raises(ValueError):
        RedisKeys("lp", -1)


namespaces = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
dbs = st.integers(min_value=0, max_value=15)
ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


def every_name(k: RedisKeys, channel_id: str, node: str, drain_id: int) -> tuple[set[bytes], set[bytes]]:
    """(every key, every pub/sub channel) of a schema, for one channel, node and drain."""
    keys = {k.channels, k.tokens, k.drains, k.creds, k.version, k.channel_seq, k.drain_seq, k.shards,
            k.tailing, k.nodes, k.channel_tokens(channel_id), k.channel_drains(channel_id),
            k.session(channel_id), k.backlog(channel_id), k.spool(drain_id, node),
            k.spool_meta(k.spool(drain_id, node))}
    return keys, {k.feed, k.tail(channel_id)}


@given(namespaces, dbs, namespaces, dbs, ids, ids, ids, st.integers(min_value=0, max_value=10**6))
def test_two_clusters_never_share_a_pubsub_channel_nor_with_another_namespace_a_key(
        ns1, db1, ns2, db2, channel1, channel2, node, drain_id):
    one, two = RedisKeys(ns1, db1), RedisKeys(ns2, db2)
    keys1, channels1 = every_name(one, channel1, node, drain_id)
    keys2, channels2 = every_name(two, channel2, node, drain_id)
    if (ns1, db1) != (ns2, db2):
        # On one Redis server, whatever the dbs: the feed and the tails never meet.
        assert not channels1 & channels2
        assert two.channel_of_tail(one.tail(channel1)) is None
    if ns1 != ns2:
        # In one db: no key of one cluster is a key of the other.
        assert not keys1 & keys2
        assert two.channel_of_backlog(one.backlog(channel1)) is None
        assert two.drain_of_spool(one.spool(drain_id, node)) is None


# -- nobody else spells a name -----------------------------------------------------------------
def _fragments() -> tuple[re.Pattern, re.Pattern]:
    """What a key literal looks like, read off the schema: 'lp:' anywhere, a name that takes an id
    ('log:', 'chtok:', 'tail:' …) as a word, and a fixed name after a colon (':channels')."""
    k = DEFAULT
    with_id = {n[len(b"lp:"):].split(b":")[0] + b":" for n in (
        k.channel_tokens("X"), k.channel_drains("X"), k.session("X"), k.backlog("X"), k.spool(1, "n"),
        k.tail("X"), k.channel_seq)}
    fixed = {n[len(b"lp:"):] for n in (k.channels, k.tokens, k.drains, k.creds, k.version, k.shards,
                                       k.tailing, k.nodes, k.feed)}
    joined = b"|".join(sorted(re.escape(f) for f in with_id)).decode()
    words = b"|".join(sorted(re.escape(f) for f in fixed)).decode()
    # (Prose such as "a session: …" has a space after the colon; a key never has.)
    literal = re.compile(rf"\blp:|(?<![\w.+-])(?:{joined})(?!\s)|:(?:{words})\b")
    # A Lua redis.call whose key (or channel) is spelled in the script, not passed in.
    lua = re.compile(r"""redis\.call\(\s*['"]\w+['"]\s*,\s*['"]""")
    return literal, lua


# Names Redis itself gives, which keys.py spells too: the sentinels' event channels
# (+switch-master …) and keyspace notifications.
REDIS_CHANNEL = re.compile(r"^\+[a-z]+(?:-[a-z]+)+$|__key(?:space|event)@")
# Hash fields that join ids (the tailing hash's node|channel), as an f-string's shape.
COMPOSITE_FIELDS = {RedisKeys.tail_interest("\0", "\0").replace("\0", "{}")}


def _fstring_shapes(tree: ast.AST):
    """Every f-string of a module as its shape: the text with each {…} written {}."""
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)


def _string_constants(tree: ast.AST):
    """Every str/bytes constant of a module (f-string parts too), docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)) \
                and id(node) not in docstrings:
            value = node.value
            yield node.lineno, value.decode("latin-1") if isinstance(value, bytes) else value


def spellings_outside_the_schema() -> list[str]:
    """Every place in the package (modules and Lua scripts) that spells a key or channel name
    rather than take it from logplex/redis/keys.py, as 'path:line: what'."""
    literal, lua = _fragments()
    found = []
    for path in sorted(PACKAGE.rglob("*")):
        where = path.relative_to(PACKAGE.parent)
        if where == pathlib.Path("logplex/redis/keys.py"):
            continue
        if path.suffix == ".lua":
            # A script gets its keys in KEYS and its channels in ARGV or KEYS: none is spelled in it.
            for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for pattern in (literal, lua):
                    match = pattern.search(text)
                    if match:
                        found.append(f"{where}:{line}: {match.group(0)!r}")
            continue
        if path.suffix != ".py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in _string_constants(tree):
            for pattern in (literal, lua, REDIS_CHANNEL):
                match = pattern.search(text)
                if match:
                    found.append(f"{where}:{line}: {match.group(0)!r}")
        for line, shape in _fstring_shapes(tree):
            if shape in COMPOSITE_FIELDS:
                found.append(f"{where}:{line}: {shape!r}")
    return found


def test_no_module_but_the_key_schema_spells_a_key_or_channel_name():
    found = spellings_outside_the_schema()
    assert not found, ("Redis key or channel names spelled outside logplex/redis/keys.py "
                       "(take them from the RedisKeys the constructor is given):\n" + "\n".join(found))


def test_the_check_sees_the_literals_it_is_meant_to_see():
    literal, lua = _fragments()
    for text in ['lp:channels', 'x:log:', '"chdrain:"', '{ns}:nodes', 'seq:drain', 'lp:tail:app',
                 "x .. ':config'"]:
        assert literal.search(text), text
    for text in ["syslog://host:514", "https://logs.example/", "catalog: x", "drain_log: 1",
                 "a config value", "--config-redis", "channels",
                 "Read a session: backlog lines"]:
        assert not literal.search(text), text
    assert lua.search("redis.call('INCR', 'lp:version')")
    assert not lua.search("redis.call('INCR', version)")
    assert not lua.search("redis.call('LRANGE', KEYS[1], 0, -1)")
    for text in ["+switch-master", "+failover-state-send-slaveof-noone", "__keyspace@0__:lp:log:x"]:
        assert REDIS_CHANNEL.search(text), text
    for text in ["+inf", "+1", "--config-redis", "-", "a+b-c"]:
        assert not REDIS_CHANNEL.search(text), text


def test_the_check_sees_spellings_in_lua_scripts_and_composite_fields(tmp_path, monkeypatch):
    package = tmp_path / "logplex"
    (package / "room" / "scripts").mkdir(parents=True)
    (package / "room" / "scripts" / "s.lua").write_text("redis.call('DEL', KEYS[1])\n"
                                                        "redis.call('PUBLISH', 'lp:config', ARGV[1])\n")
    (package / "room" / "m.py").write_text('def f(node, channel):\n    return f"{node}|{channel}"\n'
                                           'SWITCHED = b"+switch-master"\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert spellings_outside_the_schema() == [
        "logplex/room/m.py:3: '+switch-master'",
        "logplex/room/m.py:2: '{}|{}'",
        "logplex/room/scripts/s.lua:2: 'lp:'",
        "logplex/room/scripts/s.lua:2: \"redis.call('PUBLISH', '\"",
    ]


def test_the_tailing_hash_field_reads_back():
    assert RedisKeys.tail_interest("node-1", "app:x|y") == "node-1|app:x|y"
    assert RedisKeys.interest_of(b"node-1|app:x|y") == ("node-1", "app:x|y")
