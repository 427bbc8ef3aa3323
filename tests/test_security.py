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
# calls that unpickle (or execute) bytes: none of them may appear in shipped code
FORBIDDEN_CALLS = {
    ("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
    ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("numpy", "load"), ("np", "load"),
    ("cloudpickle", "load"), ("cloudpickle", "loads"), ("marshal", "loads"), ("torch", "jit"),
}  # fmt: skip
FORBIDDEN_IMPORTS = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_no_unpickling_loader_anywhere_in_the_code() -> None:
    assert len(SOURCES) > 30
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in FORBIDDEN_CALLS
            ):
                offenders.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}"
                )
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                for name in names:
                    if name.split(".")[0] in FORBIDDEN_IMPORTS:
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} import {name}")
    assert offenders == []


def test_the_scan_would_catch_an_unpickling_call(tmp_path: Path) -> None:
    tree = ast.parse("import torch\nstate = torch.load('x.pt')\n")
    hits = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and (n.value.id, n.attr) in FORBIDDEN_CALLS]  # fmt: skip
    assert len(hits) == 1


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
