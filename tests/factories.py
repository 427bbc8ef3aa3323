"""Tiny seeded models for tests: small enough that a forward pass takes milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models import LatentModel, build_model, save_model

TINY: dict[str, dict[str, Any]] = {
    "ae": {"latent_dim": 4, "width": 4},
    "dae": {"latent_dim": 4, "width": 4},
    "sparse-ae": {"latent_dim": 6, "width": 4},
    "stacked-ae": {"latent_dim": 4, "hidden_sizes": [16, 8]},
    "vae": {"latent_dim": 3, "width": 4},
    "gan": {"latent_dim": 5, "width": 4},
    "cvae": {"latent_dim": 3, "width": 4, "class_names": ["boot", "sandal", "bag"]},
    "cgan": {
        "latent_dim": 5,
        "width": 4,
        "class_names": ["boot", "sandal", "bag"],
        "aux_class_weight": 1.0,  # the AC-GAN head, as cgan-fashion ships
    },
    "classifier": {"latent_dim": 8, "width": 4, "class_names": ["a", "b", "c"]},
}


def tiny_model(
    family: str, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, **overrides: Any
) -> LatentModel:
    torch.manual_seed(seed)
    model = build_model(family, {**TINY[family], "image_shape": image_shape, **overrides})
    if family in ("gan", "cgan"):  # settle batch-norm statistics so eval mode is not degenerate
        model.train()
        with torch.no_grad():
            model.decode(model.sample_latent(64))
    return model.eval()


def write_tiny(folder: Path, family: str, **kwargs: Any) -> Path:
    save_model(tiny_model(family, **kwargs), folder)
    return folder
