"""The shape of the package and of its tests, checked: no import cycle, a core that knows no I/O,
no oversized module, test modules that stand alone, and a test module for every module.

Each check reads the source (with `ast`) or imports in a fresh interpreter; none starts a server.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO_ROOT, "logplex")
TESTS = os.path.join(REPO_ROOT, "tests")

MAX_LINES = 600

# The core: sans-IO bytes, the router and the pure parts of config, tails and drains.
CORE = (
    "logplex.router",
    "logplex.framing",
    "logplex.syslog",
    "logplex.config.cache",
    "logplex.tails.session",
    "logplex.drains.queue",
    "logplex.drains.formats",
)
# What the core must not load: the Redis client and the global reactor (an installed reactor
# means a module did I/O at import, or reached for the global one).
IO_MODULES = ("txredisapi", "twisted.internet.reactor")

# Modules logplex/<x>/<y>.py with neither tests/test_<x>_<y>.py nor tests/test_<y>.py yet.
# Shrink this list as tests are written or renamed; never add to it to make the test pass.
KNOWN_UNTESTED = {
    # The API's resources are exercised over HTTP, against a real node, by
    # tests/integration/test_api.py, test_credentials_api.py and test_openapi.py (every status
    # of every operation); the shard admin by tests/integration/test_shard_map.py.
    "logplex/admin/shards.py",
    "logplex/api/channels.py",
    "logplex/api/credentials.py",
    "logplex/api/drains.py",
    "logplex/api/ops.py",
    "logplex/api/schemas.py",
    "logplex/api/sessions.py",
    # The config writes are Lua scripts, tested against a real Redis in
    # tests/integration/test_config_store.py.
    "logplex/config/store.py",
}

# Test modules that still import another test module (importer -> imported). Shrink it by moving
# the shared doubles to tests/helpers.py (unit) or tests/harness/ (integration).
KNOWN_TEST_IMPORTS: set[tuple[str, str]] = set()

# Integration test modules whose tests share a world they change and so must run in file order
# (each says so in its docstring). Shrink it by giving the destructive tests a world of their own.
KNOWN_ORDERED = {
    "tests/integration/test_cluster.py",
    "tests/integration/test_faults.py",
}
ORDER_PHRASES = ("runs last", "run last", "run late", "in this order", "runs first", "must run")
ORDINAL = re.compile(r"test_[0-9]{1,2}_")


# -- reading source ---------------------------------------------------------------------------
def python_files(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return found


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")].split(os.sep)
    if relative[-1] == "__init__":
        relative.pop()
    return ".".join(relative)


def imported_names(path: str) -> list[tuple[str, int]]:
    """(absolute module or module.name, line) for every import in the file, at any depth:
    in functions, methods, try blocks and `if TYPE_CHECKING` blocks too."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from a import b` depends on a.b when that is a module (importing a package's
            # submodule runs the package's __init__, an ancestor, not an edge of the graph),
            # else on a: import_graph falls back from a.b to a.
            out += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """logplex module -> {logplex module it imports: line of the first such import}."""
    paths = {module_name(p): p for p in python_files(PACKAGE)}
    graph: dict[str, dict[str, int]] = {}
    for module, path in paths.items():
        edges = graph.setdefault(module, {})
        for target, line in imported_names(path):
            # `from logplex.a import b` names module logplex.a.b if there is one, else logplex.a.
            while target and target not in paths:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, line)
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first, colouring)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


# -- (a) no import cycle -------------------------------------------------------------------------
def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert "logplex.router" in graph, "the import graph was read from the wrong place"
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("logplex imports itself in a circle:\n  " + "\n  ".join(steps))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from logplex import router\n    import logplex.syslog as s\n")
    names = {name for name, _ in imported_names(str(source))}
    assert {"logplex.router", "logplex.syslog"} <= names


# -- (b) the core knows no I/O ---------------------------------------------------------------------
_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""


@pytest.mark.parametrize("module", CORE)
def test_the_core_loads_neither_redis_client_nor_reactor(module):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", _PROBE, module, *IO_MODULES], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    error = "\n".join(done.stderr.strip().splitlines()[-3:])
    assert done.returncode == 0, f"importing {module} failed:\n{error}"
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {module} loads {', '.join(loaded)}: the core must know no I/O"


# -- (c) no oversized module ---------------------------------------------------------------------
def test_no_module_of_the_package_is_over_600_lines():
    sizes = {}
    for path in python_files(PACKAGE):
        with open(path, encoding="utf-8") as f:
            sizes[os.path.relpath(path, REPO_ROOT)] = sum(1 for _ in f)
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by idea): " + ", ".join(
        f"{path} ({n})" for path, n in sorted(over.items()))


# -- (d) test modules stand alone --------------------------------------------------------------
def all_test_modules() -> list[str]:
    return [p for p in python_files(TESTS) if os.path.basename(p).startswith("test_")]


def imports_of_test_modules() -> set[tuple[str, str]]:
    """(test module path, test module it imports) for every such import under tests/."""
    found = set()
    for path in all_test_modules():
        for name, _ in imported_names(path):
            parts = name.split(".")
            for i, part in enumerate(parts):
                if part.startswith("test_") and parts[0] == "tests":
                    found.add((os.path.relpath(path, REPO_ROOT), ".".join(parts[: i + 1])))
                    break
    return found


def test_no_test_module_imports_another():
    found = imports_of_test_modules()
    new = found - KNOWN_TEST_IMPORTS
    assert not new, "test modules importing test modules (move what they share to tests/helpers.py " \
        "or tests/harness/): " + ", ".join(f"{a} imports {b}" for a, b in sorted(new))
    gone = KNOWN_TEST_IMPORTS - found
    assert not gone, f"remove from KNOWN_TEST_IMPORTS, they are fixed: {sorted(gone)}"


def order_dependence(path: str) -> list[str]:
    """What in an integration test module lets one test depend on another having run first:
    ordering marks, module globals rebound by a test, ordinal test names (test_1_...), or a
    docstring that says the tests must run in a given order."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    where = os.path.relpath(path, REPO_ROOT)
    problems = []
    docstring = (ast.get_docstring(tree) or "").replace("\n", " ")
    problems += [f"{where}: its docstring says {phrase!r}" for phrase in ORDER_PHRASES if phrase in docstring]
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            problems.append(f"{where}:{node.lineno}: global {', '.join(node.names)}")
        elif isinstance(node, ast.Attribute) and node.attr in ("order", "dependency", "run") \
                and isinstance(node.value, ast.Attribute) and node.value.attr == "mark":
            problems.append(f"{where}:{node.lineno}: pytest.mark.{node.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ORDINAL.match(node.name):
            problems.append(f"{where}:{node.lineno}: ordinal test name {node.name}")
    return problems


def test_integration_tests_do_not_depend_on_order():
    found = {}
    for path in all_test_modules():
        if os.sep + "integration" + os.sep in path:
            problems = order_dependence(path)
            if problems:
                found[os.path.relpath(path, REPO_ROOT)] = problems
    new = [line for module, problems in sorted(found.items()) if module not in KNOWN_ORDERED for line in problems]
    assert not new, "integration tests that depend on their order (give each its own world, or " \
        "make it a fixture):\n  " + "\n  ".join(new)
    gone = KNOWN_ORDERED - set(found)
    assert not gone, f"remove from KNOWN_ORDERED, they no longer depend on order: {sorted(gone)}"


# -- (e) tests mirror modules ---------------------------------------------------------------------
def untested_modules() -> set[str]:
    tests = {os.path.basename(p) for p in all_test_modules() if os.path.dirname(p) == TESTS}
    missing = set()
    for path in python_files(PACKAGE):
        relative = os.path.relpath(path, REPO_ROOT)
        parts = relative[: -len(".py")].split(os.sep)
        if len(parts) != 3 or parts[-1] == "__init__":
            continue
        _, room, name = parts
        if f"test_{room}_{name}.py" not in tests and f"test_{name}.py" not in tests:
            missing.add(relative.replace(os.sep, "/"))
    return missing


def test_every_module_of_a_room_has_a_test_module():
    missing = untested_modules()
    new = missing - KNOWN_UNTESTED
    assert not new, "modules with no tests/test_<room>_<module>.py or tests/test_<module>.py: " + \
        ", ".join(sorted(new))
    covered = KNOWN_UNTESTED - missing
    assert not covered, f"remove from KNOWN_UNTESTED, they have tests now (or are gone): {sorted(covered)}"
