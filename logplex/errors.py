"""What the domain refuses, without a word of HTTP: the API says which status each one answers."""

from __future__ import annotations


class ConfigError(Exception):
    """A request the config cannot satisfy (a bad value, a broken record)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ConfigError):
    """No such channel, token, drain, credential or session."""


class Conflict(ConfigError):
    """The change would break a rule of what is already there (a drain URL twice on a channel)."""


class Unavailable(ConfigError):
    """The config Redis cannot be read or written now; asking again later may work."""


class StartFailed(Exception):
    """A node cannot start for a reason its operator can fix; the message says how."""
