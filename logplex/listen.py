"""Listening sockets: a deeper accept queue than Twisted's default of 50.

When a node restarts, every sender of a busy cluster reconnects within a
second or two; with a queue of 50 the rest of their SYNs are dropped and
retried seconds later. An explicit `backlog=` in an endpoint description
wins; the kernel caps the figure at net.core.somaxconn.
"""

from __future__ import annotations

LISTEN_BACKLOG = 1024
_TYPES_WITH_BACKLOG = ("tcp:", "tcp6:", "ssl:", "unix:")


def with_backlog(description: str, backlog: int = LISTEN_BACKLOG) -> str:
    """The endpoint description with backlog= added where the type takes one and none is given."""
    if description.startswith(_TYPES_WITH_BACKLOG) and "backlog=" not in description:
        return f"{description}:backlog={backlog}"
    return description
