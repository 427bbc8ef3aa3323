"""An anomaly score that works where raw likelihood fails, and its calibration.

Raw likelihood is a poor detector of images that do not belong: a PixelCNN++ trained on
Fashion-MNIST gives MNIST digits *higher* likelihood than Fashion-MNIST's own test images
(AUROC 0.076; Nalisnick et al., "Do Deep Generative Models Know What They Don't Know?", ICLR
2019). Simple images are likely under any model. The input-complexity score of Serra et al.,
"Input Complexity and Out-of-Distribution Detection with Likelihood-based Generative Models",
ICLR 2020, subtracts what a general-purpose lossless compressor needs for the same image:

    S(x) = -log2 p(x) - L(x)          (here per dimension: bits/dim)

where L(x) is the length in bits of the image compressed losslessly (WebP lossless here,
Pillow's encoder (method 4, quality 50: as small as the slowest setting on these images): the strongest codec at hand, 4.55 bits/dim on Fashion-MNIST's
test set against PNG's 5.19). S is a log-likelihood ratio against the compressor as a
universal background model. Higher S = less like the training data.

The image the compressor sees follows the model's convention: the 8-bit image for "8-bit
discrete" and "Bernoulli on grey levels", the binarized one for "binarized at 0.5".

``Calibration`` holds the scores of held-out in-distribution images (the validation split,
measured by ``python -m training evaluate``) as ``anomaly.json`` beside the weights: plain
JSON, never unpickled. A new score's percentile is where it falls among them.

The complexity score sees how predictable the pixels are, so it catches images unlike any
training image in their local statistics (digits, noise, flat grey) but hardly a garment
upside down, whose strokes and textures are the training data's. A family whose density
declares ``features`` (a method giving the model's own hidden representation of an image)
adds a second statistic that sees global structure: the Mahalanobis distance of those
features to a Gaussian fitted on the training images (Lee, Lee, Lee & Shin, "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018),
stored as ``anomaly_features.safetensors``. The two are combined as Fisher's method combines
tests: each becomes its upper tail share p among the held-out images, and the score is
-ln(1 - p_complexity) - ln(1 - p_distance) (higher = less like the training data); the
calibration then holds the held-out images' combined scores as well as each part's.

Neither part sees which way up an image is: a garment upside down has the training data's
strokes, textures and, for many classes, nearly its silhouette. The third part asks the model
itself, as the transformation-based detectors do with a classifier (Golan & El-Yaniv,
"Deep Anomaly Detection Using Geometric Transformations", NeurIPS 2018; Hendrycks et al.,
"Using Self-Supervised Learning Can Improve Model Robustness and Uncertainty", NeurIPS 2019):
the orientation score is how much more likely the model finds the best of the image's quarter
turns and its upside-down mirror image than the image as given,

    O(x) = max_T [log2 p(T x) - log2 p(x)] / dims     (bits/dim; T over ``orientations``)

which is negative for training-like images (they are most likely the way they were drawn) and
rises for anything whose orientation the model does not expect. A likelihood ratio of the same
model, its normaliser cancels: an RBM's needs no partition function.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .operations import Density

CALIBRATION_FILE = "anomaly.json"
#: conventions under which -log2 p(x) and the codec's length count the same bits. Under
#: "Bernoulli on grey levels" (a VAE's) log p is not a code length for the 8-bit image, and the
#: difference is meaningless: measured, it calls uniform noise the most normal image of all
#: (AUROC 0.0), so those models get no anomaly operation.
COMPLEXITY_CONVENTIONS = ("8-bit discrete", "binarized at 0.5")


def has_anomaly_score(density: Density | None) -> bool:
    """Whether a model with this density gets the input-complexity score (and ``anomaly``)."""
    return density is not None and density.convention in COMPLEXITY_CONVENTIONS


METHOD = (
    "input complexity (Serra et al. 2020): -log2 p(x) minus the WebP-lossless length of x, bits/dim"
)
#: the parts a combined score may have, in this order (input complexity always first), as
#: its calibration and the anomaly reply name them, and how its method names each
PARTS = ("input_complexity", "feature_distance", "orientation")
PART_METHODS = {
    "input_complexity": "input complexity (Serra et al. 2020)",
    "feature_distance": "the Mahalanobis distance of the model's features to their training "
    "Gaussian (Lee et al. 2018)",
    "orientation": "the orientation likelihood ratio (the likeliest of the image's quarter "
    "turns and upside-down mirror against the image itself, after Golan & El-Yaniv 2018)",
}


def combined_method(parts: tuple[str, ...]) -> str:
    """The ``method`` of a score combining ``parts`` (a subsequence of PARTS)."""
    named = [PART_METHODS[p] for p in parts]
    listed = ", ".join(named[:-1]) + " and " + named[-1]
    return (
        f"{listed}, combined by Fisher's method: -ln(1 - p) summed over the parts, "
        "p = the share of held-out images scoring lower"
    )


def check_parts(parts: tuple[str, ...]) -> None:
    """A combined score's parts: input complexity and at least one more, in PARTS' order."""
    ordered = [p for p in PARTS if p in parts]
    if (
        len(parts) < 2
        or parts[0] != PARTS[0]
        or list(parts) != ordered
        or len(set(parts)) != len(parts)
    ):
        raise ValueError(
            f"a combined calibration has input_complexity and at least one more of {PARTS} "
            f"in that order, got {list(parts)}"
        )


def orientations(image_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The reorientations the orientation part tries: quarter turns (square images only) and
    the upside-down mirror image."""
    _, h, w = image_shape
    return ("rot90", "rot180", "rot270", "vflip") if h == w else ("rot180", "vflip")


def reorient(x: torch.Tensor, turns: tuple[str, ...]) -> torch.Tensor:
    """Images x [B, C, H, W] -> each reorientation of all of them, one after the other:
    [len(turns) * B, C, H, W]."""
    out = []
    for turn in turns:
        if turn == "vflip":
            out.append(x.flip(2))
        elif turn in ("rot90", "rot180", "rot270"):
            out.append(x.rot90(int(turn[3:]) // 90, (2, 3)))
        else:
            raise ValueError(f"unknown reorientation {turn!r}")
    return torch.cat(out).contiguous()


def orientation_score(
    log_likelihood_nats: torch.Tensor, reoriented_nats: torch.Tensor, dims: int
) -> torch.Tensor:
    """O(x) from log p(x) [B] and log p of reorient(x) [T * B] (nats): [B] bits/dim (float64)."""
    b = len(log_likelihood_nats)
    if b == 0 or reoriented_nats.numel() % b:
        raise ValueError(
            f"expected a multiple of {b} reoriented likelihoods, got {reoriented_nats.numel()}"
        )
    best = reoriented_nats.double().view(-1, b).max(0).values  # [B]
    return (best - log_likelihood_nats.double()) / (math.log(2) * dims)


FEATURES_FILE = "anomaly_features.safetensors"
MAX_FEATURES = 4096  # a precision matrix of 4096^2 float32 is 64 MB: the most a model may bring
MAX_CALIBRATION_BYTES = 4 << 20


def codec_image(x: torch.Tensor, convention: str) -> torch.Tensor:
    """The uint8 images [B, H, W, C] the compressor sees under a likelihood convention."""
    if convention not in COMPLEXITY_CONVENTIONS:
        raise ValueError(f"input complexity is not defined under the convention {convention!r}")
    if convention == "binarized at 0.5":
        x = (x > 0.5).float()
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def compressed_bits(pixels: np.ndarray) -> float:
    """Length in bits of one uint8 image [H, W, C] compressed by WebP lossless."""
    c = pixels.shape[2]
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, "L" if c == 1 else "RGB")
    buf = io.BytesIO()
    image.save(
        buf, "WEBP", lossless=True, quality=50, method=4
    )  # as small as effort 6, 1000x faster
    return 8.0 * len(buf.getvalue())


def complexity_bits(x: torch.Tensor, convention: str) -> torch.Tensor:
    """L(x) in bits for images x [B, C, H, W] in [0, 1]: [B] (float64)."""
    images = codec_image(x, convention).numpy()
    return torch.tensor([compressed_bits(img) for img in images], dtype=torch.float64)


def complexity_score(
    log_likelihood_nats: torch.Tensor, x: torch.Tensor, convention: str
) -> torch.Tensor:
    """S(x) = (-log2 p(x) - L(x)) / dims for x [B, C, H, W]: [B] bits/dim (float64)."""
    dims = math.prod(x.shape[1:])
    nll_bits = -log_likelihood_nats.double() / math.log(2)
    return (nll_bits - complexity_bits(x, convention)) / dims


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Scores of held-out in-distribution images, sorted, and how they were made."""

    method: str
    scores: tuple[float, ...]
    reference: str  # which images, e.g. "validation split of fashion-mnist, 5000 images"
    samples: int  # the importance samples of the likelihood it was computed from (1: none)
    likelihood: str  # the kind of that likelihood ("exact", "lower bound (ELBO)", ...)
    #: a combined score's parts (PARTS): each part's held-out scores, sorted; () for the
    #: complexity score alone
    parts: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def __post_init__(self) -> None:
        _check_sorted("calibration scores", self.scores)
        for name, scores in self.parts:
            _check_sorted(f"calibration part {name!r}", scores)
        if self.parts:
            check_parts(self.part_names)

    @property
    def combined(self) -> bool:
        return bool(self.parts)

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.parts)

    def combine(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """Each image's combined score [B] from its parts' values [B] (Fisher's method over the
        parts' upper tail shares among the held-out images)."""
        if set(parts) != set(self.part_names):
            raise ValueError(f"the parts {sorted(parts)} are not {list(self.part_names)}")
        total = np.zeros(len(parts[PARTS[0]]))
        for name, reference in self.parts:
            share = np.array([_share_below(reference, float(v)) for v in parts[name]])
            n = len(reference)
            total += -np.log1p(-np.clip(share, 0.5 / n, 1 - 0.5 / n))
        return total

    def percentile(self, score: float) -> float:
        """Share of the reference scores below ``score``, in percent (ties count half)."""
        return 100.0 * _share_below(self.scores, score)

    def to_dict(self) -> dict[str, Any]:
        parts = {name: list(scores) for name, scores in self.parts}
        return {
            "format": 1,
            **dataclasses.asdict(self),
            "scores": list(self.scores),
            "parts": parts,
        }


def combined_calibration(calibration: Calibration, parts: dict[str, np.ndarray]) -> Calibration:
    """A calibration of the complexity score alone, made a combined one from the same held-out
    images' parts (input complexity and others of PARTS, each [N]): each part's scores, and the
    combined scores."""
    names = tuple(p for p in PARTS if p in parts)
    if len(names) != len(parts):
        raise ValueError(f"unknown parts {sorted(set(parts) - set(PARTS))}; known: {PARTS}")
    check_parts(names)
    with_parts = dataclasses.replace(
        calibration, method=combined_method(names),
        parts=tuple((name, tuple(sorted(float(s) for s in parts[name]))) for name in names),
    )  # fmt: skip
    combined = with_parts.combine(parts)
    return dataclasses.replace(with_parts, scores=tuple(sorted(float(s) for s in combined)))


def _check_sorted(what: str, scores: tuple[float, ...]) -> None:
    if len(scores) < 10:
        raise ValueError(f"{what}: at least 10 scores are needed, got {len(scores)}")
    if any(not math.isfinite(s) for s in scores):
        raise ValueError(f"{what} must be finite")
    if list(scores) != sorted(scores):
        raise ValueError(f"{what} must be sorted")


def _share_below(reference: tuple[float, ...], value: float) -> float:
    """Share of the sorted ``reference`` below ``value`` (ties count half)."""
    low = bisect.bisect_left(reference, value)
    high = bisect.bisect_right(reference, value)
    return (low + 0.5 * (high - low)) / len(reference)


@dataclasses.dataclass(frozen=True)
class FeatureGaussian:
    """A Gaussian over a model's features, fitted on training images: mean [D] and the
    inverse of its covariance [D, D] (float64)."""

    mean: torch.Tensor
    precision: torch.Tensor

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of features [B, D] to the Gaussian: [B] (float64)."""
        if features.ndim != 2 or features.shape[1] != len(self.mean):
            raise ValueError(f"features [B, {len(self.mean)}] expected, got {list(features.shape)}")
        d = features.double() - self.mean
        return ((d @ self.precision) * d).sum(1)


def fit_feature_gaussian(features: torch.Tensor, ridge: float = 1e-3) -> FeatureGaussian:
    """The Gaussian of features [N, D]; the covariance gets ``ridge`` times its mean variance on
    the diagonal (dead ReLU units have none), so it always inverts."""
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features [N >= 2, D] expected, got {list(features.shape)}")
    f = features.double()
    mean = f.mean(0)
    centred = f - mean
    cov = centred.T @ centred / len(f)
    scale = float(cov.diagonal().mean()) or 1.0
    cov += ridge * scale * torch.eye(len(mean), dtype=torch.float64)
    return FeatureGaussian(mean, torch.linalg.inv(cov))


def write_feature_gaussian(folder: str | os.PathLike[str], gaussian: FeatureGaussian) -> Path:
    from safetensors.torch import save_file

    file = Path(folder) / FEATURES_FILE
    tmp = file.with_suffix(".tmp")
    save_file({"mean": gaussian.mean.float().contiguous(),
               "precision": gaussian.precision.float().contiguous()}, str(tmp))  # fmt: skip
    os.replace(tmp, file)
    return file


def read_feature_gaussian(folder: str | os.PathLike[str]) -> FeatureGaussian | None:
    """The feature Gaussian beside a model's weights, None if it has none; a broken file
    raises ValueError naming it. Read by safetensors: tensors only, nothing unpickled."""
    from safetensors import SafetensorError, safe_open

    file = Path(folder) / FEATURES_FILE
    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            if keys != {"mean", "precision"}:
                raise ValueError(f"holds {sorted(keys)}, not mean and precision")
            # shapes from the header first: nothing large is read before it is checked
            shapes = {k: list(f.get_slice(k).get_shape()) for k in ("mean", "precision")}
            d = shapes["mean"][0] if len(shapes["mean"]) == 1 else 0
            if not 0 < d <= MAX_FEATURES or shapes["precision"] != [d, d]:
                raise ValueError(
                    f"mean {shapes['mean']} and precision {shapes['precision']} do not fit"
                )
            mean, precision = f.get_tensor("mean").double(), f.get_tensor("precision").double()
        if not (torch.isfinite(mean).all() and torch.isfinite(precision).all()):
            raise ValueError("not finite")
        return FeatureGaussian(mean, precision)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{file}: {exc}") from None


def write_calibration(folder: str | os.PathLike[str], calibration: Calibration) -> Path:
    file = Path(folder) / CALIBRATION_FILE
    tmp = file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration.to_dict()) + "\n")
    os.replace(tmp, file)
    return file


def read_calibration(folder: str | os.PathLike[str]) -> Calibration | None:
    """The calibration beside a model's weights, None if it has none. A broken file raises
    ValueError naming it."""
    file = Path(folder) / CALIBRATION_FILE
    if not file.is_file():
        return None
    try:
        if file.stat().st_size > MAX_CALIBRATION_BYTES:
            raise ValueError(f"larger than {MAX_CALIBRATION_BYTES} bytes")
        data = json.loads(file.read_text())
        if not isinstance(data, dict) or data.get("format") != 1:
            raise ValueError("not a format-1 calibration")
        parts = data.get("parts") or {}
        if not isinstance(parts, dict):
            raise ValueError("parts must map each part's name to its scores")
        return Calibration(
            method=str(data["method"]), scores=tuple(float(s) for s in data["scores"]),
            reference=str(data["reference"]), samples=int(data["samples"]),
            likelihood=str(data["likelihood"]),
            parts=tuple((str(k), tuple(float(s) for s in v)) for k, v in parts.items()),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: {exc}") from None
