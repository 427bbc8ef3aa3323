"""The generative stochastic network's Markov chain on a denoising autoencoder, kept out of
``nn.Module`` (denoising.py calls it).

Bengio, Yao, Alain & Vincent, "Generalized Denoising Auto-Encoders as Generative Models",
NIPS 2013, Theorem 1: if P_theta(X | X~) is a consistent estimator of the true conditional of
clean images given their corruptions C(X~ | X), then the chain

    X~_t ~ C(X~ | X_t),   X_{t+1} ~ P_theta(X | X~_t)

has a stationary distribution that consistently estimates the data distribution. Bengio et
al., "Deep Generative Stochastic Networks Trainable by Backprop", ICML 2014, name the family.

Two choices, both said where they are made:
- C is the corruption the model was trained against (its config: a kind per chain and step
  with the trained odds, a level uniform up to the kind's trained maximum), which is what the
  theorem asks; ``temperature`` scales the levels.
- The denoiser was trained with a squared error, so its output is the mean of P_theta(X | X~),
  and the chain takes that mean as its next state: all the randomness is in the corruption.
  Alain & Bengio (JMLR 2014, "What Regularized Auto-Encoders Learn from the Data-Generating
  Distribution") show that r(x) - x estimates the score d log p / dx, so corrupt-and-denoise
  walks like a Langevin sampler towards high density.

Every chain draws its uniforms from a ``Uniform`` (gibbs.py): with ``per_chain_uniform`` a
chain's images do not depend on its batch-mates, as the service's seeds require.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .gibbs import Uniform

Denoise = Callable[[torch.Tensor], torch.Tensor]  # corrupted [n, C, H, W] -> clean [n, C, H, W]


@dataclasses.dataclass(frozen=True)
class Corruption:
    """C(X~ | X): for each image, a kind with odds ``probs`` and a level uniform in
    [0, temperature * maximum of the kind], capped at 1 (denoising.corrupt's kinds)."""

    kinds: tuple[str, ...]
    probs: tuple[float, ...]  # one non-negative weight per kind, not all zero
    maxima: tuple[float, ...]  # the largest level of each kind

    def __call__(self, x: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """x [n, D] in [0, 1], uniforms u [n, 2 + 2D], temperatures [n] -> corrupted [n, D]."""
        d = x.shape[1]
        odds = torch.tensor(self.probs, dtype=x.dtype)
        edges = (odds.cumsum(0) / odds.sum())[:-1]  # [kinds - 1]
        which = torch.searchsorted(edges, u[:, 0].contiguous(), right=True)  # [n]
        level = u[:, 1] * torch.tensor(self.maxima, dtype=x.dtype)[which]
        level = (level * temperature).clamp(max=1.0).unsqueeze(1)  # [n, 1]
        a, b = u[:, 2 : 2 + d], u[:, 2 + d :]  # [n, D] each
        hit = a < level  # the pixels salt-and-pepper or masking noise replaces
        out = x.clone()
        for i, kind in enumerate(self.kinds):
            rows = which == i
            if not rows.any():
                continue
            xi, ai, bi, li = x[rows], a[rows], b[rows], level[rows]
            if kind == "gaussian":  # N(0, level^2) by the inverse CDF of a uniform
                noise = torch.special.ndtri(ai.clamp(1e-7, 1 - 1e-7))
                out[rows] = (xi + li * noise).clamp(0.0, 1.0)
            elif kind == "mask":
                out[rows] = xi.masked_fill(hit[rows], 0.0)
            else:  # salt_pepper
                out[rows] = torch.where(hit[rows], (bi < 0.5).to(x.dtype), xi)
        return out


@dataclasses.dataclass
class ChainRun:
    """A run's last state [n, C, H, W] and, where asked, its frames [n, F, C, H, W]."""

    images: torch.Tensor
    frames: torch.Tensor | None = None


def frame_steps(steps: int, frames: int) -> set[int]:
    """The steps (0 = the start, ``steps`` = the last) a run of ``steps`` records as
    ``frames`` frames, evenly spaced, always the first and the last."""
    if frames < 2:
        return {steps}
    count = min(frames, steps + 1)
    return {round(i * steps / (count - 1)) for i in range(count)}


@torch.no_grad()
def gsn_chains(
    denoise: Denoise,
    corruption: Corruption,
    image_shape: tuple[int, int, int],
    temperatures: torch.Tensor,
    steps: int,
    uniform: Uniform,
    stop: Callable[[], bool] | None = None,
    frames: int = 0,
) -> ChainRun:
    """One chain per temperature [n]: ``steps`` corrupt-and-denoise steps from uniform noise
    X_0; the state after the last step [n, C, H, W], and with ``frames`` > 1 that many states
    evenly spaced from X_0 to the last. ``stop`` is asked after every step (the service's
    cancellation and deadlines): True ends the run early."""
    if steps < 1:
        raise ValueError(f"a chain needs at least one step, got {steps}")
    n, d = len(temperatures), int(torch.Size(image_shape).numel())
    x = uniform(d)  # X_0 [n, D]
    keep = frame_steps(steps, frames) if frames > 1 else set()
    recorded = [x] if 0 in keep else []
    for step in range(1, steps + 1):
        corrupted = corruption(x, uniform(2 + 2 * d), temperatures)
        x = denoise(corrupted.view(n, *image_shape)).reshape(n, d)
        if step in keep:
            recorded.append(x)
        if stop is not None and step < steps and stop():
            break
    images = x.view(n, *image_shape)
    if not keep:
        return ChainRun(images)
    while len(recorded) < len(keep):  # stopped early: hold the last state (nobody waits)
        recorded.append(x)
    return ChainRun(images, torch.stack(recorded, 1).view(n, len(keep), *image_shape))
