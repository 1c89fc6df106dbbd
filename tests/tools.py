"""Skipping a test for lack of a tool, so that the run's summary can name what was missing."""

from __future__ import annotations

import pytest

MARK = "missing tool: "


def skip_missing(tools: str, install: str) -> None:
    """Skip, naming the missing tools and the command that installs them."""
    pytest.skip(f"{MARK}{tools} (install: {install})")


def missing_tools(reasons: list[str]) -> dict[str, int]:
    """How many skipped tests each 'missing tool' reason accounts for, the rest of the reasons ignored."""
    counts: dict[str, int] = {}
    for reason in reasons:
        at = reason.find(MARK)
        if at >= 0:
            what = reason[at + len(MARK):]
            counts[what] = counts.get(what, 0) + 1
    return counts
