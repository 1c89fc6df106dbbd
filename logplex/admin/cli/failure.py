"""How a command ends: its exit codes, and the Failure that carries one with its sentence."""

from __future__ import annotations

OK = 0
API_ERROR = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130


class Failure(Exception):
    """Ends the command: ``logplex: <message>`` on stderr, and code as the exit status."""

    def __init__(self, message: str, code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def usage_error(message: str) -> Failure:
    return Failure(message, USAGE)
