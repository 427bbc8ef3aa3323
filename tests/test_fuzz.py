"""schemathesis against /openapi.json: a bounded number of generated requests per operation,
with no server errors and no responses that break the documented schema."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .factories import write_tiny
from .test_deploy import ROOT, free_port, wait_ready

EXAMPLES = int(os.environ.get("LATENTSERVE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weights = tmp_path_factory.mktemp("fuzz-weights")
    for family in (
        "ae",
        "vae",
        "gan",
        "dae",
        "classifier",
        "pixelcnn",
        "rbm",
    ):  # the shipped names, as in the examples
        write_tiny(weights / f"{family}-fashion", family)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENTSERVE_PORT": str(port), "LATENTSERVE_WEIGHTS_DIR": str(weights),
           "LATENTSERVE_API_KEY": "f" * 32, "LATENTSERVE_LOG_LEVEL": "warning"}  # fmt: skip
    log = (weights / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=env,
        cwd=weights,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/health/ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        text = (weights / "server.log").read_text()
        assert "Traceback" not in text, text[-3000:]


def test_api_never_errors_and_keeps_its_schema(live_server: str, tmp_path: Path) -> None:
    """Positive and negative examples for every operation in /openapi.json."""
    result = subprocess.run(
        [Path(sys.executable).parent / "schemathesis", "run", f"{live_server}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
         "--max-examples", str(EXAMPLES), "--request-timeout", "30", "--seed", "1",
         "--report", "junit", "--report-dir", str(tmp_path), "--no-color"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = result.stdout[-4000:]
    print(summary)
    assert result.returncode == 0, summary
    assert "passed" in summary.lower()
    assert list(tmp_path.glob("junit-*.xml")), "schemathesis wrote no report"
