"""What every command works with: its arguments, the API, how it prints; and how a group adds its commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from logplex.admin.cli.api import Api
from logplex.admin.cli.failure import usage_error
from logplex.admin.cli.settings import resolve


class Cli:
    """One run of the command: its arguments, the API it talks to, and its output."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.json = getattr(args, "json", False)
        self.settings = resolve(getattr(args, "url", None), getattr(args, "auth", None), environ)
        self.api = Api(self.settings)
        # Ctrl-C is how a tail ends: then it is not an interruption.
        self.ctrl_c_is_the_end = False

    def out(self, lines: Iterable[str]) -> None:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def show(self, doc: Any, human: Callable[[], Iterable[str]]) -> None:
        """The API's JSON with --json ({} for an answer without a body), else the human lines."""
        if self.json:
            self.out([json.dumps({} if doc is None else doc, indent=2)])
        else:
            self.out(human())


Handler = Callable[[Cli], None]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, raised (main prints them and exits 2)."""

    def error(self, message: str):
        raise usage_error(f'{message}; see "{self.prog} --help"')


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f'"{text}" is not a whole number')
    return int(text)


class Commands:
    """The parser's commands: each command group's module adds its own (add_commands)."""

    def __init__(self, commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.commands = commands
        # Every level knows the global options (see program.parser).
        self.common = common

    def group(self, name: str, help: str) -> argparse._SubParsersAction:
        """A command of actions (``logplex channels list``)."""
        p = self.commands.add_parser(name, parents=[self.common], help=help, description=help)
        p.set_defaults(handler=None, group=p)
        return p.add_subparsers(title="actions", metavar="ACTION")

    def leaf(self, actions: argparse._SubParsersAction, name: str, handler: Handler, help: str) -> Parser:
        """An action of a group."""
        p = actions.add_parser(name, parents=[self.common], help=help, description=help)
        p.set_defaults(handler=handler)
        return p

    def command(self, name: str, handler: Handler, help: str, description: str | None = None) -> Parser:
        """A command without actions (``logplex logs``)."""
        p = self.commands.add_parser(name, parents=[self.common], help=help, description=description)
        p.set_defaults(handler=handler)
        return p
