"""Which implementation of the per-message loops runs: the compiled logplex._hot, or the pure-Python code.

logplex._hot is an optional C extension (built from logplex/_hot.pyx by
``pip install .`` when a C compiler is there). framing, syslog and
drains.formats ask ``compiled()`` while importing and bind its twins in place
of their pure functions; LOGPLEX_PURE_PYTHON=1 keeps the pure ones. ``HOT_PATH`` says which
runs and why, for the node's start-up log line.
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "LOGPLEX_PURE_PYTHON"
# The functions this Python code expects of logplex._hot (its API constant).
EXPECTED_API = 5


def _load() -> tuple[ModuleType | None, str]:
    chosen = os.environ.get(PURE_ENV, "")
    if chosen not in ("", "0"):
        return None, f"pure ({PURE_ENV}={chosen})"
    try:
        from logplex import _hot
    except ImportError as e:
        return None, (f"pure (the compiled extension logplex._hot is not built: {e}; "
                      "`pip install .` with a C compiler builds it)")
    api = getattr(_hot, "API", None)
    if api != EXPECTED_API:
        # A stale in-place build: its functions may not be the ones this code calls.
        return None, (f"pure (logplex._hot has API {api}, this code expects {EXPECTED_API}: "
                      "rebuild it with `python setup.py build_ext --inplace` or `pip install .`)")
    return _hot, "compiled"


_HOT, HOT_PATH = _load()


def compiled() -> ModuleType | None:
    """The compiled module when it is to run, else None (pure Python)."""
    return _HOT
