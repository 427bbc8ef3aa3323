"""The CI variant of the soak: mixed operations from 16 clients for a few seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.soak import soak

from .factories import write_tiny


@pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"), reason="apt-get install wrk"
)
def test_short_soak_has_no_errors_and_flat_memory(tmp_path: Path) -> None:
    for family in ("ae", "vae", "gan", "dae", "classifier"):
        write_tiny(tmp_path / f"{family}-t", family)
    r = soak(seconds=6, clients=16, weights=tmp_path, warmup=3)
    assert r["operations"] >= 20 and r["requests"] > 100
    assert r["errors"] == 0 and r["warmup_errors"] == 0
    assert r["rss_growth"] <= 0.05, r
