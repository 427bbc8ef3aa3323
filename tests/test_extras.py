"""A missing optional extra is named before any work starts: one line, exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_deploy import ROOT

# imported first by the interpreter (sitecustomize): these modules then cannot be found, as in
# an environment installed without the extra
HIDE = """
import sys
for name in {HIDDEN}:
    sys.modules[name] = None  # import raises ModuleNotFoundError; find_spec answers None
"""


def run_without(
    modules: set[str], args: list[str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(HIDE.replace("{HIDDEN}", repr(modules)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_trainer_and_evaluator_name_the_train_extra(command: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["-m", "training", command, "--family", "ae", "--dry-run", "--out", str(out)]
    if command == "evaluate":
        args = ["-m", "training", "evaluate", "--model", str(out)]
    result = run_without({"matplotlib"}, args, tmp_path)
    assert result.returncode == 2
    assert result.stderr == "python -m training: needs matplotlib: pip install -e '.[train]'\n"
    assert not out.exists()


def test_bench_names_the_extras_it_lacks(tmp_path: Path) -> None:
    result = run_without({"litserve", "scipy"}, ["-m", "bench", "--seconds", "1"], tmp_path)
    assert result.returncode == 2
    assert (
        result.stderr == "python -m bench: needs scipy, litserve: pip install -e '.[train,bench]'\n"
    )


def test_with_every_extra_nothing_is_asked() -> None:
    from training.extras import EXTRAS, missing_modules

    assert [m for modules in EXTRAS.values() for m in missing_modules(modules)] == []
