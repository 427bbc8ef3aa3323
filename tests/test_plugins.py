"""A family from another installed package: trained by the CLI, served after a reload with
every operation it declares; a broken plugin is named in readiness and harms nothing else.

The packages are written to tmp_path with their own ``*.dist-info`` metadata (what pip
writes when it installs a package) and put on ``sys.path``, where importlib.metadata finds
their ``latentserve.families`` entry points as it would for any installed package.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models import FAMILIES
from models.plugins import FAILED, load_plugins
from service import Settings
from training.cli import main
from training.families import SPECS, trainable

from .conftest import API_KEY, start
from .factories import write_tiny
from .test_deploy import call_operation

# A whole family in two small files: the model with its declaration, and its training side
# (a separate module, so that a server without the trainer never imports it).
TOY = '''
import dataclasses

import torch
from torch import nn

from models import LatentModel, ModelConfig, Op
from models.base import check_code_shape, check_images, register


@dataclasses.dataclass
class ToyConfig(ModelConfig):
    latent_dim: int = 3


@register
class ToyAutoencoder(LatentModel):
    """A linear autoencoder with a Gaussian prior: x [B, C, H, W] <-> z [B, K]."""

    family = "toy-ae"
    config_class = ToyConfig
    operations = {
        "encode": Op("encode"), "decode": Op("decode"), "reconstruct": Op("reconstruct"),
        "generate": Op("decode", prepare="sample_latent"),
    }
    example_config = {"latent_dim": 3}
    latent_prior = "normal"

    def __init__(self, config):
        super().__init__(config)
        pixels = config.image_shape[0] * config.image_shape[1] * config.image_shape[2]
        self.down, self.up = nn.Linear(pixels, config.latent_dim), nn.Linear(config.latent_dim, pixels)

    def encode(self, x):
        check_images(self, x)
        return self.down(x.flatten(1))

    def forward(self, x):  # logits, as the base recipe trains them
        return self.up(self.encode(x)).view(-1, *self.image_shape)

    def decode(self, z):
        check_code_shape(self, z)
        return torch.sigmoid(self.up(z)).view(-1, *self.image_shape)

    def reconstruct(self, x):
        return self.decode(self.encode(x))
'''
TOY_TRAINING = """
from training.declaration import TrainingSpec, register_training
from training.recipes import Recipe
from training.scoring import evaluate_reconstruction

register_training(TrainingSpec(
    family="toy-ae", recipe=Recipe, evaluate=evaluate_reconstruction,
    headline=lambda m: f"PSNR {m['psnr']:.2f} dB",
))
"""


def install(
    root: Path, package: str, entries: dict[str, dict[str, str]], modules: dict[str, str]
) -> None:
    """What pip leaves for an installed package: its modules and its dist-info."""
    (root / package).mkdir()
    for name, code in modules.items():
        (root / package / f"{name}.py").write_text(code)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    groups = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in found.items())
        for group, found in entries.items()
    )
    (info / "entry_points.txt").write_text(groups)


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    install(site, "toy_family",
            {"latentserve.families": {"toy-ae": "toy_family:ToyAutoencoder"},
             "latentserve.training": {"toy-ae": "toy_family.training"}},
            {"__init__": TOY, "training": TOY_TRAINING})  # fmt: skip
    install(site, "broken_family", {"latentserve.families": {"broken-ae": "broken_family:Nothing"}},
            {"__init__": "raise ImportError('this plugin needs a package that is not installed')"})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    yield site
    FAMILIES.pop("toy-ae", None)
    SPECS.pop("toy-ae", None)
    for module in ("toy_family", "toy_family.training", "broken_family"):
        sys.modules.pop(module, None)
    FAILED.clear()


def test_a_plugin_family_is_trained_reloaded_and_served(plugins: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    write_tiny(weights / "ae-t", "ae")
    client = start(Settings(weights_dir=weights, api_key=API_KEY))
    try:
        # trained by the CLI like a shipped family (the dry run: 3 steps on synthetic data)
        code = main(["train", "--family", "toy-ae", "--dry-run", "--out", str(weights / "toy"),
                     "--checkpoint-dir", str(tmp_path / "ckpt")])  # fmt: skip
        assert code == 0 and (weights / "toy" / "model.safetensors").exists()

        reply = client.post("/v1/admin/reload", headers={"x-api-key": API_KEY}).json()
        assert "toy" in reply["loaded"]
        assert "broken-ae" in reply["plugins_failed"]

        info = client.get("/v1/models/toy").json()
        assert info["family"] == "toy-ae"
        assert info["operations"] == [
            "arithmetic", "decode", "denoise", "encode", "generate", "interpolate", "reconstruct",
        ]  # fmt: skip
        for operation in info["operations"]:
            r = call_operation("", "toy", operation, info, post=client.post)
            assert r.status_code == 200, (operation, r.text)

        ready = client.get("/health/ready")
        assert ready.status_code == 200, ready.text  # the broken plugin takes nothing down
        body = ready.json()
        assert body["models"] == ["ae-t", "toy"]
        assert "this plugin needs a package" in body["plugins_failed"]["broken-ae"]
    finally:
        client.__exit__(None, None, None)


def test_a_broken_plugin_is_named_and_the_others_load(plugins: Path) -> None:
    failed = load_plugins()
    assert list(failed) == ["broken-ae"] and "ImportError" in failed["broken-ae"]
    assert "toy-ae" in FAMILIES and "toy-ae" not in SPECS  # the service side never trains
    assert "toy-ae" in trainable() and "toy-ae" in SPECS


def test_an_unknown_family_names_the_broken_plugins(plugins: Path, tmp_path: Path) -> None:
    from models import ConfigError, build_model

    with pytest.raises(ConfigError, match="plugins that failed to load: broken-ae"):
        build_model("no-such-family", {})
