"""Write the lock files from pyproject.toml: exact versions and sha256 hashes of every package.

    python deploy/lock.py          # (make lock) rewrite requirements/runtime.lock and all.lock
    python deploy/lock.py --check  # exit 1 if pyproject.toml changed since the locks were written

``runtime.lock`` is the service alone (the Dockerfile), ``train.lock`` adds the trainer's
extra (deploy/Dockerfile.train), ``all.lock`` every extra (train, dev, bench: what ``make``
installs). Both are resolved by pip-tools for
CPython 3.11 on Linux x86-64, the platform the project supports, with torch's CPU build
(``torch==2.13.0+cpu``, from PyTorch's CPU index or a local wheel). Each starts with the
sha256 of pyproject.toml's dependency tables, so a stale lock is found without a resolver.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"runtime.lock": [], "train.lock": ["--extra", "train"], "all.lock": ["--all-extras"]}
STAMP = "# pyproject-dependencies-sha256: "


def dependencies_digest(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 of [project] dependencies and optional-dependencies, in a canonical form."""
    project = tomllib.loads(pyproject.read_text())["project"]
    tables = {"dependencies": project.get("dependencies", []),
              "optional-dependencies": project.get("optional-dependencies", {})}  # fmt: skip
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(STAMP):
            return line[len(STAMP) :].strip()
    return None


def write(lock: Path, extra_args: list[str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
         "--strip-extras", "--allow-unsafe", "--no-emit-index-url", "--no-emit-find-links",
         "--newline", "LF", *extra_args, "--output-file", str(lock.relative_to(ROOT)), "pyproject.toml"],
        check=True, cwd=ROOT,
    )  # fmt: skip
    text = lock.read_text()
    lock.write_text(f"{STAMP}{dependencies_digest()}\n{text}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python deploy/lock.py", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="only check that the locks are current"
    )
    args = parser.parse_args()
    folder = ROOT / "requirements"
    if args.check:
        stale = [
            n
            for n in LOCKS
            if not (folder / n).exists() or recorded_digest(folder / n) != dependencies_digest()
        ]
        for name in stale:
            print(
                f"requirements/{name} is out of date with pyproject.toml: run make lock",
                file=sys.stderr,
            )
        return 1 if stale else 0
    folder.mkdir(exist_ok=True)
    for name, extra_args in LOCKS.items():
        write(folder / name, extra_args)
        print(f"wrote requirements/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
