"""Tests for logplex.hotpath: which implementation of the hot loops runs, and that the modules run it."""

from __future__ import annotations

import os
import subprocess
import sys

from logplex import framing, hotpath, syslog
from logplex.drains import formats as drain_formats
from logplex.redis import connection

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("from logplex import framing, hotpath, syslog; "
         "print(hotpath.HOT_PATH); print(framing.scan is framing._scan, syslog.split_header is syslog.pure_split_header)")


def probe(**env: str) -> list[str]:
    """HOT_PATH and whether the pure functions are bound, in a fresh interpreter with ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != hotpath.PURE_ENV}
    environ.update(env, PYTHONPATH=REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True,
                          check=True, cwd=REPO_ROOT)
    return done.stdout.splitlines()


def test_modules_run_the_path_hotpath_names() -> None:
    """framing and syslog bind the compiled twins exactly when hotpath says the compiled path runs."""
    if hotpath.compiled() is None:
        assert hotpath.HOT_PATH.startswith("pure (")
        assert framing.scan is framing._scan and syslog.split_header is syslog.pure_split_header
        assert syslog.cook is syslog.pure_cook
        assert drain_formats.http_body is drain_formats.pure_http_body
        assert drain_formats.syslog_frames is drain_formats.pure_syslog_frames
        assert connection._Protocol._build_command is connection._pure_build_command
    else:
        hot = hotpath.compiled()
        assert hotpath.HOT_PATH == "compiled"
        assert framing.scan is hot.scan and syslog.split_header is hot.split_header and syslog.cook is hot.cook
        assert drain_formats.http_body is hot.http_body and drain_formats.output_line is hot.output_line
        assert drain_formats.syslog_frames is hot.syslog_frames
        assert connection._Protocol._build_command is not connection._pure_build_command
    if os.environ.get("LOGPLEX_REQUIRE_COMPILED") == "1" and os.environ.get(hotpath.PURE_ENV, "") in ("", "0"):
        assert hotpath.HOT_PATH == "compiled", hotpath.HOT_PATH


def test_pure_python_env_selects_the_pure_functions() -> None:
    """LOGPLEX_PURE_PYTHON=1 runs the pure functions and says so, built extension or not."""
    assert probe(LOGPLEX_PURE_PYTHON="1") == ["pure (LOGPLEX_PURE_PYTHON=1)", "True True"]


def test_without_the_env_the_extension_runs_when_built() -> None:
    """With the extension built, a plain start runs it; without, HOT_PATH says why it runs pure."""
    try:
        from logplex import _hot  # noqa: F401
    except ImportError:
        path, bound = probe()
        assert path.startswith("pure (the compiled extension logplex._hot is not built") and bound == "True True"
    else:
        assert probe() == ["compiled", "False False"]
