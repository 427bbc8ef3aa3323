"""Make the README's pictures with the service itself: python docs/make_pictures.py"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import Settings, create_app  # noqa: E402

with TestClient(create_app(Settings(weights_dir=ROOT / "weights"))) as client:
    while client.get("/health/ready").status_code != 200:
        time.sleep(0.1)
    grid = client.post(
        "/v1/models/gan-fashion/generate",
        json={"n": 64, "seed": 7},
        headers={"accept": "image/png"},
    )
    grid.raise_for_status()
    (ROOT / "docs" / "gan-samples.png").write_bytes(grid.content)
    walk = client.post("/v1/models/vae-fashion/interpolate?format=gif",
                       json={"seed_a": 3, "seed_b": 11, "steps": 24, "method": "slerp"})  # fmt: skip
    walk.raise_for_status()
    (ROOT / "docs" / "vae-walk.gif").write_bytes(walk.content)
    chain = client.post("/v1/models/dae-fashion/generate?format=gif",
                        json={"n": 4, "seed": 3, "sampler": "chain", "steps": 100})  # fmt: skip
    chain.raise_for_status()
    (ROOT / "docs" / "dae-chain.gif").write_bytes(chain.content)
    print("wrote docs/gan-samples.png, docs/vae-walk.gif and docs/dae-chain.gif")
