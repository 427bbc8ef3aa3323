"""Code-level guarantees: nothing is ever unpickled, and names cannot reach outside weights/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service.registry import ModelRegistry, valid_name

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for folder in ("models", "service", "training", "bench")
    for p in (ROOT / folder).rglob("*.py")
]
# calls that unpickle (or execute) bytes: none of them may appear in shipped code.
# (torch.jit.trace, used by service/tracing.py, records a model already in memory.)
FORBIDDEN_CALLS = {
    "torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads",
    "joblib.load", "numpy.load", "np.load", "cloudpickle.load", "cloudpickle.loads",
    "marshal.loads", "torch.jit.load", "torch.package",
}  # fmt: skip
FORBIDDEN_IMPORTS = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def offending_lines(source: str) -> list[str]:
    """``line: what`` for each forbidden call or import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and dotted(node) in FORBIDDEN_CALLS:
            found.append(f"{node.lineno}: {dotted(node)}")
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module if isinstance(node, ast.ImportFrom) and node.module else ""
            for name in [a.name for a in node.names] + ([module] if module else []):
                full = f"{module}.{name}" if module and name != module else name
                if name.split(".")[0] in FORBIDDEN_IMPORTS or full in FORBIDDEN_CALLS:
                    found.append(f"{node.lineno}: import {full}")
    return found


def test_no_unpickling_loader_anywhere_in_the_code() -> None:
    assert len(SOURCES) > 30
    offenders = [
        f"{path.relative_to(ROOT)}:{hit}"
        for path in SOURCES
        for hit in offending_lines(path.read_text())
    ]
    assert offenders == []


def test_the_scan_would_catch_an_unpickling_call() -> None:
    source = (
        "import torch\nimport pickle\nfrom torch.jit import load\n"
        "state = torch.load('x.pt')\nmodule = torch.jit.load('m.pt')\n"
        "traced = torch.jit.trace(model, x)\n"  # in memory: allowed
    )
    assert offending_lines(source) == [
        "2: import pickle", "3: import torch.jit.load", "4: torch.load", "5: torch.jit.load",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name", ["..", "../x", "a/b", "/etc", "a\\b", ".hidden", "A", "a" * 65, "", "a..b", "x\x00"]
)
def test_model_names_that_could_escape_are_invalid(name: str) -> None:
    assert not valid_name(name)


def test_registry_never_touches_paths_for_invalid_names(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "secret").mkdir()
    registry = ModelRegistry(tmp_path / "weights", ["../secret"])
    registry.load_all()
    assert "invalid model name" in registry.failed["../secret"]
    assert registry.get("../secret") is None
