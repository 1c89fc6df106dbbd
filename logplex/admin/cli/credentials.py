"""``logplex creds``: API credentials, whose secret is shown once, at creation."""

from __future__ import annotations

import urllib.parse
from typing import Any

from logplex.admin.cli.command import Cli, Commands
from logplex.admin.cli.failure import usage_error
from logplex.admin.cli.output import fields, table

PERMISSIONS = ("full_api", "any_channel", "read_channel")


def create(cli: Cli) -> None:
    request: dict[str, Any] = {}
    if cli.args.perms:
        request["perms"] = sorted(set(cli.args.perms))
    channels = sorted(set(cli.args.channels or []))
    if ("read_channel" in (cli.args.perms or [])) != bool(channels):
        raise usage_error("--perm read_channel needs --channel CHANNEL (repeatable), "
                          "and --channel needs --perm read_channel")
    if channels:
        request["channels"] = channels
    if cli.args.note is not None:
        request["note"] = cli.args.note
    doc = cli.api.call("POST", "/v3/credentials", request)

    def human() -> list[str]:
        pairs = [("id", doc["id"]), ("secret", doc["secret"]), ("perms", ",".join(doc["perms"]))]
        if doc.get("channels"):
            pairs.append(("channels", ",".join(doc["channels"])))
        return fields(pairs + [("note", doc.get("note") or "")])

    cli.show(doc, human)


def list_all(cli: Cli) -> None:
    docs = cli.api.call("GET", "/v3/credentials")
    rows = ((c["id"], ",".join(c["perms"]), ",".join(c.get("channels") or []) or "-", c.get("note") or "")
            for c in docs)
    cli.show(docs, lambda: table(rows, ("ID", "PERMS", "CHANNELS", "NOTE")))


def delete(cli: Cli) -> None:
    cred_id = cli.args.id
    doc = cli.api.call("DELETE", "/v3/credentials/" + urllib.parse.quote(cred_id, safe="@"),
                       missing=f'credential "{cred_id}" does not exist')
    cli.show(doc, lambda: [f'deleted credential "{cred_id}"'])


def add_commands(commands: Commands) -> None:
    creds = commands.group("creds", "API credentials")
    p = commands.leaf(creds, "create", create, "create a credential; its secret is shown only now")
    p.add_argument("--perm", dest="perms", action="append", choices=PERMISSIONS,
                   help="a permission (repeatable; default full_api)")
    p.add_argument("--channel", dest="channels", action="append", metavar="CHANNEL",
                   help="a channel a read_channel credential may read (repeatable)")
    p.add_argument("--note", help="what the credential is for")
    commands.leaf(creds, "list", list_all, "the credentials (without secrets)")
    p = commands.leaf(creds, "delete", delete, "delete a credential")
    p.add_argument("id", metavar="ID")
