"""The layers of docs/architecture.md hold: no import cycles among our modules, and imports
point one way (service -> models, training -> models; models imports nothing of ours; the
client package, latentserve, imports nothing of the server's)."""

from __future__ import annotations

import ast
from pathlib import Path

from .test_deploy import ROOT

PACKAGES = ("latentserve", "models", "service", "training")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> our modules it imports at module level (what runs when it is imported)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, file in mods.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                deps |= {
                    t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in mods
                }
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found our modules
    assert cycles(graph) == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_point_one_way() -> None:
    wrong = sorted(
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        for d in deps
        if (m.startswith("models") and not d.startswith("models"))
        or (m.startswith("service") and d.startswith("training"))
        or (m.startswith("training") and d.startswith("service"))
        or (m.startswith("latentserve") and not d.startswith("latentserve"))
    )
    assert wrong == []
