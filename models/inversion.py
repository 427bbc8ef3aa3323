"""GAN inversion: find the latent whose image matches a given one.

Zhu, Krahenbuhl, Shechtman & Efros, "Generative Visual Manipulation on the Natural Image
Manifold", ECCV 2016; Creswell & Bharath, "Inverting the Generator of a Generative
Adversarial Network", IEEE TNNLS 2018. A GAN has no encoder, so we optimise z to minimise
||G(z) - x||^2 with Adam, from several random starts at once, and keep the best start per
image. Kept out of ``nn.Module`` on purpose: it is a procedure run on a model, not a layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .base import LatentModel


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
    """x [B, C, H, W] in [0, 1] -> (z [B, K], per-image MSE of G(z) against x [B]).

    Stops after ``steps`` Adam steps or ``time_budget_s`` seconds, whichever comes first, or
    as soon as ``stop()`` is true (checked after every step: nobody waits for the answer).
    Safe to call under ``torch.inference_mode()``: it leaves it for its own graph.
    """
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")
    started = time.perf_counter()
    b, k = x.shape[0], gan.latent_dim
    with torch.inference_mode(False), torch.enable_grad():
        target = x.detach().clone().repeat_interleave(restarts, 0)  # [B * R, C, H, W]
        z = gan.initial_latents(b * restarts, generator)  # conditional: neutral class part
        z.requires_grad_(True)  # [B * R, K]
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            per_image = (gan.decode(z) - target).pow(2).flatten(1).mean(1)  # [B * R]
            (grad,) = torch.autograd.grad(per_image.sum(), z)  # no gradients reach the weights
            z.grad = grad
            opt.step()
            if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
                break
            if stop is not None and stop():
                break
        with torch.no_grad():
            final = (gan.decode(z) - target).pow(2).flatten(1).mean(1).view(b, restarts)
            best = final.argmin(1)  # [B]
            z_best = z.detach().view(b, restarts, k)[torch.arange(b), best]  # [B, K]
            return z_best, final[torch.arange(b), best]
