"""Users' own ONNX models: graphs built and exported inside this test are served with every
operation their graphs allow; manifests that lie keep that model not ready with the reason
and leave the others serving; python -m training export writes a folder that serves."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from service import Settings

from .conftest import png, start
from .factories import write_tiny

K = 8


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, K))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, 28, 28] -> [B, K]
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(K, 4 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (4, 7, 7)),
                                 nn.ConvTranspose2d(4, 4, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(4, 1, 4, 2, 1), nn.Sigmoid())  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, K] -> [B, 1, 28, 28]
        return self.net(z)


def export(module: nn.Module, example: torch.Tensor, file: Path) -> None:
    torch.onnx.export(module.eval(), (example,), str(file), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})  # fmt: skip


def manifest(folder: Path, **config: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"format": 1, "family": "onnx", "config": {"image_shape": [1, 28, 28], "latent_dim": K, **config}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(body))


@pytest.fixture(scope="module")
def modules() -> tuple[Encoder, Decoder, Decoder]:
    torch.manual_seed(0)
    return Encoder().eval(), Decoder().eval(), Decoder().eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, modules) -> Any:
    encoder, decoder, generator = modules
    root = tmp_path_factory.mktemp("onnx-weights")
    x, z = torch.rand(2, 1, 28, 28), torch.randn(2, K)
    ae = root / "ae-onnx"
    manifest(ae, encoder="encoder.onnx", decoder="decoder.onnx", class_names=["a", "b"])
    export(encoder, x, ae / "encoder.onnx")
    export(decoder, z, ae / "decoder.onnx")
    gan = root / "gan-onnx"
    manifest(gan, decoder="generator.onnx", prior="normal")
    export(generator, z, gan / "generator.onnx")
    # manifests that lie
    wrong = root / "wrong-shape"
    manifest(wrong, decoder="decoder.onnx", latent_dim=5)
    export(decoder, z, wrong / "decoder.onnx")
    missing = root / "missing-graph"
    manifest(missing, encoder="encoder.onnx", decoder="decoder.onnx")
    export(decoder, z, missing / "decoder.onnx")
    custom = root / "custom-op"
    manifest(custom, decoder="decoder.onnx")
    proto = onnx.load(str(ae / "decoder.onnx"))
    proto.graph.node[0].domain = "com.example.evil"
    proto.opset_import.add(domain="com.example.evil", version=1)
    onnx.save(proto, str(custom / "decoder.onnx"))
    outside = root / "outside-data"
    manifest(outside, decoder="decoder.onnx")
    proto = onnx.load(str(ae / "decoder.onnx"))
    weight = proto.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../ae-onnx/decoder.onnx")
    onnx.save(proto, str(outside / "decoder.onnx"))
    write_tiny(root / "ae-t", "ae")  # a shipped-format model beside them keeps serving
    client = start(Settings(weights_dir=root))
    yield client, root
    client.__exit__(None, None, None)


def test_manifests_that_lie_keep_only_that_model_not_ready(served) -> None:
    client, _ = served
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    reasons = ready.json()["not_ready"]
    assert set(reasons) == {"wrong-shape", "missing-graph", "custom-op", "outside-data"}
    assert "the manifest needs [B, 5]" in reasons["wrong-shape"]
    assert "encoder.onnx: missing" in reasons["missing-graph"]
    assert "custom operator domains ['com.example.evil']" in reasons["custom-op"]
    assert "not a file inside the folder" in reasons["outside-data"]
    assert {"ae-onnx", "gan-onnx", "ae-t"} <= set(ready.json()["models"])


def test_an_onnx_autoencoder_serves_every_operation_its_graphs_allow(served, modules) -> None:
    client, _ = served
    encoder, decoder, _ = modules
    info = client.get("/v1/models/ae-onnx").json()
    assert info["family"] == "onnx" and info["class_names"] == ["a", "b"]
    assert info["operations"] == ["arithmetic", "decode", "denoise", "encode", "interpolate", "reconstruct"]  # fmt: skip
    image = png()
    x = torch.from_numpy(np.asarray(__import__("PIL.Image").Image.open(__import__("io").BytesIO(image)), np.float32) / 255)[None, None]  # fmt: skip
    with torch.no_grad():
        z_ref, x_ref = encoder(x), decoder(encoder(x))
    z = client.post("/v1/models/ae-onnx/encode", files={"image": image}).json()["latent"]
    np.testing.assert_allclose(z, z_ref[0].numpy(), atol=1e-4)
    r = client.post("/v1/models/ae-onnx/reconstruct?format=array", files={"image": image})
    np.testing.assert_allclose(np.array(r.json()["image"]), x_ref[0].numpy(), atol=1e-4)
    r = client.post(
        "/v1/models/ae-onnx/decode?format=array", json={"latents": [[0.0] * K, [1.0] * K]}
    )
    assert np.array(r.json()["images"]).shape == (2, 1, 28, 28)
    for op, kwargs in [
        ("interpolate", {"files": {"image": image, "image_b": png(value=90)}, "data": {"steps": "5"}}),
        ("arithmetic", {"files": {"image": image, "image_b": image, "image_c": png(value=90)}}),
        ("denoise", {"files": {"image": image}, "data": {"noise": json.dumps({"kind": "gaussian", "level": 0.2, "seed": 1})}}),
    ]:  # fmt: skip
        reply = client.post(f"/v1/models/ae-onnx/{op}", **kwargs)
        assert reply.status_code == 200, (op, reply.text)
    assert client.post("/v1/models/ae-onnx/generate", json={"n": 2}).status_code == 400
    v2 = client.post("/v2/models/ae-onnx.reconstruct/infer", json={"inputs": [
        {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.reshape(-1).tolist()}]})  # fmt: skip
    np.testing.assert_allclose(np.array(v2.json()["outputs"][0]["data"]), x_ref.reshape(-1).numpy(), atol=1e-4)  # fmt: skip


def test_an_onnx_generator_generates_with_seeds(served, modules) -> None:
    client, _ = served
    _, _, generator = modules
    info = client.get("/v1/models/gan-onnx").json()
    assert info["operations"] == ["arithmetic", "decode", "generate", "interpolate"]
    assert info["latent_prior"] == "normal"
    a = client.post("/v1/models/gan-onnx/generate?format=array", json={"n": 3, "seed": 4}).json()
    b = client.post("/v1/models/gan-onnx/generate?format=array", json={"n": 3, "seed": 4}).json()
    assert a["images"] == b["images"]
    z = torch.randn(3, K, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        np.testing.assert_allclose(np.array(a["images"]), generator(z).numpy(), atol=1e-4)
    r = client.post("/v1/models/gan-onnx/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 4})
    assert r.status_code == 200 and r.json()["count"] == 4
    assert client.post("/v1/models/gan-onnx/encode", files={"image": png()}).status_code == 400


def test_training_export_writes_a_folder_that_serves(tmp_path: Path) -> None:
    from training.cli import main

    write_tiny(tmp_path / "src" / "vae-t", "vae")
    weights = tmp_path / "weights"
    assert main(["export", "--format", "onnx", "--model", str(tmp_path / "src" / "vae-t"), "--out", str(weights / "vae-onnx")]) in (0, None)  # fmt: skip
    config = json.loads((weights / "vae-onnx" / "config.json").read_text())["config"]
    assert config["encoder"] == "encoder.onnx" and config["prior"] == "normal"
    client = start(Settings(weights_dir=weights))
    try:
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/health/ready").text
            time.sleep(0.05)
        src = client.post("/v1/models/vae-onnx/reconstruct?format=array", files={"image": png()})
        assert src.status_code == 200
        assert client.post("/v1/models/vae-onnx/generate", json={"n": 2, "seed": 1}).status_code == 200  # fmt: skip
    finally:
        client.__exit__(None, None, None)
    with pytest.raises(SystemExit, match="not empty"):
        main(
            [
                "export",
                "--model",
                str(tmp_path / "src" / "vae-t"),
                "--out",
                str(weights / "vae-onnx"),
            ]
        )
