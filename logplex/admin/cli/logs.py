"""``logplex logs``: a channel's recent lines through a session, and with -t its live ones."""

from __future__ import annotations

import sys

from logplex.admin.cli.command import Cli, Commands, count
from logplex.admin.cli.failure import API_ERROR, Failure, usage_error


def logs(cli: Cli) -> None:
    if cli.json:
        raise usage_error("--json does not apply to logs: it prints the log lines as they are")
    channel = cli.args.channel
    request = {"channel_id": channel, "num": cli.args.num, "tail": cli.args.tail}
    if cli.args.ps:
        request["ps"] = cli.args.ps
    if cli.args.source:
        request["source"] = cli.args.source
    try:
        doc = cli.api.call("POST", "/v2/sessions", request)
    except Failure as f:
        # An unknown channel is a 422 here, as in logplex: tell it apart from other 422s.
        if f.status == 422 and cli.api.channel_exists(channel) is False:
            raise Failure(f'channel "{channel}" does not exist (404)', API_ERROR, 404) from None
        raise
    if not isinstance(doc, dict) or not isinstance(doc.get("url"), str):
        raise Failure("the node answered a session without a URL", API_ERROR)
    cli.ctrl_c_is_the_end = cli.args.tail
    stdout = getattr(sys.stdout, "buffer", None)
    for line in cli.api.lines(doc["url"], tail=cli.args.tail):
        if stdout is not None:
            stdout.write(line)
            stdout.flush()
        else:
            sys.stdout.write(line.decode("utf-8", "replace"))
            sys.stdout.flush()


def add_commands(commands: Commands) -> None:
    p = commands.command("logs", logs, "a channel's recent lines; -t keeps streaming",
                         description="Print a channel's recent lines, oldest first; with -t, then its "
                                     "live lines until Ctrl-C.")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("-n", "--num", type=count, default=100, help="how many recent lines (default 100)")
    p.add_argument("-t", "--tail", action="store_true", help="keep streaming live lines")
    p.add_argument("-p", "--ps", help='only this process ("web" matches web.1, web.2 …)')
    p.add_argument("-s", "--source", help="only this source (the token's name)")
