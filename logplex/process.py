"""How a node's process ends under twistd, which exits 0 whatever happened."""

from __future__ import annotations

import atexit
import os
import sys


def exit_status_at_exit(status: int) -> None:
    """Make this process exit with status after everything else has run (twistd exits 0)."""

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(leave)
