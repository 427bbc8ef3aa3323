"""The CI variant of the soak: a fixed number of mixed requests from 16 clients, however long
they take (a slow host takes longer; only errors and memory are judged, never speed)."""

from __future__ import annotations

from pathlib import Path

from bench.soak import soak

from .factories import write_tiny
from .system import needs


@needs("wrk")
def test_short_soak_has_no_errors_and_flat_memory(tmp_path: Path) -> None:
    for family in ("ae", "vae", "gan", "dae", "classifier"):
        write_tiny(tmp_path / f"{family}-t", family)
    # 600 replies: about 5 s here; the 300 s bound only stops a hung server
    r = soak(seconds=300, clients=16, weights=tmp_path, warmup=300, requests=600)
    assert r["operations"] >= 20  # every model/operation pair of the five models is in the plan
    assert r["finished"] and r["requests"] >= 600, r
    assert r["errors"] == 0 and r["warmup_errors"] == 0
    assert r["rss_growth"] <= 0.05, r
