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

    def __post_init__(self) -> None:
        if len(self.scores) < 10:
            raise ValueError(f"a calibration needs at least 10 scores, got {len(self.scores)}")
        if any(not math.isfinite(s) for s in self.scores):
            raise ValueError("calibration scores must be finite")
        if list(self.scores) != sorted(self.scores):
            raise ValueError("calibration scores must be sorted")

    def percentile(self, score: float) -> float:
        """Share of the reference scores below ``score``, in percent (ties count half)."""
        low = bisect.bisect_left(self.scores, score)
        high = bisect.bisect_right(self.scores, score)
        return 100.0 * (low + 0.5 * (high - low)) / len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, **dataclasses.asdict(self), "scores": list(self.scores)}


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
        return Calibration(
            method=str(data["method"]), scores=tuple(float(s) for s in data["scores"]),
            reference=str(data["reference"]), samples=int(data["samples"]),
            likelihood=str(data["likelihood"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: {exc}") from None
