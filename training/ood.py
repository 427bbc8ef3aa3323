"""Out-of-distribution image sets for anomaly evaluation, built here without downloading
anything: digits and letters rendered from the system's fonts in MNIST's layout, noise,
constant images, and Fashion-MNIST itself flipped upside down or inverted.

MNIST's layout (LeCun et al. 1998): the glyph, white on black, is scaled to fit a 20x20 box
keeping its aspect ratio, antialiased, and placed in a 28x28 frame with its centre of mass at
the centre. Each glyph here gets a random font (every TrueType font under /usr/share/fonts,
else Pillow's built-in one), a rotation of up to 12 degrees and a random stroke weight.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FontLoader = Callable[[int], ImageFont.FreeTypeFont | ImageFont.ImageFont]


@functools.lru_cache(maxsize=512)
def _truetype(file: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(file, size)


def system_fonts() -> list[FontLoader]:
    """A loader (size -> font) per TrueType font on the system; Pillow's own if none."""
    files = sorted({p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")})
    loaders: list[FontLoader] = []
    for file in files:
        try:
            ImageFont.truetype(str(file), 20)
        except OSError:
            continue
        loaders.append(functools.partial(_truetype, str(file)))
    return loaders or [lambda size: ImageFont.load_default(size)]


def mnist_layout(glyph: np.ndarray) -> np.ndarray:
    """A white-on-black glyph (any size, float) -> 28x28 in MNIST's layout, float in [0, 1]."""
    ys, xs = np.nonzero(glyph > 0.05)
    if not len(ys):
        return np.zeros((28, 28), np.float32)
    crop = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = (
        np.asarray(
            Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32
        )
        / 255
    )
    frame = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    cy, cx = ndimage.center_of_mass(frame)
    return np.clip(ndimage.shift(frame, (14 - cy, 14 - cx), order=1, mode="constant"), 0, 1)


def render_glyphs(chars: str, n: int, seed: int) -> torch.Tensor:
    """``n`` images [n, 1, 28, 28] in [0, 1] of characters drawn from ``chars``."""
    rng = np.random.default_rng(seed)
    fonts = system_fonts()
    out = np.zeros((n, 28, 28), np.float32)
    for i in range(n):
        font = fonts[rng.integers(len(fonts))](int(rng.integers(48, 72)))
        canvas = Image.new("L", (112, 112), 0)
        stroke = int(rng.integers(0, 4))
        ImageDraw.Draw(canvas).text((20, 10), chars[rng.integers(len(chars))], fill=255, font=font,
                                    stroke_width=stroke, stroke_fill=255)  # fmt: skip
        canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
        canvas = canvas.filter(ImageFilter.GaussianBlur(0.6))
        out[i] = mnist_layout(np.asarray(canvas, np.float32) / 255)
    return torch.from_numpy(out).unsqueeze(1)


def ood_sets(test: torch.Tensor, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> [n, 1, 28, 28] in [0, 1] (quantized to 8 bits, as stored images are).
    ``test`` is the in-distribution test split [N, 1, 28, 28] in [0, 1]."""
    if tuple(test.shape[1:]) != (1, 28, 28):
        raise ValueError("the rendered sets are in MNIST's 1x28x28 layout")
    g = torch.Generator().manual_seed(seed)
    pick = test[torch.randperm(len(test), generator=g)[:n]]
    sets = {
        "digits (fonts, MNIST layout)": render_glyphs(string.digits, n, seed),
        "letters (fonts, MNIST layout)": render_glyphs(string.ascii_letters, n, seed + 1),
        "uniform noise": torch.rand(n, 1, 28, 28, generator=g),
        "constant images": torch.rand(n, 1, 1, 1, generator=g).expand(n, 1, 28, 28).clone(),
        "fashion-mnist upside down": pick.flip(2),
        "fashion-mnist inverted": 1 - pick,
    }
    return {k: (v.clamp(0, 1) * 255).round() / 255 for k, v in sets.items()}


def auroc(inliers: np.ndarray, outliers: np.ndarray) -> float:
    """Area under the ROC curve of a score where higher means outlier: the chance that a
    random outlier scores above a random inlier, ties counting half (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inliers, outliers]))
    n_in, n_out = len(inliers), len(outliers)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))
