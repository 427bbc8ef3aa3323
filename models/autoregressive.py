"""Sampling loops of the autoregressive families, kept out of ``nn.Module`` (a procedure run
on a model, not a layer): each pixel is drawn given the ones before it, in raster order.

The randomness comes in as a tensor drawn per request (``logistic.draw_noise``), so a batch
of requests gives every request exactly the images its seed gives alone. ``stop()``, asked
once per row, ends the loop early when nobody waits for the result any more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from .logistic import LEVELS, to_unit
from .logistic import sample as sample_mixture


class RowModel(Protocol):
    """What the PixelCNN sampler needs of its model (models/pixelcnn.py)."""

    @property
    def image_shape(self) -> tuple[int, int, int]: ...
    @property
    def mixtures(self) -> int: ...
    @property
    def rows_seen(self) -> int: ...
    @property
    def cols_seen(self) -> int: ...
    def links(self, x: torch.Tensor) -> list[torch.Tensor]: ...
    def params_from(self, x: torch.Tensor, links: list[torch.Tensor]) -> torch.Tensor: ...


class MaskedModel(Protocol):
    """What the MADE sampler needs of its model (models/made.py)."""

    @property
    def image_shape(self) -> tuple[int, int, int]: ...
    @property
    def mixtures(self) -> int: ...
    @property
    def dims(self) -> int: ...
    def pixel_params(self, xu: torch.Tensor) -> torch.Tensor: ...


def pixelcnn_row_links(model: RowModel, xu: torch.Tensor, row: int) -> list[torch.Tensor]:
    """The vertical stack's links at ``row`` [B, 2C, 1, W], computed on the band of rows that
    can reach it (``model.rows_seen`` above it) instead of the whole image."""
    start = max(0, row - model.rows_seen)
    return [link[:, :, -1:] for link in model.links(xu[:, :, start : row + 1])]


def pixelcnn_pixel_params(
    model: RowModel, xu: torch.Tensor, links: list[torch.Tensor], row: int, col: int
) -> torch.Tensor:
    """Mixture parameters of pixel (row, col) [B, C, 3K] from the horizontal stack run on the
    columns that can reach it (``model.cols_seen`` to its left)."""
    start = max(0, col - model.cols_seen)
    strip = xu[:, :, row : row + 1, start : col + 1]
    params = model.params_from(strip, [link[..., start : col + 1] for link in links])
    return params[:, :, :, 0, -1]


@torch.no_grad()
def sample_pixelcnn(
    model: RowModel, noise: torch.Tensor, stop: Callable[[], bool] | None = None
) -> torch.Tensor:
    """noise [n, C, K + 1, H, W] (logistic.draw_noise, per pixel channel) -> images
    [n, C, H, W] in [0, 1]."""
    n, c, k1, h, w = noise.shape
    if (c, h, w) != model.image_shape or k1 != model.mixtures + 1:
        raise ValueError(
            f"expected noise of shape [n, {model.image_shape[0]}, {model.mixtures + 1}, "
            f"{model.image_shape[1]}, {model.image_shape[2]}], got {list(noise.shape)}"
        )
    k = model.mixtures
    pixels = torch.zeros(n, c, h, w)
    xu = to_unit(pixels)  # the image so far, on the model's scale
    for row in range(h):
        links = pixelcnn_row_links(model, xu, row)
        for col in range(w):
            params = pixelcnn_pixel_params(model, xu, links, row, col)  # [n, C, 3K]
            value = sample_mixture(
                params.reshape(n * c, 3 * k), noise[:, :, :, row, col].reshape(n * c, k + 1), k
            ).view(n, c)
            pixels[:, :, row, col] = value
            xu[:, :, row, col] = to_unit(value)
        if stop is not None and stop():
            break
    return pixels / (LEVELS - 1)


@torch.no_grad()
def sample_made(
    model: MaskedModel, noise: torch.Tensor, stop: Callable[[], bool] | None = None
) -> torch.Tensor:
    """noise [n, K + 1, D] (one column per pixel, in the model's order) -> images
    [n, C, H, W] in [0, 1]. One pass of the network per pixel: MADE's masks make output d
    depend on inputs before d only, so after pass d pixel d is final."""
    n, k1, d = noise.shape
    k = model.mixtures
    if d != model.dims or k1 != k + 1:
        raise ValueError(
            f"expected noise of shape [n, {k + 1}, {model.dims}], got {list(noise.shape)}"
        )
    pixels = torch.zeros(n, d)
    for i in range(d):  # raster order: MADE's degrees follow it
        params = model.pixel_params(to_unit(pixels))  # [n, 3K, D]
        pixels[:, i] = sample_mixture(params[:, :, i], noise[:, :, i], k)
        if stop is not None and i % 28 == 27 and stop():
            break
    return pixels.view(n, *model.image_shape) / (LEVELS - 1)
