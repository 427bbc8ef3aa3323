"""GAN inversion: find the latent whose image matches a given one.

Two ways, both kept out of ``nn.Module``'s forward (they are procedures run on a model):

- Optimisation (Zhu, Krahenbuhl, Shechtman & Efros, "Generative Visual Manipulation on the
  Natural Image Manifold", ECCV 2016; Creswell & Bharath, "Inverting the Generator of a
  Generative Adversarial Network", IEEE TNNLS 2018): minimise ||G(z) - x||^2 over z with
  Adam from several random starts at once and keep the best start per image. Hundreds of
  steps: about a second per image on a CPU.
- Amortised (the hybrid of Zhu et al. 2016, section 3.2; Zhu, Shen, Zhao & Zhou, "In-Domain
  GAN Inversion for Real Image Editing", ECCV 2020): an ``Inverter``, a conv encoder trained
  against the fixed generator (``python -m training fit-inverter``), predicts z in one pass,
  and a few Adam steps refine it. Milliseconds per image.

Every row is optimised on its own loss (Adam is element-wise), so a batch of images gives
each image the latent it would get alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from .base import LatentModel
from .blocks import ConvEncoder

#: Adam's step size when refining the inverter's prediction: it starts near the answer
REFINE_LR = 0.02


class Inverter(nn.Module):
    """x [B, C, H, W] in [0, 1] -> code [B, K] whose image under the generator is x.

    The autoencoders' conv encoder (blocks.py), on images rescaled to [-1, 1] like the
    generator's output. Trained with the generator fixed (training/inverter.py)."""

    def __init__(self, channels: int, side: int, width: int, code_dim: int) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels, side, width, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x * 2 - 1)  # [B, K]


def per_image_error(gan: LatentModel, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of G(z) [B, C, H, W] against target, per image [B]."""
    return (gan.decode(z) - target).pow(2).flatten(1).mean(1)


def descend(
    gan: LatentModel,
    target: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    lr: float,
    time_budget_s: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Adam on z from ``start`` [B, K] towards G(z) = target [B, C, H, W]: the final z [B, K].

    Stops after ``steps`` steps or ``time_budget_s`` seconds, whichever comes first, or as soon
    as ``stop()`` is true (checked after every step: nobody waits for the answer). Safe under
    ``torch.inference_mode()``: it leaves it for its own graph; no gradient reaches the weights.
    """
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        target = target.detach().clone()
        z = start.detach().clone().requires_grad_(True)  # [B, K]
        adam = Adam(z, lr)
        for _ in range(steps):
            (grad,) = torch.autograd.grad(per_image_error(gan, z, target).sum(), z)
            adam.step(grad)
            if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                break
            if stop is not None and stop():
                break
        return z.detach()


class Adam:
    """Adam (Kingma & Ba, ICLR 2015) on one tensor, in place: the update ``torch.optim.Adam``
    makes with its defaults (betas 0.9, 0.999; eps 1e-8), written out because constructing
    ``torch.optim.Adam`` the first time imports ``torch._dynamo``: 1.8 s with the
    interpreter lock held (every request of the server stalled behind a process's first GAN
    inversion) and 74 MB per process."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:  # fmt: skip
        self.param, self.lr, self.betas, self.eps = param, lr, betas, eps
        self.m = torch.zeros_like(param)  # first moment
        self.v = torch.zeros_like(param)  # second moment
        self.t = 0

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2**self.t)).add_(self.eps)
        self.param.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.t))


@torch.no_grad()
def _final(gan: LatentModel, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return per_image_error(gan, z, target)


def invert(
    gan: LatentModel,
    x: torch.Tensor,
    steps: int = 200,
    restarts: int = 4,
    lr: float = 0.05,
    time_budget_s: float | None = None,
    generator: torch.Generator | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimisation from random starts: x [B, C, H, W] in [0, 1] -> (z [B, K], per-image MSE
    of G(z) against x [B]), the best of ``restarts`` starts per image."""
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")
    b, k = x.shape[0], gan.latent_dim
    target = x.repeat_interleave(restarts, 0)  # [B * R, C, H, W]
    start = gan.initial_latents(b * restarts, generator)  # conditional: neutral class part
    z = descend(gan, target, start, steps, lr, time_budget_s, stop)  # [B * R, K]
    final = _final(gan, z, target).view(b, restarts)
    best = final.argmin(1)  # [B]
    rows = torch.arange(b)
    return z.view(b, restarts, k)[rows, best], final[rows, best]


def refine(
    gan: LatentModel,
    inverter: nn.Module,
    x: torch.Tensor,
    steps: int = 12,
    time_budget_s: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Amortised: x [B, C, H, W] in [0, 1] -> (z [B, K], per-image MSE [B]): the inverter's
    prediction, then ``steps`` Adam steps (0: the prediction as it is)."""
    if steps < 0:
        raise ValueError("refinement steps must be at least 0")
    with torch.no_grad():
        z = inverter(x)  # [B, K]
    if steps:
        z = descend(gan, x, z, steps, REFINE_LR, time_budget_s, stop)
    return z, _final(gan, z, x)
