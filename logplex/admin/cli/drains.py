"""``logplex drains``: add, list, show and remove a channel's drains."""

from __future__ import annotations

from typing import Any

from logplex.admin.cli.api import channel_path
from logplex.admin.cli.command import Cli, Commands, count
from logplex.admin.cli.failure import API_ERROR, Failure
from logplex.admin.cli.output import fields, table, utc

STATE_FIELDS = ("delivered", "dropped", "retried", "buffered", "spool_depth", "holding_senders")


def drain_lines(doc: dict) -> list[str]:
    pairs = [("id", doc.get("id")), ("url", doc.get("url")), ("token", doc.get("token"))]
    if "state" in doc:
        state = doc["state"]
        if state is None:
            pairs.append(("state", "not running on this node"))
        else:
            pairs += [(k.replace("_", " "), state.get(k)) for k in STATE_FIELDS if k in state]
            error = state.get("last_error")
            if error is not None and state.get("last_error_at") is not None:
                error = f"{error} (at {utc(state['last_error_at'])})"
            pairs.append(("last error", error))
            shown = set(STATE_FIELDS) | {"last_error", "last_error_at"}
            pairs += [(k.replace("_", " "), v) for k, v in state.items() if k not in shown]
    return fields(pairs)


def _drain_call(cli: Cli, method: str, doc: Any = None) -> Any:
    channel, drain_id = cli.args.channel, cli.args.id
    try:
        return cli.api.call(method, f"{channel_path(channel)}/drains/{drain_id}", doc)
    except Failure as f:
        # A 404 is either: ask which.
        if f.status == 404 and cli.api.channel_exists(channel) is False:
            raise Failure(f'channel "{channel}" does not exist (404)', API_ERROR, 404) from None
        if f.status == 404:
            raise Failure(f'channel "{channel}" has no drain {drain_id} (404)', API_ERROR, 404) from None
        raise


def add(cli: Cli) -> None:
    channel = cli.args.channel
    doc = cli.api.call("POST", channel_path(channel) + "/drains", {"url": cli.args.drain_url},
                       missing=f'channel "{channel}" does not exist')
    cli.show(doc, lambda: drain_lines(doc))


def list_all(cli: Cli) -> None:
    # The API has no list of drains: they are part of the channel's description.
    channel = cli.args.channel
    doc = cli.api.call("GET", channel_path(channel), missing=f'channel "{channel}" does not exist')
    drains = sorted(doc.get("drains") or [], key=lambda d: d["id"])
    cli.show(drains, lambda: table((d["id"], d.get("url") or "") for d in drains))


def show(cli: Cli) -> None:
    doc = _drain_call(cli, "GET")
    cli.show(doc, lambda: drain_lines(doc))


def remove(cli: Cli) -> None:
    doc = _drain_call(cli, "DELETE")
    cli.show(doc, lambda: [f'removed drain {cli.args.id} from channel "{cli.args.channel}"'])


def add_commands(commands: Commands) -> None:
    drains = commands.group("drains", "add, list, show and remove a channel's drains")
    p = commands.leaf(drains, "add", add, "add a drain (http://, https://, syslog://, syslog+tls://)")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("drain_url", metavar="URL")
    p = commands.leaf(drains, "list", list_all, "a channel's drains: id and URL")
    p.add_argument("channel", metavar="CHANNEL")
    p = commands.leaf(drains, "show", show, "a drain, with this node's delivery state")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("id", metavar="ID", type=count)
    p = commands.leaf(drains, "remove", remove, "remove a drain")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("id", metavar="ID", type=count)
