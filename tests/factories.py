"""Tiny seeded models for tests: small enough that a forward pass takes milliseconds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from models import FAMILIES, LatentModel, build_model, save_model
from models.anomaly import (
    METHOD,
    Calibration,
    combined_calibration,
    complexity_score,
    fit_feature_gaussian,
    has_anomaly_score,
    orientation_score,
    orientations,
    reorient,
    write_calibration,
    write_feature_gaussian,
)
from models.atlas import has_atlas, write_atlas
from models.gibbs import exact_log_partition
from models.operations import SearchBudget
from models.rbm import RBM
from training.atlas import fit_atlas
from training.data import synthetic

# every family's smallest config, from its own declaration (LatentModel.example_config)
TINY: dict[str, dict[str, Any]] = {family: cls.example_config for family, cls in FAMILIES.items()}


def tiny_model(
    family: str, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0, **overrides: Any
) -> LatentModel:
    torch.manual_seed(seed)
    model = build_model(family, {**TINY[family], "image_shape": image_shape, **overrides})
    generate = model.operations.get("generate")
    if generate is not None and not generate.search:  # settle batch-norm statistics
        model.train()
        with torch.no_grad():
            model.sample(64)
    if isinstance(model, RBM):  # tiny: its partition function is summed exactly
        model.log_partition.copy_(torch.tensor([exact_log_partition(model), 0.0]))
    return model.eval()


def write_tiny(folder: Path, family: str, atlas: tuple[str, ...] = ("pca",), **kwargs: Any) -> Path:
    """Save a tiny model; a density model also gets an anomaly calibration (the scores of 32
    seeded random images), so the service answers anomaly for it, and a model with a code an
    atlas of 32 synthetic images on the ``atlas`` projections (none: no atlas)."""
    model = tiny_model(family, **kwargs)
    save_model(model, folder)
    if atlas and has_atlas(model):
        data = synthetic(model.image_shape, n=320, seed=3)
        fitted, sheet = fit_atlas(model, data, 32, budget=SearchBudget(3, 1), projections=atlas)
        write_atlas(folder, fitted, sheet)
    if has_anomaly_score(model.density):
        x = torch.rand(32, *model.image_shape, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            ll = model.run("likelihood", x).tensors()["log_likelihood"]
        scores = complexity_score(ll, x, model.density.convention)
        calibration = Calibration(
            METHOD, tuple(sorted(scores.tolist())), "32 random images", 1, model.density.kind
        )
        # the combined score, as the evaluator makes it: the orientation part, and the
        # features' Gaussian where the model has features
        turns = orientations(model.image_shape)
        with torch.no_grad():
            reoriented = model.run("likelihood", reorient(x, turns)).tensors()["log_likelihood"]
        dims = math.prod(model.image_shape)
        parts = {"input_complexity": scores.numpy(),
                 "orientation": orientation_score(ll, reoriented, dims).numpy()}  # fmt: skip
        if model.density.features is not None:
            features = getattr(model, model.density.features)
            train = torch.rand(64, *model.image_shape, generator=torch.Generator().manual_seed(10))
            with torch.no_grad():
                gaussian = fit_feature_gaussian(features(train))
                distance = gaussian.distance(features(x))
            write_feature_gaussian(folder, gaussian)
            parts["feature_distance"] = distance.numpy()
        calibration = combined_calibration(calibration, parts)
        write_calibration(folder, calibration)
    return folder
