"""The twistd command line."""

import attrs
import pytest
from twisted.python import usage

from logplex.settings import Settings
from logplex.tap import Options


def parse(args, env=None, monkeypatch=None):
    options = Options()
    options.parseOptions(args)
    return options


def test_defaults_are_specs():
    s = Settings.from_options(parse([]))
    assert (s.listen.api, s.listen.logs, s.listen.syslog) == ("tcp:8001", "tcp:8601", ("tcp:6001",))
    assert (s.backlog.history, s.api.max_drains, s.api.session_expiry, s.backlog.expiry) == (1500, 6, 360, 604800)
    assert (s.redis.config, s.redis.shards, s.api.auth) == (None, (), None)
    assert s.node.data_dir == "./logplex-data" and not s.drains.allow_private


def test_the_command_line_defaults_are_the_settings_defaults(monkeypatch):
    for name in ("LOGPLEX_CONFIG_REDIS_URL", "LOGPLEX_SHARD_URLS", "LOGPLEX_AUTH"):
        monkeypatch.delenv(name, raising=False)
    # One source: a node given no option runs with Settings() exactly (but its host's name).
    s = Settings.from_options(parse([]))
    assert s == attrs.evolve(Settings(), node=attrs.evolve(Settings().node, name=s.node.name))


def test_pushback_can_be_turned_off():
    assert Settings.from_options(parse(["--drain-pushback", "0"])).drains.pushback == 0


def test_stop_grace_is_five_seconds_unless_given_and_zero_closes_at_once():
    assert Settings.from_options(parse([])).node.stop_grace == 5.0
    assert Settings.from_options(parse(["--stop-grace", "0"])).node.stop_grace == 0
    # The last one given wins: the tests' nodes pass 0, a test of the grace a later value.
    assert Settings.from_options(parse(["--stop-grace", "0", "--stop-grace", "2.5"])).node.stop_grace == 2.5


def test_repeatable_listeners_and_shards():
    s = Settings.from_options(parse([
        "--syslog", "tcp:6001", "--syslog", "ssl:6514:privateKey=k.pem:certKey=c.pem",
        "--shard-redis", "redis://a:6379/0,redis://b:6379/0", "--shard-redis", "redis://c/1",
        "--allow-private-drains", "--history", "200",
    ]))
    assert s.listen.syslog == ("tcp:6001", "ssl:6514:privateKey=k.pem:certKey=c.pem")
    assert s.redis.shards == ("redis://a:6379/0", "redis://b:6379/0", "redis://c/1")
    assert s.drains.allow_private and s.backlog.history == 200


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("LOGPLEX_CONFIG_REDIS_URL", "redis://cfg:6379/0")
    monkeypatch.setenv("LOGPLEX_SHARD_URLS", "redis://s1/0,redis://s2/0")
    monkeypatch.setenv("LOGPLEX_AUTH", "ops:pw")
    s = Settings.from_options(parse([]))
    assert s.redis.config == "redis://cfg:6379/0"
    assert s.redis.shards == ("redis://s1/0", "redis://s2/0")
    assert s.api.auth == "ops:pw"
    # The command line wins over the environment.
    assert Settings.from_options(parse(["--auth", "a:b"])).api.auth == "a:b"


@pytest.mark.parametrize("args", [
    ["--auth", "nopassword"], ["--history", "0"], ["--history", "many"],
    ["--config-redis", "http://x"], ["--shard-redis", "redis://h:port/0"],
    ["--flush-interval", "nan"], ["--drain-pushback", "-1"], ["--drain-pushback", "nan"],
    ["--stop-grace", "-1"], ["--stop-grace", "inf"], ["--stop-grace", "soon"],
])
def test_bad_options_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(args)


def test_token_bound_listeners():
    s = Settings.from_options(parse(["--syslog-token", "t.abc=tcp:6010:interface=127.0.0.1"]))
    assert s.listen.syslog_token == (("t.abc", "tcp:6010:interface=127.0.0.1"),)
    for bad in ("tcp:6010", "abc=tcp:6010", "t.abc="):
        with pytest.raises(usage.UsageError):
            parse(["--syslog-token", bad])


def test_the_namespace_defaults_to_todays_prefix_and_takes_letters_digits_underscores_dashes():
    assert Settings.from_options(parse([])).redis.namespace == "lp"
    assert Settings.from_options(parse(["--namespace", "team-a_2"])).redis.namespace == "team-a_2"
    for bad in ("", "a:b", "x" * 33, "two words", "lp*"):
        with pytest.raises(usage.UsageError, match="--namespace: .*1 to 32 letters, digits, '_' or '-'"):
            parse(["--namespace", bad])


def test_session_urls_name_the_listening_address_or_a_host_name_that_resolves(monkeypatch):
    from twisted.internet.address import IPv4Address

    from logplex import listen as service

    class Port:
        def __init__(self, host: str) -> None:
            self.address = IPv4Address("TCP", host, 8001)

        def getHost(self):
            return self.address

    assert service._default_api_url("tcp:8001:interface=127.0.0.1", Port("127.0.0.1")) == "http://127.0.0.1:8001"
    monkeypatch.setattr(service.socket, "gethostname", lambda: "no-such-host.invalid")
    assert service._default_api_url("tcp:8001", Port("0.0.0.0")) == "http://localhost:8001"
    monkeypatch.setattr(service.socket, "gethostname", lambda: "localhost")
    assert service._default_api_url("ssl:8001:privateKey=k.pem", Port("0.0.0.0")) == "https://localhost:8001"


def test_a_drain_ca_file_without_certificates_is_a_usage_error_naming_it(tmp_path):
    empty = tmp_path / "ca.pem"
    empty.write_text("not a certificate\n")
    for path, said in ((empty, "holds no PEM certificate"), (tmp_path / "missing.pem", "No such file")):
        with pytest.raises(usage.UsageError) as refused:
            parse(["--drain-ca-file", str(path)])
        assert said in str(refused.value) and str(path) in str(refused.value)


def _readme_options_table() -> dict[str, str]:
    """option name -> its default cell, from the README's Options table (wrapped cells joined)."""
    import os
    import re

    with open(os.path.join(os.path.dirname(__file__), "..", "README.rst"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index("Options") + 2
    border = next(i for i in range(start, len(lines)) if lines[i].startswith("====") and "  " in lines[i])
    columns = [m.span() for m in re.finditer(r"=+", lines[border])]
    rows: dict[str, str] = {}
    name = None
    for line in lines[border + 3:]:
        if line.startswith("===="):
            break
        first, default = (line[a:b if i < 2 else None].strip() for i, (a, b) in enumerate(columns[:2]))
        if first:
            name = re.match(r"``--([a-z0-9-]+)", first).group(1)
            rows[name] = default
        elif default:
            rows[name] += " " + default
    return rows


# Defaults the table says in words: a host's name, an embedded Redis, off ...
_IN_WORDS = {"node-name": "host name", "workers": "CPUs, or 1"}


def _as_written(value) -> str | None:
    """How the README writes a default: ``text`` for a string, a number as it reads; None: in words."""
    if isinstance(value, (list, tuple)):
        return _as_written(value[0]) if len(value) == 1 else None
    if isinstance(value, str):
        return f"``{value}``"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int) and value:
        return str(value)
    return None


def test_the_readme_options_table_names_every_option_with_its_default_and_no_other():
    options = Options()
    names = {p[0] for p in options.optParameters} | {f[0] for f in options.optFlags}
    names |= {n[4:].replace("_", "-") for n in dir(options) if n.startswith("opt_")}
    names -= {"help", "version"}
    table = _readme_options_table()
    assert sorted(names - table.keys()) == []  # every option has a row
    assert sorted(table.keys() - names) == []  # no row names an option that is gone
    defaults = Settings.defaults()
    for name, cell in table.items():
        if name in _IN_WORDS:
            assert cell == _IN_WORDS[name], name
            continue
        written = _as_written(defaults[name])
        if written is None:
            # No value (off, none, the embedded Redis ...): said in words, never as a literal.
            assert cell and not cell.startswith("``") and not cell[0].isdigit(), (name, cell)
        else:
            assert cell == written, (name, cell, written)
