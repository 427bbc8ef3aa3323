"""The request/response codec both peers share: base64 PNG in, base64 PNG data URL out."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


def decode(text: str, side: int = 28) -> torch.Tensor:
    data = base64.b64decode(text.split(",")[-1])
    img = Image.open(io.BytesIO(data)).convert("L")
    if img.size != (side, side):
        img = img.resize((side, side), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).unsqueeze(0)  # [1, H, W]


def encode(x: torch.Tensor) -> str:
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8)[0].numpy()
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
