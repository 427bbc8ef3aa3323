"""Evaluation of the density models (vae, cvae, pixelcnn, made, rbm): likelihoods on stated
conventions beside the baselines any compressor or counting model gives, and anomaly
detection AUROC against out-of-distribution sets (ood.py), raw likelihood beside the
input-complexity score (models/anomaly.py). Writes the anomaly calibration (the validation
split's scores) into the artifact for the service's percentiles.
"""

from __future__ import annotations

import argparse
import io
import lzma
import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import LatentModel
from models.anomaly import (
    COMPLEXITY_CONVENTIONS,
    METHOD,
    PARTS,
    Calibration,
    FeatureGaussian,
    combined_calibration,
    combined_method,
    complexity_bits,
    fit_feature_gaussian,
    has_anomaly_score,
    orientation_score,
    orientations,
    reorient,
    write_calibration,
    write_feature_gaussian,
)

from .data import Dataset
from .ood import auroc, ood_sets
from .scoring import Metrics, as_float, in_batches

LN2 = math.log(2)


@torch.no_grad()
def log_likelihoods(
    model: LatentModel, x: torch.Tensor, samples: int = 1, desc: str = "likelihood"
) -> torch.Tensor:
    """The model's log-likelihood (or bound, or estimate) of every image x [N, C, H, W]: [N] nats."""
    kwargs = {"samples": samples} if model.density and model.density.takes_samples else {}
    batch = max(1, 2000 // max(1, samples))
    out = []
    for i in tqdm(range(0, len(x), batch), desc=desc, leave=False, mininterval=2.0):
        out.append(model.run("likelihood", x[i : i + batch], **kwargs).tensors()["log_likelihood"])
    return torch.cat(out).double()


def model_features(model: LatentModel, x: torch.Tensor) -> torch.Tensor:
    """The features the model's density declares for the anomaly score, of images x: [N, D]."""
    assert model.density is not None and model.density.features is not None
    return in_batches(getattr(model, model.density.features), x)


def per_pixel_baseline(train: torch.Tensor, test: torch.Tensor, convention: str) -> float:
    """bits/dim of the test images under independent per-pixel distributions fitted on train
    (categorical over 256 levels, or Bernoulli), in the model's convention."""
    tr, te = train.flatten(1), test.flatten(1)
    if convention == "8-bit discrete":
        levels_tr, levels_te = (tr * 255).round().long(), (te * 255).round().long()
        counts = torch.zeros(tr.shape[1], 256, dtype=torch.float64)
        counts.scatter_add_(1, levels_tr.T, torch.ones_like(levels_tr.T, dtype=torch.float64))
        probs = (counts + 0.5) / (counts.sum(1, keepdim=True) + 128)  # Krichevsky-Trofimov
        nll = -torch.log(probs.gather(1, levels_te.T)).T.sum(1)  # [N] nats
    else:
        if convention == "binarized at 0.5":
            tr, te = (tr > 0.5).double(), (te > 0.5).double()
        p = ((tr.double().sum(0) + 0.5) / (len(tr) + 1)).clamp(1e-6, 1 - 1e-6)
        te = te.double()
        nll = -(te * p.log() + (1 - te) * (-p).log1p()).sum(1)
    return float(nll.mean() / (LN2 * tr.shape[1]))


def codec_baselines(test: torch.Tensor) -> dict[str, float]:
    """bits/dim of 8-bit test images [N, 1, H, W] under real lossless codecs: PNG and WebP
    lossless per image, lzma over the whole set at once."""
    from PIL import Image

    pixels = (test.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    dims = pixels[0].size
    png = 0
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img, "L").save(buf, "PNG", optimize=True)
        png += len(buf.getvalue())
    webp = float(complexity_bits(test, "8-bit discrete").sum()) / 8
    whole = len(lzma.compress(pixels.tobytes(), preset=9 | lzma.PRESET_EXTREME))
    n = len(pixels)
    return {
        "PNG (per image)": 8 * png / (n * dims),
        "WebP lossless (per image)": 8 * webp / (n * dims),
        "lzma (the whole test set at once)": 8 * whole / (n * dims),
    }


@torch.no_grad()
def evaluate_density(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    density = model.density
    assert density is not None, f"{model.family} declares no density"
    dims = math.prod(model.image_shape)
    samples = getattr(args, "likelihood_samples", 1) if density.takes_samples else 1
    ll = log_likelihoods(model, test, samples, "test likelihood")
    out: Metrics = {
        "likelihood_kind": density.describe(samples),
        "likelihood_convention": density.convention,
        "test_log_likelihood_nats": float(ll.mean()),
        "test_bits_per_dim": float(-ll.mean() / (LN2 * dims)),
    }
    train = as_float(data.train.images)
    baselines = {"per-pixel (fitted on train)": per_pixel_baseline(train, test, density.convention)}
    if density.convention == "8-bit discrete" and tuple(model.image_shape[:1]) == (1,):
        baselines.update(codec_baselines(test))
    out["baseline_bits_per_dim"] = baselines
    out.update(anomaly_metrics(model, data, test, ll, samples, args))
    return out


def anomaly_metrics(
    model: LatentModel, data: Dataset, test: torch.Tensor, test_ll: torch.Tensor,
    samples: int, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """AUROC per out-of-distribution set, raw likelihood (-log p) and input complexity side
    by side; the validation split's scores become the artifact's calibration."""
    assert model.density is not None
    convention = model.density.convention
    dims = math.prod(model.image_shape)

    # the 8-bit image's code length, also where it is not comparable (reported, not served)
    codec_convention = convention if convention in COMPLEXITY_CONVENTIONS else "8-bit discrete"

    def scores(x: torch.Tensor, ll: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        raw = (-ll / (LN2 * dims)).numpy()
        corrected = (-ll / LN2 - complexity_bits(x, codec_convention)).numpy() / dims
        return raw, corrected

    # a density with features: their Gaussian on training images, for the combined score
    gaussian: FeatureGaussian | None = None
    train = data.train.images[: getattr(args, "feature_images", 10_000)]
    if model.density.features is not None and has_anomaly_score(model.density) and len(train) > 1:
        gaussian = fit_feature_gaussian(model_features(model, as_float(train)))

    # the orientation part: wherever the score is served (its likelihood is a code length)
    turns = orientations(model.image_shape) if has_anomaly_score(model.density) else ()

    def extra_parts(x: torch.Tensor, ll: torch.Tensor, what: str) -> dict[str, np.ndarray]:
        """The parts beside input complexity of images x [N] whose likelihoods are ll [N]."""
        parts = {}
        if gaussian is not None:
            parts["feature_distance"] = gaussian.distance(model_features(model, x)).numpy()
        if turns:
            reoriented = log_likelihoods(model, reorient(x, turns), samples, f"{what}, reoriented")
            parts["orientation"] = orientation_score(ll, reoriented, dims).numpy()
        return parts

    names = (PARTS[0], *(["feature_distance"] if gaussian is not None else []),
             *(["orientation"] if turns else []))  # fmt: skip
    out: dict[str, Any] = {"anomaly_method": combined_method(names) if len(names) > 1 else METHOD}
    if gaussian is not None:
        out.update(anomaly_feature_images=len(train), anomaly_features=len(gaussian.mean))
    if turns:
        out["anomaly_orientations"] = list(turns)
    calibration: Calibration | None = None
    val = as_float(data.val.images)[: getattr(args, "calibration_images", 2000)]
    if len(val) >= 10:
        val_ll = log_likelihoods(model, val, samples, "validation likelihood")
        _, val_scores = scores(val, val_ll)
        calibration = Calibration(
            method=METHOD, scores=tuple(sorted(float(s) for s in val_scores)),
            reference=f"validation split of {data.name}, {len(val)} images", samples=samples,
            likelihood=model.density.describe(samples),
        )  # fmt: skip
        if len(names) > 1:  # each part's held-out scores, then the combined ones
            parts = {"input_complexity": val_scores, **extra_parts(val, val_ll, "validation")}
            calibration = combined_calibration(calibration, parts)
            val_scores = calibration.combine(parts)
        out["anomaly_calibration_images"] = len(val)
        out["anomaly_threshold_99th_percentile"] = float(np.percentile(val_scores, 99))
        served = has_anomaly_score(model.density)
        out["anomaly_served"] = served
        if served and not getattr(args, "no_write", True) and getattr(args, "model", None):
            if gaussian is not None:
                write_feature_gaussian(args.model, gaussian)
            write_calibration(args.model, calibration)
    if tuple(model.image_shape) != (1, 28, 28):
        return out  # the rendered sets are in MNIST's layout
    n = getattr(args, "ood_images", 1000)
    inl = test[:n]
    in_raw, in_s = scores(inl, test_ll[:n])
    combined = calibration is not None and calibration.combined
    if combined:
        assert calibration is not None
        in_parts = {"input_complexity": in_s, **extra_parts(inl, test_ll[:n], "test")}
        in_c = calibration.combine(in_parts)
    table = {}
    for name, x in tqdm(ood_sets(test, n).items(), desc="out-of-distribution sets", leave=False):
        ll = log_likelihoods(model, x, samples, name)
        raw, corrected = scores(x, ll)
        table[name] = {
            "likelihood": auroc(in_raw, raw),
            "input_complexity": auroc(in_s, corrected),
            "mean_bits_per_dim": float(raw.mean()),
        }
        if combined:
            assert calibration is not None
            parts = {"input_complexity": corrected, **extra_parts(x, ll, name)}
            for part in calibration.part_names[1:]:
                table[name][part] = auroc(in_parts[part], parts[part])
            table[name]["combined"] = auroc(in_c, calibration.combine(parts))
    out["anomaly_auroc"] = table
    served = "combined" if combined else "input_complexity"
    out["anomaly_auroc_min"] = min(v[served] for v in table.values())  # the served score's
    return out


def density_headline(m: Metrics) -> str:
    auc = (
        f", anomaly AUROC >= {m['anomaly_auroc_min']:.3f} on every OOD set"
        if "anomaly_auroc_min" in m
        else ""
    )
    return f"{m['test_bits_per_dim']:.3f} bits/dim ({m['likelihood_kind']}, {m['likelihood_convention']}){auc}"
