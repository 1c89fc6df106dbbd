"""The `logplex` command: run as a process against a real node, and its argument handling without one."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

from logplex.admin import cli
from logplex.admin.cli import channels, drains, failure, output, program, settings
from tests.harness.client import TS, octet, send_syslog, syslog_message, unique, wait_for
from tests.harness.procs import REPO_ROOT, free_port

COMMAND = [sys.executable, "-m", "logplex.admin.cli"]
AUTH_FAILED = "logplex: authentication failed (401): check --auth, LOGPLEX_AUTH or ~/.netrc\n"


def clean_env(home, **settings: str) -> dict[str, str]:
    """The test's environment without any LOGPLEX_* of the caller's, HOME an empty directory, plus settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGPLEX_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    env.update(settings)
    return env


@pytest.fixture
def env(node, tmp_path):
    return clean_env(tmp_path, LOGPLEX_URL=node.api_url, LOGPLEX_AUTH="admin:secret")


@pytest.fixture
def run(env):
    def run(*args: str, env: dict[str, str] = env) -> subprocess.CompletedProcess:
        return subprocess.run([*COMMAND, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)

    return run


def ok(done: subprocess.CompletedProcess) -> str:
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def fails(done: subprocess.CompletedProcess, code: int) -> str:
    """The one line on stderr of a command that exited with code, and printed nothing."""
    assert done.returncode == code, done
    assert done.stdout == "", done
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("logplex: "), done
    return done.stderr


class Lines:
    """Lines of a process's stdout, each awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {timeout} s; so far {self.buffer!r}"
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 65536)
                assert chunk, f"stdout ended; so far {self.buffer!r}, stderr {self.proc.stderr.read()!r}"
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode() + "\n"


def tail(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([*COMMAND, "logs", *args, "-t"], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)


def send(node, token: str, procid: str, *texts: str) -> None:
    send_syslog(node.syslog_port, b"".join(octet(syslog_message(token, procid, t)) for t in texts))


def channel_text(channel: str, tokens: dict[str, str], drains: dict[int, str] | None = None) -> str:
    lines = [f"channel: {channel}"]
    if tokens:
        width = max(map(len, tokens))
        lines += ["tokens:"] + [f"  {name.ljust(width)}  {tokens[name]}" for name in sorted(tokens)]
    else:
        lines.append("tokens: none")
    if drains:
        width = max(len(str(i)) for i in drains)
        lines += ["drains:"] + [f"  {str(i).ljust(width)}  {drains[i]}" for i in sorted(drains)]
    else:
        lines.append("drains: none")
    return "\n".join(lines) + "\n"


# -- against a node ------------------------------------------------------------------------------
def test_channel_create_show_add_token_delete(node, run):
    channel = unique("cli")
    created = ok(run("channels", "create", channel, "--token", "web", "--token", "app"))
    tokens = node.api("GET", f"/v3/channels/{channel}").json()["tokens"]
    assert sorted(tokens) == ["app", "web"]
    assert created == channel_text(channel, tokens)
    assert ok(run("channels", "show", channel)) == created

    added = ok(run("tokens", "add", channel, "worker"))
    tokens = node.api("GET", f"/v3/channels/{channel}").json()["tokens"]
    assert added == f"worker  {tokens['worker']}\n"
    assert ok(run("channels", "show", channel)) == channel_text(channel, tokens)

    # create never replaces the tokens of a channel that exists
    assert fails(run("channels", "create", channel, "--token", "x"), 1) == (
        f'logplex: channel "{channel}" already exists: "logplex tokens add" adds a token to it\n')
    assert node.api("GET", f"/v3/channels/{channel}").json()["tokens"] == tokens

    assert ok(run("channels", "delete", channel)) == f'deleted channel "{channel}"\n'
    assert node.api("GET", f"/v3/channels/{channel}").status == 404
    for args in (["channels", "show", channel], ["channels", "delete", channel], ["tokens", "add", channel, "a"],
                 ["drains", "list", channel], ["drains", "show", channel, "1"], ["logs", channel]):
        assert fails(run(*args), 1) == f'logplex: channel "{channel}" does not exist (404)\n', args


def test_channels_list_shows_every_channel_with_token_names(node, run):
    channel = unique("cli")
    ok(run("channels", "create", channel, "--token", "web", "--token", "app"))
    listed = ok(run("channels", "list"))
    assert listed.startswith("CHANNEL")
    row = next(line for line in listed.splitlines() if line.startswith(channel + " "))
    assert row.split() == [channel, "app,web", "0"]
    assert "t." not in row
    everything = json.loads(ok(run("--json", "channels", "list")))["channels"]
    assert {"channel": channel, "tokens": ["app", "web"], "drains": 0} in everything


def test_channel_without_tokens_and_json(node, run):
    channel = unique("cli")
    assert ok(run("channels", "create", channel)) == channel_text(channel, {})
    token = json.loads(ok(run("--json", "tokens", "add", channel, "app")))
    assert token["name"] == "app" and token["token"].startswith("t.")
    # --json after the command works too, and is the API's document as it is
    shown = json.loads(ok(run("channels", "show", channel, "--json")))
    assert shown == node.api("GET", f"/v3/channels/{channel}").json() == {
        "channel": channel, "tokens": {"app": token["token"]}}
    assert json.loads(ok(run("--json", "channels", "delete", channel))) == {}


def test_logs_prints_the_last_lines_in_tail_format(node, run):
    channel, tokens = node.channel("app")
    send(node, tokens["app"], "web.1", "one", "two")
    send(node, tokens["app"], "worker.2", "three")
    node.wait_backlog(channel, 3)
    assert ok(run("logs", channel, "-n", "2")) == f"{TS} app[web.1]: two\n{TS} app[worker.2]: three\n"
    assert ok(run("logs", channel, "--ps", "web")) == f"{TS} app[web.1]: one\n{TS} app[web.1]: two\n"
    assert ok(run("logs", channel, "--source", "other")) == ""


def test_logs_tail_shows_live_lines_and_stops_cleanly_on_ctrl_c(node, env):
    channel, tokens = node.channel("app")
    send(node, tokens["app"], "web.1", "before")
    node.wait_backlog(channel, 1)
    proc = tail(env, channel)
    try:
        lines = Lines(proc)
        # The backlog is printed once the tail is registered: what is sent now is live.
        assert lines.next() == f"{TS} app[web.1]: before\n"
        send(node, tokens["app"], "web.1", "live")
        assert lines.next() == f"{TS} app[web.1]: live\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_closed_stdout_ends_the_tail_quietly(node, env):
    channel, tokens = node.channel("app")
    send(node, tokens["app"], "web.1", "first")
    node.wait_backlog(channel, 1)
    proc = tail(env, channel)
    try:
        assert Lines(proc).next() == f"{TS} app[web.1]: first\n"
        proc.stdout.close()  # what `| head -1` does after its line
        send(node, tokens["app"], "web.1", "nobody reads this")
        assert proc.wait(10) == 0
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_drains_add_list_show_remove(node, run):
    channel, _ = node.channel("app")
    url = "http://127.0.0.1:9/x"
    added = ok(run("drains", "add", channel, url))
    (drain,) = node.api("GET", f"/v3/channels/{channel}").json()["drains"]
    assert added == (f"id:     {drain['id']}\n"
                     f"url:    {url}\n"
                     f"token:  {drain['token']}\n")
    assert ok(run("drains", "list", channel)) == f"{drain['id']}  {url}\n"
    assert json.loads(ok(run("--json", "drains", "list", channel))) == [drain]
    assert ok(run("channels", "show", channel)) == channel_text(
        channel, node.api("GET", f"/v3/channels/{channel}").json()["tokens"], {drain["id"]: url})
    assert fails(run("drains", "add", channel, url), 1).endswith("(409)\n")
    assert fails(run("drains", "add", channel, "gopher://x"), 1).endswith("(400)\n")

    path = f"/v3/channels/{channel}/drains/{drain['id']}"
    wait_for(lambda: node.api("GET", path).json()["state"], lambda state: state is not None)
    shown = ok(run("drains", "show", channel, str(drain["id"]))).splitlines()
    # the keys padded to the longest, "holding senders:"
    assert shown[:3] == [f"id:{' ' * 15}{drain['id']}", f"url:{' ' * 14}{url}", f"token:{' ' * 12}{drain['token']}"]
    assert [line.split(":")[0] for line in shown[3:]] == [
        "delivered", "dropped", "retried", "buffered", "spool depth", "holding senders", "last error"]
    as_json = json.loads(ok(run("--json", "drains", "show", channel, str(drain["id"]))))
    api = node.api("GET", path).json()
    assert {k: v for k, v in as_json.items() if k != "state"} == {k: v for k, v in api.items() if k != "state"}
    assert as_json["state"].keys() == api["state"].keys()

    assert ok(run("drains", "remove", channel, str(drain["id"]))) == (
        f'removed drain {drain["id"]} from channel "{channel}"\n')
    assert ok(run("drains", "list", channel)) == ""
    assert fails(run("drains", "show", channel, str(drain["id"])), 1) == (
        f'logplex: channel "{channel}" has no drain {drain["id"]} (404)\n')
    assert fails(run("drains", "remove", channel, str(drain["id"])), 1) == (
        f'logplex: channel "{channel}" has no drain {drain["id"]} (404)\n')


def test_creds_create_list_delete(node, run, env):
    created = ok(run("creds", "create", "--perm", "full_api", "--note", "cli test"))
    doc = dict(line.split(":", 1) for line in created.splitlines())
    cred_id, secret = doc["id"].strip(), doc["secret"].strip()
    assert (doc["perms"].strip(), doc["note"].strip()) == ("full_api", "cli test")
    assert created.splitlines()[0] == f"id:      {cred_id}"

    listed = ok(run("creds", "list")).splitlines()
    assert listed[0].split() == ["ID", "PERMS", "CHANNELS", "NOTE"]
    assert any(line.split(None, 3) == [cred_id, "full_api", "-", "cli test"] for line in listed[1:]), listed
    assert {"id": cred_id, "perms": ["full_api"], "note": "cli test"} in json.loads(ok(run("--json", "creds", "list")))

    # the new credential works at once, given as --auth over a wrong LOGPLEX_AUTH
    wrong_env = dict(env, LOGPLEX_AUTH="admin:wrong")
    ok(run("--auth", f"{cred_id}:{secret}", "nodes", env=wrong_env))
    poster = json.loads(ok(run("--json", "creds", "create", "--perm", "any_channel")))
    assert poster["perms"] == ["any_channel"] and poster["note"] == ""
    assert fails(run("nodes", "--auth", f"{poster['id']}:{poster['secret']}"), 1) == (
        "logplex: this credential lacks the full_api permission (403)\n")

    channel, _ = node.channel("app")
    reader = ok(run("creds", "create", "--perm", "read_channel", "--channel", channel)).splitlines()
    assert [line.split(":")[0] for line in reader] == ["id", "secret", "perms", "channels", "note"]
    assert reader[3] == f"channels:  {channel}"
    reader_id = reader[0].split()[1]
    assert any(line.split() == [reader_id, "read_channel", channel] for line in ok(run("creds", "list")).splitlines())
    assert fails(run("creds", "create", "--perm", "read_channel"), 2) == (
        "logplex: --perm read_channel needs --channel CHANNEL (repeatable), and --channel needs --perm read_channel\n")
    ok(run("creds", "delete", reader_id))

    assert ok(run("creds", "delete", cred_id)) == f'deleted credential "{cred_id}"\n'
    assert fails(run("creds", "delete", cred_id), 1) == f'logplex: credential "{cred_id}" does not exist (404)\n'
    assert fails(run("--auth", f"{cred_id}:{secret}", "nodes"), 1) == AUTH_FAILED
    assert json.loads(ok(run("--json", "creds", "delete", poster["id"]))) == {}


def test_nodes(node, run):
    lines = ok(run("nodes")).splitlines()
    assert lines[0].split() == ["NODE", "VERSION", "UPTIME", "PID", "API", "URL"]
    (mine,) = [line for line in lines[1:] if line.endswith(node.api_url)]
    assert mine.split()[0] == node.proc.name
    (doc,) = [n for n in json.loads(ok(run("--json", "nodes"))) if n["api_url"] == node.api_url]
    assert doc["node"] == node.proc.name and str(doc["pid"]) == mine.split()[-2]


def test_errors_are_one_line_with_their_exit_code(node, run, env, tmp_path):
    assert fails(run("nodes", env=dict(env, LOGPLEX_AUTH="admin:wrong")), 1) == AUTH_FAILED
    no_credential = {k: v for k, v in env.items() if k != "LOGPLEX_AUTH"}
    assert "no credential given (401)" in fails(run("nodes", env=no_credential), 1)
    port = free_port()
    assert fails(run("--url", f"http://127.0.0.1:{port}", "nodes"), 3) == (
        f"logplex: cannot reach http://127.0.0.1:{port}: connection refused\n")
    assert fails(run("channels", "show", "a/b"), 1) == 'logplex: channel "a/b" does not exist (404)\n'
    assert fails(run("channels", "create", "_bad"), 1) == (
        "logplex: a channel id is 1-128 characters: letters, digits and . _ : @ -, "
        "starting with a letter or digit (422)\n")
    for args in (["channels"], ["channels", "show"], ["bogus"], ["drains", "show", "ch", "one"],
                 ["logs", "ch", "-n", "-1"], ["--auth", "nocolon", "nodes"], ["--url", "ftp://x", "nodes"],
                 ["logs", "ch", "--json"], ["creds", "create", "--perm", "root"]):
        assert "logplex" in fails(run(*args), 2), args
    bare = run()
    assert bare.returncode == 2 and bare.stdout == "" and "usage: logplex" in bare.stderr


def test_netrc_gives_the_credential_when_nothing_else_does(node, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    netrc = home / ".netrc"
    netrc.write_text("machine elsewhere login admin password wrong\n"
                     "machine 127.0.0.1 login admin password secret\n")
    netrc.chmod(0o600)
    env = clean_env(home)
    done = subprocess.run([*COMMAND, "--url", node.api_url, "--json", "nodes"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stderr) == (0, "") and isinstance(json.loads(done.stdout), list)
    netrc.chmod(0o644)
    done = subprocess.run([*COMMAND, "--url", node.api_url, "nodes"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and done.stderr == (
        f"logplex: {netrc} holds passwords, so it must be yours and private: chmod 600 {netrc}\n")


# -- without a node ----------------------------------------------------------------------------------
def write_netrc(home, text: str) -> None:
    path = home / ".netrc"
    path.write_text(text)
    path.chmod(0o600)


def test_default_url_and_no_credential(tmp_path):
    assert settings.resolve(None, None, {"HOME": str(tmp_path)}) == settings.Settings("http://localhost:8001", None, "")


def test_flags_beat_environment_beats_netrc(tmp_path):
    write_netrc(tmp_path, "machine api.example.com login n password np\ndefault login d password dp\n")
    env = {"HOME": str(tmp_path), "LOGPLEX_URL": "http://api.example.com:8001/", "LOGPLEX_AUTH": "e:ep"}
    assert settings.resolve("https://other.example.com", "f:f:p", env) == settings.Settings(
        "https://other.example.com", ("f", "f:p"), "--auth")
    assert settings.resolve(None, None, env) == settings.Settings("http://api.example.com:8001", ("e", "ep"), "LOGPLEX_AUTH")
    del env["LOGPLEX_AUTH"]
    # netrc: the entry of the URL's host name (its port aside), else the default entry
    assert settings.resolve(None, None, env) == settings.Settings("http://api.example.com:8001", ("n", "np"), "~/.netrc")
    assert settings.resolve("http://third.example.com", None, env).auth == ("d", "dp")
    assert settings.resolve(None, None, dict(env, LOGPLEX_URL="", LOGPLEX_AUTH="")).url == "http://localhost:8001"


@pytest.mark.parametrize("url_flag, auth_flag, environ", [
    (None, "nocolon", {}),
    (None, ":nouser", {}),
    (None, None, {"LOGPLEX_AUTH": "nocolon"}),
    ("localhost:8001", None, {}),
    ("http://u:p@localhost:8001", None, {}),
    ("http://localhost:x", None, {}),
    (None, None, {"LOGPLEX_URL": "ftp://localhost"}),
])
def test_bad_settings_are_usage_errors(tmp_path, url_flag, auth_flag, environ):
    with pytest.raises(failure.Failure) as e:
        settings.resolve(url_flag, auth_flag, {"HOME": str(tmp_path), **environ})
    assert e.value.code == 2


def test_a_netrc_others_can_read_is_refused(tmp_path):
    write_netrc(tmp_path, "machine localhost login n password np\n")
    (tmp_path / ".netrc").chmod(0o640)
    with pytest.raises(failure.Failure) as e:
        settings.resolve(None, None, {"HOME": str(tmp_path)})
    assert e.value.code == 2 and "chmod 600" in e.value.message
    # not read at all when the credential comes from elsewhere
    assert settings.resolve(None, "a:b", {"HOME": str(tmp_path)}).auth == ("a", "b")


def test_parsing_commands_and_options_in_any_place():
    args = program.parse(["channels", "create", "app", "--token", "web", "--token", "worker", "--url", "http://x"])
    assert (args.handler, args.name, args.tokens, args.url) == (channels.create, "app", ["web", "worker"],
                                                                    "http://x")
    args = program.parse(["--json", "--auth", "a:b", "logs", "app"])
    assert (args.json, args.auth, args.num, args.tail, args.ps, args.source) == (True, "a:b", 100, False, None, None)
    args = program.parse(["logs", "app", "-n", "5", "-t", "--ps", "web", "-s", "app"])
    assert (args.num, args.tail, args.ps, args.source) == (5, True, "web", "app")
    args = program.parse(["drains", "show", "app", "12"])
    assert (args.handler, args.channel, args.id) == (drains.show, "app", 12)
    args = program.parse(["creds", "create", "--perm", "any_channel", "--perm", "read_channel", "--channel", "a",
                      "--channel", "b", "--note", "n"])
    assert (args.perms, args.channels, args.note) == (["any_channel", "read_channel"], ["a", "b"], "n")
    assert not hasattr(program.parse(["nodes"]), "json")


def test_main_usage_and_connection_errors(tmp_path, capsys):
    assert cli.main(["drains", "remove", "app"], {"HOME": str(tmp_path)}) == 2
    assert capsys.readouterr().err == (
        'logplex: the following arguments are required: ID; see "logplex drains remove --help"\n')
    port = free_port()
    assert cli.main(["--url", f"http://127.0.0.1:{port}", "channels", "show", "x"], {"HOME": str(tmp_path)}) == 3
    assert capsys.readouterr().err == f"logplex: cannot reach http://127.0.0.1:{port}: connection refused\n"


def test_ctrl_c_while_waiting_for_an_answer_exits_130_quietly(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.Popen([*COMMAND, "--url", url, "nodes"], env=clean_env(tmp_path), cwd=REPO_ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            conn, _ = server.accept()  # the request is on its way; no answer comes
            with conn:
                proc.send_signal(signal.SIGINT)
                assert proc.wait(10) == 130
            assert proc.communicate() == (b"", b"")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_human_formatting():
    assert output.table([(1, "http://a"), (123, "syslog://b")]) == ["1    http://a", "123  syslog://b"]
    assert output.table([("ab", "x", "")], ("ID", "PERMS", "NOTE")) == ["ID  PERMS  NOTE", "ab  x"]
    assert output.fields([("id", 3), ("last error", None)]) == ["id:          3", "last error:  -"]
    assert [output.duration(s) for s in (5, 65, 3720, 90061)] == ["5s", "1m 05s", "1h 02m", "1d 01h"]
