"""The lock files: current with pyproject.toml, exact, hashed, and inside pyproject's ranges."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .test_deploy import ROOT

sys.path.insert(0, str(ROOT / "deploy"))
import lock  # deploy/lock.py, not a package

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, tuple[Version, int]]:
    """package -> (pinned version, number of hashes) of requirements/<name>."""
    text = (ROOT / "requirements" / name).read_text()
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if m:
            found[canonicalize_name(m[1])] = (Version(m[2]), block.count("--hash=sha256:"))
    return found


def direct(extras: list[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def test_the_locks_are_current_with_pyproject() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "deploy" / "lock.py"), "--check"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr  # "... is out of date ...: run make lock"


@pytest.mark.parametrize(
    ("name", "extras"),
    [("runtime.lock", []), ("train.lock", ["train"]),
     ("all.lock", list(PROJECT["optional-dependencies"]))],
)  # fmt: skip
def test_every_requirement_is_pinned_hashed_and_in_range(name: str, extras: list[str]) -> None:
    assert set(lock.LOCKS) == {"runtime.lock", "train.lock", "all.lock"}
    pinned = pins(name)
    assert all(hashes >= 1 for _, hashes in pinned.values()), "pip --require-hashes needs them all"
    for req in direct(extras):
        key = canonicalize_name(req.name)
        assert key in pinned, f"{req.name} is in pyproject.toml but not in {name}: run make lock"
        version = pinned[key][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"{name} pins {req.name}=={version}, outside pyproject's {req.specifier}: run make lock"
        )
    assert str(pinned["torch"][0]) == "2.13.0+cpu"  # the CPU build, never the CUDA one


def test_a_changed_dependency_makes_the_lock_stale(tmp_path) -> None:
    changed = (ROOT / "pyproject.toml").read_text().replace('"tqdm>=4.66"', '"tqdm>=4.67"')
    (tmp_path / "pyproject.toml").write_text(changed)
    assert lock.dependencies_digest(tmp_path / "pyproject.toml") != lock.dependencies_digest()
    stamp = lock.recorded_digest(ROOT / "requirements" / "runtime.lock")
    assert stamp == lock.dependencies_digest()
