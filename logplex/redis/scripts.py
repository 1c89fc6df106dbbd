"""Lua scripts are package data: ``<package>/scripts/<name>.lua``, read once per process."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def lua(package: str, name: str) -> str:
    """The text of the script ``name`` of ``package`` (e.g. ``lua("logplex.config", "page")``)."""
    return resources.files(package).joinpath("scripts", name + ".lua").read_text(encoding="utf-8")
