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
  and a few L-BFGS iterations refine it (each image its own). Milliseconds per image.

Every row is optimised on its own loss (Adam is element-wise), so a batch of images gives
each image the latent it would get alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import LatentModel
from .blocks import ConvEncoder

#: curvature pairs each image's L-BFGS refinement keeps (Nocedal & Wright suggest 3 to 20)
LBFGS_MEMORY = 10
#: the sufficient-decrease constant of the line search (Nocedal & Wright's c1)
ARMIJO = 1e-4


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
    prediction, then ``steps`` L-BFGS iterations (0: the prediction as it is)."""
    if steps < 0:
        raise ValueError("refinement steps must be at least 0")
    with torch.no_grad():
        z = inverter(x)  # [B, K]
    if steps:
        z = lbfgs_descend(gan, x, z, steps, time_budget_s, stop)
    return z, _final(gan, z, x)


def lbfgs_descend(
    gan: LatentModel,
    target: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    time_budget_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    memory: int = LBFGS_MEMORY,
) -> torch.Tensor:
    """L-BFGS (Liu & Nocedal 1989; Nocedal & Wright, "Numerical Optimization", 2006,
    algorithms 7.4 and 7.5) on each row's own ||G(z) - target||^2 from ``start`` [B, K]: the
    final z [B, K]. Far fewer steps than Adam from a good start (measured on gan-fashion from
    its inverter's prediction: 20 evaluations 22.1 dB, 24 Adam steps 21.0 dB); one forward and
    backward pass of the generator per step.

    Every row keeps its own curvature pairs and runs its own backtracking (Armijo) line
    search, and each of the ``steps`` evaluations advances every row (a row whose trial point
    is accepted moves on to its next direction while another backtracks), so a batch gives
    each image the latent it would get alone. The time budget and ``stop`` are checked after
    each evaluation, as in ``descend``.

    Only the generator's value and gradient are torch; the bookkeeping (the two-loop
    recursion over [B, memory, K] pairs, the line search) is NumPy in float64: at one image,
    some hundred tiny torch operations a step cost about a millisecond of dispatch, as much as
    half of the generator's own forward and backward pass."""
    started = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        target = target.detach().clone()
        b, k = start.shape

        def value_and_grad(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            z_t = torch.from_numpy(at).to(start.dtype).requires_grad_(True)
            loss = (gan.decode(z_t) - target).pow(2).flatten(1).sum(1)  # [B]
            (grad,) = torch.autograd.grad(loss.sum(), z_t)
            return loss.detach().double().numpy(), grad.double().numpy()

        z = start.detach().double().numpy().copy()
        f, g = value_and_grad(z)  # [B], [B, K]
        pairs_s = np.zeros((b, memory, k))  # curvature pairs, oldest first, newest last
        pairs_y = np.zeros((b, memory, k))
        rho = np.zeros((b, memory))  # 1 / s^T y; 0 marks an empty or rejected slot
        d, slope, size = _direction(g, pairs_s, pairs_y, rho)
        for _ in range(steps):
            trial = z + size[:, None] * d
            tf, tg = value_and_grad(trial)
            ok = tf <= f + ARMIJO * size * slope  # sufficient decrease: the row moves on
            s_vec, y_vec = trial - z, tg - g
            sy = (s_vec * y_vec).sum(1)
            norms = np.linalg.norm(s_vec, axis=1) * np.linalg.norm(y_vec, axis=1)
            keep = ok & (sy > 1e-10 * norms)  # curvature condition
            if keep.any():  # the kept rows drop their oldest pair and append the new one
                pairs_s[keep] = np.concatenate([pairs_s[keep, 1:], s_vec[keep, None]], 1)
                pairs_y[keep] = np.concatenate([pairs_y[keep, 1:], y_vec[keep, None]], 1)
                rho[keep] = np.concatenate([rho[keep, 1:], 1.0 / sy[keep, None]], 1)
            z = np.where(ok[:, None], trial, z)
            f, g = np.where(ok, tf, f), np.where(ok[:, None], tg, g)
            # a rejected trial backtracks to the minimum of the quadratic through f, the slope
            # and the trial's value (Nocedal & Wright, eq. 3.57), within [0.1, 0.5] of its step
            rise = np.maximum(tf - f - slope * size, 1e-30)
            shorter = np.clip(-slope * size**2 / (2 * rise), 0.1 * size, 0.5 * size)
            next_d, next_slope, next_size = _direction(g, pairs_s, pairs_y, rho)
            d = np.where(ok[:, None], next_d, d)
            slope = np.where(ok, next_slope, slope)
            size = np.where(ok, next_size, shorter)
            if _out_of_time(started, time_budget_s, stop):
                break
        return torch.from_numpy(z).to(start.dtype)


def _direction(
    g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's search direction -H g [B, K], its slope g^T d [B] and the first step to try
    [B]: 1 along L-BFGS's direction, or, for a row without curvature pairs (or whose
    direction does not descend; its pairs are then dropped), a step of unit length along -g.
    ``rho`` is zeroed in place for such rows."""
    d = -_two_loop(g, s, y, rho)
    slope = (g * d).sum(1)
    fresh = ~(slope < 0) | (rho == 0).all(1)
    rho[fresh] = 0
    d = np.where(fresh[:, None], -g, d)
    slope = np.where(fresh, -(g * g).sum(1), slope)
    unit = np.minimum(1.0 / np.sqrt(np.maximum(-slope, 1e-24)), 1.0)  # 1 / |g|
    return d, slope, np.where(fresh, unit, 1.0)


def _two_loop(g: np.ndarray, s: np.ndarray, y: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """H g for every row [B, K] from its curvature pairs s, y [B, M, K], oldest first (rho
    [B, M]: a row skips the slots where it is 0); H_0 = gamma I with gamma = s^T y / y^T y
    of the newest kept pair (Nocedal & Wright, eq. 7.20), or the identity without one."""
    memory = s.shape[1]
    q = g.copy()
    alpha = np.zeros(rho.shape)
    for i in reversed(range(memory)):  # newest to oldest
        alpha[:, i] = rho[:, i] * (s[:, i] * q).sum(1)
        q -= alpha[:, i, None] * y[:, i]
    # the newest kept pair (the highest slot with rho > 0) sets the scale
    kept = rho > 0
    newest = memory - 1 - np.argmax(kept[:, ::-1], axis=1)  # [B]
    rows = np.arange(len(g))
    y_new, rho_new = y[rows, newest], rho[rows, newest]
    yy = np.maximum((y_new * y_new).sum(1), 1e-30)
    gamma = np.where(kept.any(1), 1.0 / (np.maximum(rho_new, 1e-30) * yy), 1.0)
    r = gamma[:, None] * q
    for i in range(memory):  # oldest to newest
        beta = rho[:, i] * (y[:, i] * r).sum(1)
        r += (alpha[:, i] - beta)[:, None] * s[:, i]
    return r


def _out_of_time(
    started: float, time_budget_s: float | None, stop: Callable[[], bool] | None
) -> bool:
    if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
        return True
    return stop is not None and stop()
