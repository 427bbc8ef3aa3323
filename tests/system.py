"""The Debian packages a few tests need beyond Python, in one place.

On a developer's machine without one of them, its tests are skipped, and the skip reason (in
pytest's summary, ``-ra``) names the package and the command that installs it. With ``CI`` set
they are never skipped: ``.ci/run`` installs every package listed here, so a missing one fails.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import pytest

IN_CI = bool(os.environ.get("CI"))


def _nginx() -> bool:
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def _system_venv() -> bool:  # the image-steps test builds a venv with Debian's python3
    return Path("/usr/bin/python3").exists() and bool(glob.glob("/usr/lib/python3*/ensurepip"))


PRESENT = {
    "dataset-fashion-mnist": lambda: Path("/usr/share/datasets/fashion-mnist").is_dir(),
    "nginx-light": _nginx,
    "chromium": lambda: shutil.which("chromium") is not None,
    "wrk": lambda: shutil.which("wrk") is not None,
    "python3-venv": _system_venv,
}


def install_command() -> str:
    return "sudo apt-get install " + " ".join(PRESENT)


def _reason(package: str) -> str:
    return f"needs Debian's {package}: sudo apt-get install {package} (all of them: {install_command()})"


def needs(package: str) -> pytest.MarkDecorator:
    """Mark a test to skip where ``package`` is missing (never in CI), saying how to install it."""
    return pytest.mark.skipif(not PRESENT[package]() and not IN_CI, reason=_reason(package))


def require(package: str) -> None:
    """The same, called inside a fixture (marks do nothing on fixtures)."""
    if not PRESENT[package]():
        if IN_CI:
            pytest.fail(f"{package} is missing: .ci/run installs it")
        pytest.skip(_reason(package))
