"""The likelihood and anomaly operations, free of HTTP: what the model's ``density``
declaration says it computes, checked parameters, and the reply's numbers.

``likelihood`` reports log p(x) in nats and bits/dim with what kind of number it is (exact,
a bound, an estimate) and the convention it is on (models/operations.py ``Density``).
``anomaly`` turns the likelihood into the input-complexity score of models/anomaly.py (for a
model whose calibration combines parts, with the distance of its features to their training
Gaussian and the likelihood of the image's reorientations against its own) and places it among
the scores of held-out training-like images stored with the weights.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from models import Op
from models.anomaly import complexity_score, orientation_score, orientations, reorient

from .config import Settings
from .inference import Operations
from .problems import InvalidInput
from .registry import LoadedModel


def choose_samples(lm: LoadedModel, samples: int | None, settings: Settings) -> int | None:
    """The importance samples K to run with: the request's, else the setting's; None for a
    model whose likelihood takes none. Out of range or not applicable: 422."""
    density = lm.model.density
    assert density is not None  # find_model checked the operation
    if not density.takes_samples:
        if samples is not None:
            raise InvalidInput(
                f"samples: {lm.name}'s likelihood is {density.kind!r} and takes no importance "
                "samples; leave samples out"
            )
        return None
    k = settings.likelihood_samples if samples is None else samples
    if not 1 <= k <= settings.max_likelihood_samples:
        raise InvalidInput(
            f"samples: must be between 1 and {settings.max_likelihood_samples} "
            f"(LATENTSERVE_MAX_LIKELIHOOD_SAMPLES), got {k}"
        )
    return k


def describe(lm: LoadedModel, log_likelihood: float, samples: int | None) -> dict[str, Any]:
    """One image's likelihood reply."""
    density = lm.model.density
    assert density is not None
    return {
        "log_likelihood_nats": log_likelihood,
        "bits_per_dim": -log_likelihood / (math.log(2) * math.prod(lm.model.image_shape)),
        "exact": density.exact,
        "kind": density.describe(samples or 1),
        "convention": density.convention,
        **({"samples": samples} if samples is not None else {}),
    }


async def likelihood(
    ops: Operations, lm: LoadedModel, x: torch.Tensor, samples: int | None
) -> dict[str, Any]:
    """x [1, C, H, W] -> the likelihood reply."""
    k = choose_samples(lm, samples, ops.settings)
    ll = await ops.log_likelihood(lm, x, k)
    return describe(lm, float(ll[0]), k)


def bits_per_dim(lm: LoadedModel, log_likelihood: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats [B] -> -log2 p(x) per dimension [B]."""
    return -log_likelihood / (math.log(2) * math.prod(lm.model.image_shape))


@dataclasses.dataclass
class AnomalyScores:
    """One row per image: the score, its percentile among the calibration images, the
    verdict, and the likelihood the score came from."""

    score: np.ndarray  # [B] float64
    percentile: np.ndarray  # [B] float64
    anomalous: np.ndarray  # [B] bool
    log_likelihood: torch.Tensor  # [B] nats
    samples: int | None
    parts: dict[str, np.ndarray]  # a combined score's parts, each [B]; {} for complexity alone


async def anomaly_scores(ops: Operations, lm: LoadedModel, x: torch.Tensor) -> AnomalyScores:
    """x [B, C, H, W] -> each image's score, percentile and verdict. The likelihood runs with
    the samples the calibration was made with, so the percentile compares like with like."""
    calibration, density = lm.calibration, lm.model.density
    assert calibration is not None and density is not None  # find_model checked "anomaly"
    samples = calibration.samples if density.takes_samples else None
    ll = await ops.log_likelihood(lm, x, samples)
    scores = complexity_score(ll, x, density.convention).numpy()
    parts: dict[str, np.ndarray] = {}
    if calibration.combined:
        parts["input_complexity"] = scores
        if "feature_distance" in calibration.part_names:
            assert lm.features is not None and density.features is not None  # registry checked
            features = await ops.run(lm, "likelihood", x, op=Op(density.features))
            assert isinstance(features, torch.Tensor)
            parts["feature_distance"] = lm.features.distance(features).numpy()
        if "orientation" in calibration.part_names:
            turns = orientations(lm.model.image_shape)
            reoriented = await ops.log_likelihood(lm, reorient(x, turns), samples)
            dims = math.prod(lm.model.image_shape)
            parts["orientation"] = orientation_score(ll, reoriented, dims).numpy()
        scores = calibration.combine(parts)
    percentiles = np.array([calibration.percentile(float(s)) for s in scores])
    return AnomalyScores(
        scores, percentiles, percentiles > ops.settings.anomaly_percentile, ll, samples, parts
    )


async def anomaly(ops: Operations, lm: LoadedModel, x: torch.Tensor) -> dict[str, Any]:
    """x [1, C, H, W] -> score, percentile among the calibration images, verdict."""
    assert lm.calibration is not None  # find_model checked "anomaly"
    found = await anomaly_scores(ops, lm, x)
    return {
        "score": float(found.score[0]),
        "percentile": float(found.percentile[0]),
        "anomalous": bool(found.anomalous[0]),
        "threshold_percentile": ops.settings.anomaly_percentile,
        "method": lm.calibration.method,
        "reference": lm.calibration.reference,
        "likelihood": describe(lm, float(found.log_likelihood[0]), found.samples),
        **({"parts": {k: float(v[0]) for k, v in found.parts.items()}} if found.parts else {}),
    }
