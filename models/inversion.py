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
  and a few L-BFGS iterations refine it (each image its own). Milliseconds per image. The
  refinement is preconditioned where the inverter carries one (``gauss_newton_preconditioner``):
  the error's curvature differs by a factor of ~4,000 between directions of the code.

Every row is optimised on its own loss (Adam is element-wise), so a batch of images gives
each image the latent it would get alone. Both evaluate an ``objective`` (z [B, K], target
[B, C, H, W]) -> (||G(z) - target||^2 per image [B], its gradient in z [B, K]): the GAN's
written-out one (adjoint.py), as the service compiled it where it did (``SearchBudget``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import LatentModel
from .blocks import ConvEncoder
from .operations import Objective

#: curvature pairs each image's L-BFGS refinement keeps. Nocedal & Wright suggest 3 to 20 for
#: large problems; a code has tens of numbers, and keeping every pair of a refinement pays:
#: cgan-fashion, 100 test images, 40 evaluations from the inverter: 23.93 dB with 10 pairs,
#: 24.14 with 20, 24.27 with 40 (each step's cost hardly moves: the compact form, below)
LBFGS_MEMORY = 64
#: the sufficient-decrease constant of the line search (Nocedal & Wright's c1)
ARMIJO = 1e-4


class Inverter(nn.Module):
    """x [B, C, H, W] in [0, 1] -> code [B, K] whose image under the generator is x.

    The autoencoders' conv encoder (blocks.py), on images rescaled to [-1, 1] like the
    generator's output. Trained with the generator fixed (training/inverter.py).

    With ``preconditioned``, it also holds ``preconditioner`` [K, K], a lower triangular L
    (``gauss_newton_preconditioner``): the refinement searches u with z = prediction + L u,
    where the error is about equally curved in every direction."""

    preconditioner: torch.Tensor | None

    def __init__(
        self, channels: int, side: int, width: int, code_dim: int, preconditioned: bool = False
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(channels, side, width, code_dim)
        self.register_buffer("preconditioner", torch.eye(code_dim) if preconditioned else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x * 2 - 1)  # [B, K]


def autograd_objective(gan: LatentModel) -> Objective:
    """The objective by autograd through ``gan.decode``: the reference that the written-out
    ``inversion_objective`` (adjoint.py) is tested against, and the objective of a model that
    has none."""

    def objective(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(False), torch.enable_grad():
            z = z.detach().clone().requires_grad_(True)
            error = (gan.decode(z) - target.detach().clone()).pow(2).flatten(1).sum(1)  # [B]
            (grad,) = torch.autograd.grad(error.sum(), z)
        return error.detach(), grad

    return objective


def descend(
    objective: Objective,
    target: torch.Tensor,
    start: torch.Tensor,
    steps: int,
    lr: float,
    time_budget_s: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Adam on z from ``start`` [B, K] towards G(z) = target [B, C, H, W]: the final z [B, K].

    Stops after ``steps`` steps or ``time_budget_s`` seconds, whichever comes first, or as soon
    as ``stop()`` is true (checked after every step: nobody waits for the answer). Adam's step
    does not depend on the gradient's scale, so the objective's sum over pixels moves z as
    their mean would."""
    started = time.perf_counter()
    z = start.detach().clone()  # [B, K]
    adam = Adam(z, lr)
    for _ in range(steps):
        with torch.no_grad():
            _, grad = objective(z, target)
        adam.step(grad)
        if _out_of_time(started, time_budget_s, stop):
            break
    return z


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
def per_image_error(gan: LatentModel, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of G(z) [B, C, H, W] against target, per image [B]: what a search reports."""
    return (gan.decode(z) - target).pow(2).flatten(1).mean(1)


def invert(
    gan: LatentModel,
    x: torch.Tensor,
    steps: int = 200,
    restarts: int = 4,
    lr: float = 0.05,
    time_budget_s: float | None = None,
    generator: torch.Generator | None = None,
    stop: Callable[[], bool] | None = None,
    objective: Objective | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimisation from random starts: x [B, C, H, W] in [0, 1] -> (z [B, K], per-image MSE
    of G(z) against x [B]), the best of ``restarts`` starts per image. ``objective``: see the
    module's notes (None: autograd through ``gan.decode``)."""
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")
    b, k = x.shape[0], gan.latent_dim
    target = x.repeat_interleave(restarts, 0)  # [B * R, C, H, W]
    start = gan.initial_latents(b * restarts, generator)  # conditional: neutral class part
    objective = objective or autograd_objective(gan)
    z = descend(objective, target, start, steps, lr, time_budget_s, stop)  # [B * R, K]
    final = per_image_error(gan, z, target).view(b, restarts)
    best = final.argmin(1)  # [B]
    rows = torch.arange(b)
    return z.view(b, restarts, k)[rows, best], final[rows, best]


def refine(
    gan: LatentModel,
    inverter: Inverter,
    x: torch.Tensor,
    steps: int = 12,
    time_budget_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    objective: Objective | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Amortised: x [B, C, H, W] in [0, 1] -> (z [B, K], per-image MSE [B]): the inverter's
    prediction, then ``steps`` L-BFGS evaluations of ``objective`` (0: the prediction as it
    is; None: autograd through ``gan.decode``), preconditioned by the inverter's
    ``preconditioner`` where it has one."""
    if steps < 0:
        raise ValueError("refinement steps must be at least 0")
    with torch.no_grad():
        z = inverter(x)  # [B, K]
    if steps:
        objective = objective or autograd_objective(gan)
        root = inverter.preconditioner
        if root is None:
            z = lbfgs_descend(objective, x, z, steps, time_budget_s, stop)
        else:  # in u, z = z0 + L u: dE/du = L^T dE/dz
            z0 = z

            def in_u(u: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                error, grad = objective(z0 + u @ root.T, target)
                return error, grad @ root

            u = lbfgs_descend(in_u, x, torch.zeros_like(z0), steps, time_budget_s, stop)
            z = z0 + u @ root.T
    return z, per_image_error(gan, z, x)


def gauss_newton_preconditioner(
    gan: LatentModel, codes: torch.Tensor, ridge: float = 1e-4, chunk: int = 8
) -> torch.Tensor:
    """A lower triangular L [K, K] with L L^T = (2 A + ridge * max eig(2 A) * I)^-1, A the mean
    of J^T J over ``codes`` [N, K] (J [C*H*W, K] the Jacobian of ``gan.decode`` at a code).

    2 J^T J is the Gauss-Newton approximation of the Hessian of ||G(z) - x||^2 (Nocedal &
    Wright, section 10.3), and its mean over the inverter's predictions for training images
    is the metric the image space induces on the codes there. L-BFGS starts from H_0 = gamma I
    (N & W, eq. 7.20); searching u with z = z0 + L u starts it from H_0 = gamma L L^T instead
    (a preconditioned L-BFGS), where the error is about equally curved in every direction of
    u. Measured on cgan-fashion's 100 first test images from its inverter's prediction:
    22 evaluations 23.28 dB without, 25.30 dB with (300 training images; ridge 1e-4; the mean
    J^T J's eigenvalues span 0.16 to 604). The ridge keeps L finite where A is singular."""
    if codes.ndim != 2 or codes.shape[1] != gan.latent_dim or not len(codes):
        raise ValueError(f"expected codes of shape [N, {gan.latent_dim}], got {list(codes.shape)}")

    def flat_image(z: torch.Tensor) -> torch.Tensor:
        return gan.decode(z[None]).flatten()  # [C*H*W]

    k = gan.latent_dim
    total = torch.zeros(k, k, dtype=torch.float64)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # forward mode's first use loads decompositions that torch writes with torch.jit.script
        warnings.simplefilter("ignore", DeprecationWarning)
        for part in codes.detach().clone().split(chunk):  # forward mode: K passes per code
            jac = torch.func.vmap(torch.func.jacfwd(flat_image))(part)  # [n, C*H*W, K]
            total += torch.einsum("npk,npl->kl", jac, jac).double()
    hessian = 2 * total / len(codes)
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    if not top > 0:  # images that do not move with the code: nothing to precondition
        return torch.eye(k, dtype=codes.dtype)
    hessian += ridge * top * torch.eye(k, dtype=torch.float64)
    return torch.linalg.cholesky(torch.linalg.inv(hessian)).to(codes.dtype)


def lbfgs_descend(
    objective: Objective,
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
    its inverter's prediction: 20 evaluations 22.1 dB, 24 Adam steps 21.0 dB); one evaluation
    of ``objective`` (value and gradient) per step.

    Every row keeps its own curvature pairs and runs its own backtracking (Armijo) line
    search, and each of the ``steps`` evaluations advances every row (a row whose trial point
    is accepted moves on to its next direction while another backtracks), so a batch gives
    each image the latent it would get alone. The time budget and ``stop`` are checked after
    each evaluation, as in ``descend``.

    Only the objective is torch; the bookkeeping (the direction from [B, memory, K] pairs, the
    line search) is NumPy in float64: at one image, some hundred tiny torch operations a step
    cost about a millisecond of dispatch, as much as the objective itself."""
    if memory < 1:
        raise ValueError("L-BFGS memory must be at least 1")
    started = time.perf_counter()
    target = target.detach()
    b, k = start.shape

    def value_and_grad(at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            value, grad = objective(torch.from_numpy(at).to(start.dtype), target)
        return value.double().numpy(), grad.double().numpy()

    z = start.detach().double().numpy().copy()
    f, g = value_and_grad(z)  # [B], [B, K]
    pairs = CurvaturePairs(b, memory, k)
    d, slope, size = pairs.direction(g)
    for _ in range(steps):
        trial = z + size[:, None] * d
        tf, tg = value_and_grad(trial)
        ok = tf <= f + ARMIJO * size * slope  # sufficient decrease: the row moves on
        pairs.add(ok, trial - z, tg - g)
        z = np.where(ok[:, None], trial, z)
        f, g = np.where(ok, tf, f), np.where(ok[:, None], tg, g)
        # a rejected trial backtracks to the minimum of the quadratic through f, the slope
        # and the trial's value (Nocedal & Wright, eq. 3.57), within [0.1, 0.5] of its step
        rise = np.maximum(tf - f - slope * size, 1e-30)
        shorter = np.clip(-slope * size**2 / (2 * rise), 0.1 * size, 0.5 * size)
        next_d, next_slope, next_size = pairs.direction(g)
        d = np.where(ok[:, None], next_d, d)
        slope = np.where(ok, next_slope, slope)
        size = np.where(ok, next_size, shorter)
        if _out_of_time(started, time_budget_s, stop):
            break
    return torch.from_numpy(z).to(start.dtype)


class CurvaturePairs:
    """Each row's last ``memory`` pairs (s, y) = (step, change of gradient), oldest first, and
    the L-BFGS direction they give, for B rows at once in NumPy.

    The direction -H g comes from the compact representation of the inverse Hessian (Byrd,
    Nocedal & Schnabel 1994, "Representations of quasi-Newton matrices and their use in limited
    memory methods", eq. 3.1; Nocedal & Wright section 7.2): with S, Y [M, K] the pairs, R the
    upper triangle of S^T Y, D its diagonal and gamma = s^T y / y^T y of the newest pair,

        H g = gamma g + S t - gamma Y w,   R w = S^T g,   R^T t = (D + gamma Y^T Y) w - gamma Y^T g,

    the same vector as the two-loop recursion (tests/test_inversion.py checks it against one)
    in a few batched matrix products and two small solves, whatever ``memory`` is; the two-loop
    recursion costs 2 x memory NumPy steps. An empty slot holds s = y = 0 with a 1 on R's
    diagonal, which leaves every product unchanged."""

    def __init__(self, rows: int, memory: int, dim: int) -> None:
        self.s = np.zeros((rows, memory, dim))
        self.y = np.zeros((rows, memory, dim))
        self.kept = np.zeros((rows, memory), dtype=bool)

    def add(self, moved: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        """Append (s, y) [B, K] for the rows that ``moved`` [B] and whose pair has positive
        curvature (s^T y > 0, relative to |s| |y|); those rows drop their oldest pair."""
        sy = (s * y).sum(1)
        keep = moved & (sy > 1e-10 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1))
        if keep.any():
            self.s[keep] = np.concatenate([self.s[keep, 1:], s[keep, None]], 1)
            self.y[keep] = np.concatenate([self.y[keep, 1:], y[keep, None]], 1)
            self.kept[keep] = np.concatenate(
                [self.kept[keep, 1:], np.ones((keep.sum(), 1), bool)], 1
            )

    def direction(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's search direction -H g [B, K], its slope g^T d [B] and the first step to
        try [B]: 1 along L-BFGS's direction, or, for a row without pairs (or whose direction
        does not descend; its pairs are then dropped), a step of unit length along -g."""
        d = -self.inverse_hessian_times(g)
        slope = (g * d).sum(1)
        fresh = ~(slope < 0) | ~self.kept.any(1)
        if fresh.any():
            self.s[fresh], self.y[fresh], self.kept[fresh] = 0.0, 0.0, False
        d = np.where(fresh[:, None], -g, d)
        slope = np.where(fresh, -(g * g).sum(1), slope)
        unit = np.minimum(1.0 / np.sqrt(np.maximum(-slope, 1e-24)), 1.0)  # 1 / |g|
        return d, slope, np.where(fresh, unit, 1.0)

    def inverse_hessian_times(self, g: np.ndarray) -> np.ndarray:
        """H g [B, K] (H_0 = gamma I; the identity for a row without pairs)."""
        # a row's kept pairs are its newest slots: only as many slots as the fullest row holds
        held = int(self.kept.sum(1).max())
        if not held:
            return g.copy()
        s, y, kept = self.s[:, -held:], self.y[:, -held:], self.kept[:, -held:]
        sty = s @ y.transpose(0, 2, 1)  # [B, M, M]: s_i^T y_j
        diag = np.diagonal(sty, axis1=1, axis2=2)  # [B, M]: s_i^T y_i (0 in an empty slot)
        y_new = y[:, -1]  # the newest pair (a row holding any has it in the last slot)
        yy = np.maximum((y_new * y_new).sum(1), 1e-300)
        gamma = np.where(kept[:, -1], diag[:, -1] / yy, 1.0)  # [B]
        r = np.triu(sty) + np.eye(held) * ~kept[:, :, None]  # [B, M, M]
        w = np.linalg.solve(r, s @ g[:, :, None])  # [B, M, 1]
        rhs = diag[:, :, None] * w + gamma[:, None, None] * (
            y @ (y.transpose(0, 2, 1) @ w) - y @ g[:, :, None]
        )  # (D + gamma Y^T Y) w - gamma Y^T g
        t = np.linalg.solve(r.transpose(0, 2, 1), rhs)  # [B, M, 1]
        hg = gamma[:, None] * g + (s.transpose(0, 2, 1) @ t)[..., 0]
        return hg - gamma[:, None] * (y.transpose(0, 2, 1) @ w)[..., 0]


def _out_of_time(
    started: float, time_budget_s: float | None, stop: Callable[[], bool] | None
) -> bool:
    if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
        return True
    return stop is not None and stop()
