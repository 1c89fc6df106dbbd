"""README.rst shows every file of examples/ verbatim, as a literal block.

tests/integration/test_senders.py runs those files with the real senders, so
what a user pastes from the README is what CI ran.
"""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
NAMES = sorted(os.listdir(EXAMPLES)) if os.path.isdir(EXAMPLES) else []


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def literal_blocks(rst: str) -> list[str]:
    """The literal blocks of an RST text (after a paragraph ending in ``::``), dedented."""
    lines = rst.split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("::"):
            i += 1
            continue
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            break
        indent = len(lines[i]) - len(lines[i].lstrip(" "))
        if indent == 0:
            continue
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" " * indent)):
            body.append(lines[i][indent:])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        blocks.append("\n".join(body) + "\n")
    return blocks


def test_there_are_examples():
    assert NAMES, "examples/ is empty or missing"


@pytest.mark.parametrize("name", NAMES)
def test_each_example_is_a_literal_block_of_the_readme(name):
    text = read(os.path.join(EXAMPLES, name))
    assert "\t" not in text, f"examples/{name} has a tab: a literal block would not show it as it is"
    assert text.endswith("\n") and not text.endswith("\n\n"), f"examples/{name}: end it with one newline"
    blocks = literal_blocks(read(os.path.join(ROOT, "README.rst")))
    assert text in blocks, \
        f"examples/{name} is not shown verbatim in README.rst (as an indented literal block)"


@pytest.mark.parametrize("name", NAMES)
def test_the_readme_names_each_example(name):
    assert f"examples/{name}" in read(os.path.join(ROOT, "README.rst"))


def test_the_readme_explains_every_placeholder():
    readme = read(os.path.join(ROOT, "README.rst"))
    used = set()
    for name in NAMES:
        used |= set(re.findall(r"@[A-Z][A-Z_]*@", read(os.path.join(EXAMPLES, name))))
    for placeholder in sorted(used):
        assert f"- ``{placeholder}``:" in readme, f"README.rst does not explain {placeholder}"


def test_literal_blocks_are_found_as_rst_has_them():
    rst = "Text::\n\n    one\n\n      two\n  three\n\nNot a block:\n\n    x\n\nEnd::\n\n    last\n"
    assert literal_blocks(rst) == ["one\n\n  two\n", "last\n"]
