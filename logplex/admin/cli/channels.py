"""``logplex channels`` and ``logplex tokens``: a channel's life, and the tokens that write to it."""

from __future__ import annotations

import urllib.parse

from logplex.admin.cli.api import channel_path
from logplex.admin.cli.command import Cli, Commands
from logplex.admin.cli.failure import API_ERROR, Failure
from logplex.admin.cli.output import table


def channel_lines(doc: dict) -> list[str]:
    tokens = sorted((doc.get("tokens") or {}).items())
    drains = sorted((d["id"], d.get("url") or "") for d in doc.get("drains") or [])
    lines = [f"channel: {doc.get('channel')}"]
    lines += ["tokens:", *("  " + line for line in table(tokens))] if tokens else ["tokens: none"]
    lines += ["drains:", *("  " + line for line in table(drains))] if drains else ["drains: none"]
    return lines


def create(cli: Cli) -> None:
    name = cli.args.name
    if cli.api.channel_exists(name):
        raise Failure(f'channel "{name}" already exists: "logplex tokens add" adds a token to it', API_ERROR)
    doc = cli.api.call("PUT", channel_path(name), {"tokens": cli.args.tokens or []})
    cli.show(doc, lambda: channel_lines(doc))


def list_all(cli: Cli) -> None:
    channels: list[dict] = []
    after = None
    while True:  # every page, in channel id order
        query = urllib.parse.urlencode({"limit": 500, **({"after": after} if after else {})})
        page = cli.api.call("GET", "/v3/channels?" + query)
        channels += page["channels"]
        after = page.get("next")
        if not after:
            break
    rows = ((c["channel"], ",".join(c.get("tokens") or []) or "-", c.get("drains", 0)) for c in channels)
    cli.show({"channels": channels}, lambda: table(rows, ("CHANNEL", "TOKENS", "DRAINS")))


def show(cli: Cli) -> None:
    name = cli.args.name
    doc = cli.api.call("GET", channel_path(name), missing=f'channel "{name}" does not exist')
    cli.show(doc, lambda: channel_lines(doc))


def delete(cli: Cli) -> None:
    name = cli.args.name
    doc = cli.api.call("DELETE", channel_path(name), missing=f'channel "{name}" does not exist')
    cli.show(doc, lambda: [f'deleted channel "{name}"'])


def add_token(cli: Cli) -> None:
    channel = cli.args.channel
    doc = cli.api.call("POST", channel_path(channel) + "/tokens", {"name": cli.args.name},
                       missing=f'channel "{channel}" does not exist')
    cli.show(doc, lambda: table([(doc["name"], doc["token"])]))


def add_commands(commands: Commands) -> None:
    channels = commands.group("channels", "list, create, show and delete channels")
    commands.leaf(channels, "list", list_all, "every channel, with its token names and drain count")
    p = commands.leaf(channels, "create", create, "create a channel (refused if it exists)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--token", dest="tokens", action="append", metavar="NAME",
                   help="a token to create with it (repeatable)")
    p = commands.leaf(channels, "show", show, "a channel, its tokens and drains")
    p.add_argument("name", metavar="NAME")
    p = commands.leaf(channels, "delete", delete, "delete a channel, its tokens, drains and backlog")
    p.add_argument("name", metavar="NAME")

    tokens = commands.group("tokens", "add tokens to channels")
    p = commands.leaf(tokens, "add", add_token, "add a token; prints its name and value")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("name", metavar="NAME")
