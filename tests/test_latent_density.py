"""Autoencoders that generate: the Gaussian mixture fitted to their codes (EM recovers a known
mixture; files round-trip), the model that gains ``generate`` from it, the fit-prior command,
the trainer's step, and the service's generate and seed interpolation on such a model."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from models import CheckpointError, load_model, save_model
from models.latent_density import (
    DENSITY_FILE,
    GaussianMixture,
    fit_gaussian_mixture,
    read_latent_density,
    write_latent_density,
)
from service import Settings
from training.cli import main

from .conftest import start
from .factories import tiny_model, write_tiny
from .test_deploy import ROOT


def two_blobs(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Codes [n, 3] from 0.7 N((4, 0, 0), 0.5^2 I) + 0.3 N((-3, 2, 1), diag(1, 0.2, 0.3)^2)."""
    g = torch.Generator().manual_seed(seed)
    first = int(0.7 * n)
    a = torch.tensor([4.0, 0, 0]) + 0.5 * torch.randn(first, 3, generator=g)
    b = torch.tensor([-3.0, 2, 1]) + torch.tensor([1.0, 0.2, 0.3]) * torch.randn(
        n - first, 3, generator=g
    )
    return torch.cat([a, b])


def test_em_recovers_a_known_mixture() -> None:
    gm = fit_gaussian_mixture(two_blobs(), components=2, seed=1)
    order = gm.means[:, 0].argsort(descending=True)
    assert gm.weights[order].tolist() == pytest.approx([0.7, 0.3], abs=0.01)
    assert torch.allclose(gm.means[order], torch.tensor([[4.0, 0, 0], [-3.0, 2, 1]]), atol=0.08)
    stds = gm.scale_tril[order].diagonal(dim1=1, dim2=2).float()  # lower-triangular: ~diag
    assert torch.allclose(stds, torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.2, 0.3]]), atol=0.05)
    # its density is higher where the data is
    assert (
        gm.log_prob(torch.tensor([[4.0, 0, 0]])) > gm.log_prob(torch.tensor([[0.0, 5, 5]]))
    ).all()


def test_sampling_is_seeded_and_temperature_scales_the_spread() -> None:
    gm = fit_gaussian_mixture(two_blobs(), components=2, seed=1)
    a = gm.sample(500, torch.Generator().manual_seed(3))
    b = gm.sample(500, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    cold = gm.sample(500, torch.Generator().manual_seed(3), temperature=0.0)
    assert set(map(tuple, cold.tolist())) <= set(map(tuple, gm.means.tolist()))  # the means
    warm = gm.sample(4000, torch.Generator().manual_seed(4))
    share = float((warm[:, 0] > 0.5).float().mean())
    assert share == pytest.approx(0.7, abs=0.03)  # components by their weights


def test_spatial_codes_get_diagonal_covariances_and_bad_input_is_refused() -> None:
    codes = torch.randn(400, 200, generator=torch.Generator().manual_seed(0))
    gm = fit_gaussian_mixture(codes, components=3, iterations=5)
    assert gm.diagonal and gm.scale.shape == (3, 200)
    with pytest.raises(ValueError, match="too few"):
        fit_gaussian_mixture(codes[:5], components=3)
    with pytest.raises(ValueError, match="components"):
        fit_gaussian_mixture(codes, components=0)
    with pytest.raises(ValueError, match="finite"):
        fit_gaussian_mixture(torch.full((40, 2), float("nan")), components=2)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2, 2))


def test_the_file_round_trips_and_bad_files_say_which(tmp_path: Path) -> None:
    gm = fit_gaussian_mixture(two_blobs(), components=2, seed=1)
    write_latent_density(tmp_path, gm)
    back = read_latent_density(tmp_path, 3)
    assert back is not None and torch.equal(back.means, gm.means)
    assert torch.equal(back.scale, gm.scale)
    assert read_latent_density(tmp_path / "none", 3) is None
    with pytest.raises(ValueError, match="the model has 4"):
        read_latent_density(tmp_path, 4)
    (tmp_path / DENSITY_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=DENSITY_FILE):
        read_latent_density(tmp_path, 3)


def test_an_autoencoder_with_a_density_generates_and_saves_it(tmp_path: Path) -> None:
    model = tiny_model("ae")
    assert "generate" not in model.operations
    codes = torch.randn(200, model.latent_dim, generator=torch.Generator().manual_seed(0))
    model.attach_latent_density(fit_gaussian_mixture(codes, components=2))
    assert model.operations["generate"].prepare == "sample_latent"
    assert "generate" not in type(model).operations  # the family's declaration is unchanged
    assert model.latent_prior == "fitted gaussian mixture (2 components)"
    save_model(model, tmp_path / "ae")
    loaded = load_model(tmp_path / "ae")
    assert "generate" in loaded.operations and loaded.latent_density is not None
    with torch.no_grad():
        x = loaded.sample(4, torch.Generator().manual_seed(5))
        z = loaded.latent_density.sample(4, torch.Generator().manual_seed(5))
        assert torch.allclose(x, loaded.decode(z), atol=1e-6)
    assert x.shape == (4, 1, 28, 28)
    with pytest.raises(ValueError, match="do not take a fitted latent density"):
        tiny_model("vae").attach_latent_density(fit_gaussian_mixture(codes[:, :3], 2))
    with pytest.raises(ValueError, match="code has"):
        tiny_model("ae").attach_latent_density(fit_gaussian_mixture(codes[:, :3], 2))
    (tmp_path / "ae" / DENSITY_FILE).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=DENSITY_FILE):
        load_model(tmp_path / "ae")


def test_fit_prior_command_then_the_service_generates(tmp_path: Path) -> None:
    folder = write_tiny(tmp_path / "ae-gm", "ae", atlas=())
    (folder / "card.json").write_text(json.dumps({"dataset": {"name": "synthetic"}}))
    run = subprocess.run(
        [sys.executable, "-m", "training", "fit-prior", "--model", str(folder),
         "--components", "3", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads((folder / "card.json").read_text())["latent_density"]
    assert summary["components"] == 3 and summary["covariance"] == "full"
    assert (
        summary["training_codes"] == 409
    )  # all of the synthetic set's training split (80% of 512)
    refused = subprocess.run(
        [sys.executable, "-m", "training", "fit-prior", "--model", str(write_tiny(tmp_path / "v", "vae"))],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode != 0 and "do not take a fitted latent density" in refused.stderr

    c = start(Settings(weights_dir=tmp_path))
    try:
        info = c.get("/v1/models/ae-gm").json()
        assert "generate" in info["operations"]
        assert info["latent_prior"].startswith("fitted gaussian mixture")
        one = c.post("/v1/models/ae-gm/generate?format=array", json={"n": 3, "seed": 9}).json()
        two = c.post("/v1/models/ae-gm/generate?format=array", json={"n": 3, "seed": 9}).json()
        assert one["images"] == two["images"] and len(one["images"]) == 3
        other = c.post("/v1/models/ae-gm/generate?format=array", json={"n": 3, "seed": 10}).json()
        assert other["images"] != one["images"]
        walk = c.post("/v1/models/ae-gm/interpolate", json={"seed_a": 1, "seed_b": 2, "steps": 4})
        assert walk.status_code == 200 and len(walk.json()["frames"]) == 4
        png = base64.b64decode(walk.json()["frames"][0].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size == (28, 28)
    finally:
        c.__exit__(None, None, None)


def test_the_trainer_fits_the_density(tmp_path: Path) -> None:
    out = tmp_path / "sparse"
    assert main(["train", "--family", "sparse-ae", "--dry-run", "--width", "4", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1",
                 "--prior-components", "2"]) == 0  # fmt: skip
    assert "generate" in load_model(out).operations
    none = tmp_path / "none"
    assert main(["train", "--family", "ae", "--dry-run", "--width", "4", "--out", str(none),
                 "--checkpoint-dir", str(tmp_path / "ck2"), "--threads", "1",
                 "--prior-components", "0"]) == 0  # fmt: skip
    assert not (none / DENSITY_FILE).exists()


def test_fit_prior_gives_an_rbm_the_start_its_served_chains_begin_at(tmp_path: Path) -> None:
    """On an RBM, fit-prior fits the Bernoulli mixture generated chains start from: the model
    is rebuilt with ``start_components``, its weights kept, and the service generates from it."""
    folder = write_tiny(tmp_path / "rbm-s", "rbm", image_shape=(1, 28, 28))
    (folder / "card.json").write_text(json.dumps({"dataset": {"name": "synthetic"}}))
    before = load_model(folder)
    assert main(["fit-prior", "--model", str(folder), "--components", "4", "--threads", "1"]) == 0
    after = load_model(folder)
    assert after.config.start_components == 4 and after.chain_start is not None
    assert torch.equal(after.weight, before.weight)  # the rest of the model is kept
    assert torch.equal(after.log_partition, before.log_partition)
    weights = after.chain_start.log_weights.exp()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-5) and float(weights.min()) > 0.05
    summary = json.loads((folder / "card.json").read_text())["chain_start"]
    assert summary["components"] == 4 and summary["training_images"] == 409
    # a fitted RBM can be refitted with another count (the old start is not carried over)
    assert main(["fit-prior", "--model", str(folder), "--components", "3", "--threads", "1"]) == 0
    assert load_model(folder).config.start_components == 3
    assert main(["fit-prior", "--model", str(folder), "--components", "4", "--threads", "1"]) == 0

    c = start(Settings(weights_dir=tmp_path))
    try:
        body = {"n": 2, "seed": 5}
        one = c.post("/v1/models/rbm-s/generate?format=array", json=body)
        assert one.status_code == 200, one.text
        again = c.post("/v1/models/rbm-s/generate?format=array", json=body)
        assert one.json()["images"] == again.json()["images"]
    finally:
        c.__exit__(None, None, None)
