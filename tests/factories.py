"""Tiny seeded models for tests: small enough that a forward pass takes milliseconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models import FAMILIES, LatentModel, build_model, save_model

# every family's smallest config, from its own declaration (LatentModel.example_config)
TINY: dict[str, dict[str, Any]] = {family: cls.example_config for family, cls in FAMILIES.items()}


def tiny_model(
    family: str, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, **overrides: Any
) -> LatentModel:
    torch.manual_seed(seed)
    model = build_model(family, {**TINY[family], "image_shape": image_shape, **overrides})
    if "generate" in model.operations:  # settle batch-norm statistics: eval mode not degenerate
        model.train()
        with torch.no_grad():
            model.sample(64)
    return model.eval()


def write_tiny(folder: Path, family: str, **kwargs: Any) -> Path:
    save_model(tiny_model(family, **kwargs), folder)
    return folder
