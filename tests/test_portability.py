"""What keeps the suite honest on other machines: the CPU cap of CI's extra passes is really in
force, and CI installs every Debian package the tests ask for."""

from __future__ import annotations

import os
import re

import pytest
import torch

from .system import PRESENT
from .test_deploy import ROOT


@pytest.mark.skipif("ATEN_CPU_CAPABILITY" not in os.environ, reason="no CPU cap asked for")
def test_the_cpu_cap_is_in_force() -> None:
    # .ci/run's second and third passes set the cap; if torch ignored it, they would repeat
    # the first pass and prove nothing
    asked = os.environ["ATEN_CPU_CAPABILITY"].upper()
    assert torch.backends.cpu.get_cpu_capability() == asked


def test_ci_installs_every_package_the_tests_need() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    installed = set(re.findall(r"need\+=\(([a-z0-9.+-]+)\)", script))
    assert set(PRESENT) <= installed, set(PRESENT) - installed
