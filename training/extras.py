"""Optional extras, checked before any work starts.

The trainer writes plots (matplotlib) and the evaluator scores against classical baselines
(scikit-image, scipy): without them a run would train for hours and then fail while writing
its artifact. ``require`` finds what is missing up front and says, in one line, what to
install; the command exits with status 2.
"""

from __future__ import annotations

import importlib.util
import sys

# extra -> the modules it brings (pyproject.toml's [project.optional-dependencies])
EXTRAS = {
    "train": ("matplotlib", "skimage", "scipy"),
    "bench": ("litserve",),
    "dev": ("httpx",),
}


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    def found(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install counts as missing
            return False

    return [m for m in modules if not found(m)]


def require(prog: str, *extras: str) -> None:
    """Exit with status 2 and one line naming the extras to install if a module is missing."""
    lacking = [e for e in extras if missing_modules(EXTRAS[e])]
    if not lacking:
        return
    modules = [m for e in lacking for m in missing_modules(EXTRAS[e])]
    names = ",".join(lacking)
    print(f"{prog}: needs {', '.join(modules)}: pip install -e '.[{names}]'", file=sys.stderr)
    raise SystemExit(2)
