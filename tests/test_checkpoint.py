"""Save/load round trips, and clear errors for every way a checkpoint can be broken."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import CheckpointError, load_model, save_model
from models.operations import INPUTS

from .factories import TINY, tiny_model


@pytest.mark.parametrize("family", list(TINY))
def test_round_trip_gives_identical_outputs(family: str, tmp_path: Path) -> None:
    model = tiny_model(family, image_shape=(3, 32, 32), seed=3)
    save_model(model, tmp_path / family)
    loaded = load_model(tmp_path / family)
    assert not loaded.training
    assert loaded.config == model.config
    # The weights themselves survive bit for bit, whatever layout they are stored in.
    fresh, back = model.state_dict(), loaded.state_dict()
    assert fresh.keys() == back.keys()
    assert all(torch.equal(fresh[k], back[k]) for k in fresh)
    kernels = [p for p in loaded.parameters() if p.dim() == 4]  # conv weights: channels-last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert kernels or family in ("stacked-ae", "made", "rbm")  # the fully connected ones
    # Outputs are compared with both models in the same memory format: then the same oneDNN
    # kernels run on the same numbers and the outputs are identical on any CPU. Across formats
    # oneDNN may pick other kernels (it does on AVX2-only CPUs: 6e-8 apart), a property of the
    # CPU and not of the checkpoint, so that comparison is not made here.
    model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x, z = torch.rand(2, 3, 32, 32), torch.randn(2, model.latent_dim)
    with torch.no_grad():
        for operation, op in model.operations.items():  # every declared call but searches
            if op.search or op.prepare:
                continue
            given = z if INPUTS[operation] == "latents" else x
            fresh_out, loaded_out = model.run(operation, given), loaded.run(operation, given)
            for key, value in fresh_out.tensors().items():
                assert torch.equal(value, loaded_out.tensors()[key]), (operation, key)
    assert sorted(p.name for p in (tmp_path / family).iterdir()) == [
        "config.json",
        "model.safetensors",
    ]


def test_config_json_is_plain_and_complete(tmp_path: Path) -> None:
    save_model(tiny_model("dae"), tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["format"] == 1 and doc["family"] == "dae"
    assert doc["config"]["image_shape"] == [1, 28, 28]
    assert doc["config"]["noise_kinds"] == ["gaussian", "salt_pepper", "mask"]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    save_model(tiny_model("ae"), tmp_path)
    return tmp_path


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_mode_a_new_file_would(tmp_path: Path, umask: int, mode: int) -> None:
    """Written through a private temporary file, a checkpoint still gets what open() gives
    under the umask: a server running as another user (the container's) can read it."""
    old = os.umask(umask)
    try:
        folder = save_model(tiny_model("ae"), tmp_path / "ae")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).stat().st_mode & 0o777 == mode, name


def test_truncated_weights(saved: Path) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        load_model(saved)


def test_garbage_header(saved: Path) -> None:
    (saved / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(saved)


def test_pickle_bytes_are_not_a_checkpoint(saved: Path) -> None:
    torch.save({"x": torch.zeros(1)}, saved / "model.safetensors")  # a zip of pickles
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(saved)


def test_tampered_shape(saved: Path) -> None:
    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.head.1.weight"] = torch.zeros(5, 3)
    save_file(state, str(weights))
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'encoder.head.1.weight' is torch.float32 \[5, 3\], the config needs",
    ):
        load_model(saved)


def test_missing_and_extra_tensors(saved: Path) -> None:
    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    del state["decoder.head.0.bias"]
    state["backdoor"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(
        CheckpointError, match=r"missing \['decoder.head.0.bias'\], unexpected \['backdoor'\]"
    ):
        load_model(saved)


def test_nan_weights(saved: Path) -> None:
    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.head.1.bias"][0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="contains NaN"):
        load_model(saved)


def test_config_with_wrong_shapes(saved: Path) -> None:
    doc = json.loads((saved / "config.json").read_text())
    doc["config"]["latent_dim"] = 9
    (saved / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="the config needs"):
        load_model(saved)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable JSON"),
        ('{"format": 1, "family": "ae"}', "expected an object with format, family and config"),
        ('{"format": 2, "family": "ae", "config": {}}', "format 2 is not supported"),
        ('{"format": 1, "family": "nade", "config": {}}', "unknown family 'nade'"),
        (
            '{"format": 1, "family": "ae", "config": {"latent_dim": -1}}',
            "latent_dim must be a positive",
        ),
    ],
)
def test_bad_config_json(saved: Path, content: str, message: str) -> None:
    (saved / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_model(saved)
    assert "config.json" in str(info.value)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_model(tmp_path)
    save_model(tiny_model("ae"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_model(tmp_path)
