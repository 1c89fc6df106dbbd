"""``logplex nodes``: the cluster's live nodes."""

from __future__ import annotations

from logplex.admin.cli.command import Cli, Commands
from logplex.admin.cli.output import duration, table


def nodes(cli: Cli) -> None:
    docs = cli.api.call("GET", "/v3/nodes")
    rows = ((n.get("node"), n.get("version"), duration(n.get("uptime") or 0), n.get("pid") or "-",
             n.get("api_url") or "-") for n in docs)
    cli.show(docs, lambda: table(rows, ("NODE", "VERSION", "UPTIME", "PID", "API URL")))


def add_commands(commands: Commands) -> None:
    commands.command("nodes", nodes, "the cluster's live nodes")
