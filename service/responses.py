"""Shape replies: JSON with PNG data URLs (default), raw float arrays, a PNG, or a GIF."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, Response

from models.imaging import to_uint8

from .gif_worker import GifProcess
from .imaging import data_url, encode_png, gif_bytes, png_bytes

MIME = {
    "json": "application/json",
    "array": "application/json",
    "png": "image/png",
    "gif": "image/gif",
}


def choose_format(request: Request, allowed: tuple[str, ...]) -> str:
    """``?format=`` wins; else the first acceptable type in ``Accept``; else JSON."""
    fmt = request.query_params.get("format")
    if fmt is not None:
        if fmt not in allowed:
            raise HTTPException(
                406, f"format={fmt!r} is not available here; choose one of {', '.join(allowed)}"
            )
        return fmt
    accept = request.headers.get("accept", "")
    for part in accept.split(","):
        mime = part.split(";")[0].strip().lower()
        if mime in ("*/*", "", "application/*", "application/json"):
            return "json"
        for fmt, m in MIME.items():
            if mime == m and fmt in allowed and fmt != "array":
                return fmt
        if mime == "image/*" and "png" in allowed:
            return "png"
    if accept.strip():
        offered = ", ".join(MIME[f] for f in allowed if f != "array")
        raise HTTPException(406, f"cannot answer with {accept!r}; this route offers {offered}")
    return "json"


def image_reply(
    fmt: str,
    images: dict[str, torch.Tensor],
    meta: dict[str, Any],
    compress_level: int,
    single: bool,
    extra: dict[str, Any] | None = None,
    pace: Callable[[], None] | None = None,
    gifs: GifProcess | None = None,
    gif_scale: int = 4,
    gif_bounce: bool = True,
) -> Response:
    """Render named image batches (the first is the main result) in the chosen format;
    ``extra`` fields go into JSON replies only. A batch is float [B, C, H, W] in [0, 1],
    or uint8 pixels [B, H, W, C] (``Operations``' ``pixels=True``) for JSON replies and
    for a PNG of one image. ``pace``, if given, is called between frames and images: a
    large reply encoded on another thread gives way to the cheap lane (``BatchEngine.pacer``);
    a GIF is encoded by ``gifs``' child process if given, each pixel ``gif_scale`` wide,
    playing forward then back (``gif_bounce``) or forward only."""
    main = next(iter(images.values()))
    pixels = main.dtype == torch.uint8
    if any(batch.dtype == torch.uint8 for batch in images.values()) and not (
        fmt == "json" or (fmt == "png" and pixels and len(main) == 1)
    ):
        raise ValueError(f"format {fmt!r} needs float images here; pixels are for JSON or one PNG")
    headers = {
        f"X-Latentserve-{k.replace('_', '-').title()}": str(v)
        for k, v in meta.items()
        if isinstance(v, int | float | str)
    }
    if fmt == "png":
        png = (
            png_bytes(main, compress_level)  # a grid
            if len(main) > 1
            else encode_png(_pixel_arrays(main)[0], compress_level)
        )
        return Response(png, media_type="image/png", headers=headers)
    if fmt == "gif":
        return Response(
            gif_bytes(main, gif_scale, encoder=gifs, pace=pace, bounce=gif_bounce),
            media_type="image/gif",
            headers=headers,
        )
    body: dict[str, Any] = {**meta, **(extra or {})}
    for name, batch in images.items():
        if fmt == "array":
            value: Any = [img.tolist() for img in batch]
        else:
            value = []
            for px in _pixel_arrays(batch):
                if pace:
                    pace()
                value.append(data_url(encode_png(px, compress_level)))
        if single:
            body[name] = value[0]
        else:
            body[name] = value
    body["shape"] = (
        [main.shape[3], main.shape[1], main.shape[2]] if pixels else list(main.shape[1:])
    )
    body["count"] = len(main)
    return JSONResponse(body)


def _pixel_arrays(batch: torch.Tensor) -> np.ndarray:
    """uint8 [B, H, W, C] for a batch of float images or of pixels."""
    return batch.numpy() if batch.dtype == torch.uint8 else to_uint8(batch)
