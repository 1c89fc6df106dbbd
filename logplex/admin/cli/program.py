"""The ``logplex`` program: its argument parser, made of the command groups, and main."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from logplex import __version__
from logplex.admin.cli import channels, credentials, drains, logs, nodes
from logplex.admin.cli.command import Cli, Commands, Parser
from logplex.admin.cli.failure import INTERRUPTED, OK, USAGE, Failure

EPILOG = """\
connection: --url, else LOGPLEX_URL, else http://localhost:8001; credential:
--auth, else LOGPLEX_AUTH, else the ~/.netrc entry of the URL's host.
exit codes: 0 done, 1 the API refused, 2 bad usage, 3 node unreachable or
connection lost, 130 Ctrl-C (logs -t: 0)."""


def parser() -> Parser:
    # The global options work before or after the command: every level knows them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help="the node's API (env LOGPLEX_URL; default http://localhost:8001)")
    common.add_argument("--auth", default=argparse.SUPPRESS, metavar="USER:PASSWORD",
                        help="API credential (env LOGPLEX_AUTH, else ~/.netrc)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of text")

    top = Parser(prog="logplex", parents=[common], description="Manage a logplex cluster and read its logs.",
                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"logplex {__version__}")
    top.set_defaults(handler=None, group=top)
    commands = Commands(top.add_subparsers(title="commands", metavar="COMMAND"), common)
    for group in (channels, drains, logs, credentials, nodes):
        group.add_commands(commands)
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.handler is None:
        if argv:
            args.group.error("a command is missing" if args.group is p else "an action is missing")
        p.print_help(sys.stderr)
        raise Failure("", USAGE)
    return args


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    cli = None
    try:
        try:
            args = parse(argv)
            cli = Cli(args, environ)
            args.handler(cli)
            return OK
        except KeyboardInterrupt:
            return OK if cli is not None and cli.ctrl_c_is_the_end else INTERRUPTED
        except BrokenPipeError:
            # The reader left (| head): stop quietly, and keep the exit-time flush quiet too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return OK
    except Failure as f:
        if f.message:
            sys.stderr.write(f"logplex: {f.message}\n")
            sys.stderr.flush()
        return f.code
    except KeyboardInterrupt:
        return INTERRUPTED
