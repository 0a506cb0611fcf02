"""The house's floors: every import (at the top of a module, inside a function or only for
type checking) goes to the same floor or one below, and no modules import each other in a
circle. docs/architecture.md draws the floors."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a module may import from its own floor and the floors before it
FLOORS = [
    "retrieval.errors", "retrieval.data", "retrieval.encoders", "retrieval.store", "retrieval.model",
    "retrieval.training", "retrieval.query", "retrieval.evaluation", "indexer", "retrieval.serve",
    "retrieval.api", "retrieval.cli", "retrieval",
]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("retrieval", "indexer"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def floor(module: str) -> int:
    """The floor of the longest FLOORS entry that `module` is or lies inside."""
    best = max((f for f in FLOORS if module == f or module.startswith(f + ".")), key=len)
    return FLOORS.index(best)


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_every_module_has_a_floor():
    assert all(floor(m) >= 0 for m in modules())
    assert "retrieval.data.datasets" in modules() and "retrieval.api" in modules()


def test_no_import_goes_up_a_floor():
    up = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if floor(b) > floor(a))
    assert up == []


def find_circles(g: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge met in a depth-first walk (none: the graph is acyclic)."""
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                circles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return circles


def test_no_import_circles():
    assert find_circles(graph()) == []


def test_the_checker_sees_a_circle_and_an_arrow_up(tmp_path):
    """The checks above can fail: a made-up pair of modules breaks both rules."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from retrieval.cli.base import main\n")
    b.write_text("def f():\n    import retrieval.store.library\n")
    assert imports(a, {"retrieval.cli.base"}) == {"retrieval.cli.base"}
    assert imports(b, {"retrieval.store.library"}) == {"retrieval.store.library"}
    assert floor("retrieval.cli.base") > floor("retrieval.model.runtime") > floor("retrieval.store.meta")
    assert find_circles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z", "x"]]
    assert find_circles({"x": {"y"}, "y": set()}) == []
