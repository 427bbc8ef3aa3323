"""Your own images, end to end: a folder of RGB images at 32x32 and 64x64 -> train -> evaluate ->
drop into the weights folder -> admin reload -> every operation each model lists."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings
from training.cli import main

from .conftest import API_KEY, start

FAMILIES = ("ae", "dae", "sparse-ae", "vae", "gan", "classifier")


def shapes_folder(root: Path, side: int, per_class: int = 12) -> Path:
    """Two classes of coloured shapes on dark backgrounds, in class sub-folders."""
    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[:side, :side]
    for c, name in enumerate(("discs", "squares")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros((side, side, 3), np.uint8) + rng.integers(0, 50, 3, dtype=np.uint8)
            cx, cy = rng.integers(side // 3, 2 * side // 3, 2)
            r = rng.integers(side // 8, side // 4)
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r if c == 0 else (abs(xx - cx) < r) & (abs(yy - cy) < r)  # fmt: skip
            img[inside] = rng.integers(120, 256, 3, dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def train_and_evaluate(data: Path, family: str, out: Path, tmp: Path) -> None:
    assert main(["train", "--family", family, "--dataset", f"folder:{data}", "--epochs", "1",
                 "--batch-size", "4", "--width", "4", "--val-size", "4", "--out", str(out),
                 "--checkpoint-dir", str(tmp / "ckpt" / out.name)]) == 0  # fmt: skip
    quick = ["--samples", "16", "--inversion-images", "2", "--inversion-steps", "5",
             "--iw-samples", "4", "--iw-images", "4", "--baseline-images", "2", "--tune-images", "2"]  # fmt: skip
    judge = ["--classifier", str(out.parent / f"classifier-{out.name.split('-')[-1]}")]
    assert main(["evaluate", "--model", str(out), *quick, *(judge if family == "gan" else [])]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["dataset"]["name"] == f"folder:{data}"
    assert card["dataset"]["class_names"] == ["discs", "squares"]
    assert card["metrics"]["test_images"] >= 1


@pytest.mark.parametrize("side", [32, 64])
def test_own_rgb_folder_trains_evaluates_and_serves(side: int, tmp_path: Path) -> None:
    data = shapes_folder(tmp_path / "photos", side)
    trained = tmp_path / "trained"
    for family in ("classifier", *(f for f in FAMILIES if f != "classifier")):  # judge first
        train_and_evaluate(data, family, trained / f"{family}-{side}", tmp_path)

    weights = tmp_path / "weights"
    weights.mkdir()
    client = start(Settings(weights_dir=weights, api_key=API_KEY))
    try:
        assert client.get("/v1/models").json()["models"] == []
        for artifact in trained.iterdir():  # "drop the artifact into the weights folder"
            shutil.copytree(artifact, weights / artifact.name)
        reload = client.post("/v1/admin/reload", headers={"x-api-key": API_KEY})
        assert reload.status_code == 200, reload.text
        served = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(served) == {f"{f}-{side}" for f in FAMILIES}
        for name, info in served.items():
            assert info["image_shape"] == [3, side, side]
            assert info["class_names"] == ["discs", "squares"]
            for op in info["operations"]:
                check_operation(client, name, op, info, data)
    finally:
        client.__exit__(None, None, None)


def check_operation(client: TestClient, name: str, op: str, info: dict, data: Path) -> None:
    photo = next((data / "discs").glob("*.png")).read_bytes()
    other = next((data / "squares").glob("*.png")).read_bytes()
    side = info["image_shape"][1]
    files = {
        "encode": {"image": photo},
        "reconstruct": {"image": photo},
        "denoise": {"image": photo},
        "classify": {"image": photo},
        "likelihood": {"image": photo},
        "anomaly": {"image": photo},
        "interpolate": {"image": photo, "image_b": other},
        "arithmetic": {"image": photo, "image_b": other, "image_c": photo},
    }.get(op)
    url = f"/v1/models/{name}/{op}"
    if files is not None:
        form = {k: (f"{k}.png", v, "image/png") for k, v in files.items()}
        r = client.post(url, files=form, headers={"accept": "image/png"})
    elif op == "decode":
        r = client.post(url, json={"latent": [0.1] * info["latent_dim"]}, headers={"accept": "image/png"})  # fmt: skip
    else:
        assert op == "generate", op
        r = client.post(url, json={"n": 1, "seed": 3}, headers={"accept": "image/png"})
    assert r.status_code == 200, (name, op, r.text)
    if op == "encode":
        assert len(r.json()["latent"]) == info["latent_dim"]
    elif op == "classify":
        assert set(r.json()["probabilities"]) == {"discs", "squares"}
    elif op in ("likelihood", "anomaly"):
        assert r.json()["convention"] if op == "likelihood" else r.json()["method"]
    else:
        frame = Image.open(io.BytesIO(r.content))
        assert frame.mode == "RGB", (name, op, frame.mode)
        if op == "interpolate":  # 8 frames come as a grid, with gutters
            assert min(frame.size) > 2 * side, (name, op, frame.size)
        else:
            assert frame.size == (side, side), (name, op, frame.size)
