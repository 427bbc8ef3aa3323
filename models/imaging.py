"""Turn image tensors into PIL images and grids; shared by the trainer and the service."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """x float [B, C, H, W] in [0, 1] -> uint8 array [B, H, W, C]."""
    arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


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
