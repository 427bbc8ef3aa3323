"""Turn image tensors into PIL images and grids; shared by the trainer and the service."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL image to 8-bit 'L' (channels=1) or 'RGB' (channels=3).

    Transparent pixels are composited onto white; 16-bit and 32-bit greyscale are scaled to
    8 bits; palette, CMYK, YCbCr and the rest go through PIL's own conversion.
    """
    target = "L" if channels == 1 else "RGB"
    if img.mode == target and "transparency" not in img.info:
        return img  # the common case: no copy
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255, 0, 255).round().astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(
            np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8)
        )
    return img.convert(target)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """x float [B, C, H, W] in [0, 1] -> uint8 [B, H, W, C]: x * 255 rounded half to even,
    clamped to 0..255; NaN -> 0, +-inf -> 255 / 0.

    The service converts each forward pass's output at once, on its inference thread.
    """
    pixels = x.nan_to_num(0.0).mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``to_pixels`` as a NumPy array, for any tensor (with gradients, on any device)."""
    return to_pixels(x.detach()).numpy(force=True)


def to_pil(arr: np.ndarray) -> Image.Image:
    """uint8 [H, W, C] with C = 1 or 3 -> a PIL image in mode 'L' or 'RGB'."""
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def make_grid(
    x: torch.Tensor, columns: int | None = None, pad: int = 2, scale: int = 1
) -> Image.Image:
    """Tile x [B, C, H, W] in [0, 1] into one image, ``columns`` wide, on a white background."""
    arr = to_uint8(x)
    b, h, w, c = arr.shape
    cols = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = arr[i]
    image = to_pil(grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image
