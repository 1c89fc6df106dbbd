"""The Lua scripts ship as package data: every room's scripts load by name, once."""

import glob
import os

import pytest

import logplex
from logplex.redis.scripts import lua

PACKAGE = os.path.dirname(logplex.__file__)
SCRIPTS = sorted(glob.glob(os.path.join(PACKAGE, "*", "scripts", "*.lua")))


def test_every_room_with_redis_scripts_ships_some():
    rooms = {os.path.basename(os.path.dirname(os.path.dirname(p))) for p in SCRIPTS}
    assert {"backlog", "config", "drains"} <= rooms


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_a_script_reads_by_its_room_and_name_and_is_read_once(path):
    room = os.path.basename(os.path.dirname(os.path.dirname(path)))
    name = os.path.basename(path)[: -len(".lua")]
    text = lua(f"logplex.{room}", name)
    with open(path, encoding="utf-8") as f:
        assert text == f.read()
    assert lua(f"logplex.{room}", name) is text


def test_a_missing_script_is_an_error_not_an_empty_script():
    with pytest.raises(FileNotFoundError):
        lua("logplex.config", "no-such-script")
