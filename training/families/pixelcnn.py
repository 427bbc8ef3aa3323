"""The autoregressive families (pixelcnn, made): maximum likelihood, scored in bits/dim."""

from __future__ import annotations

import math

import torch

from ..declaration import TrainingSpec, register_training
from ..density import density_headline, evaluate_density
from ..recipes import Recipe


class LikelihoodRecipe(Recipe):
    """Minimise the exact negative log-likelihood, in bits per dimension, with the gradient
    norm clipped at 1 (one bad batch must not undo an hour of training)."""

    def bits_per_dim(self, m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return -m.log_likelihood(x).mean() / (math.log(2) * math.prod(x.shape[1:]))

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        loss = self.forward(self.bits_per_dim, x)
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        opt.step()
        return {"bits_per_dim": loss.item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        ll = self.model.run("likelihood", x).tensors()["log_likelihood"]
        return {"bits_per_dim": float((-ll / (math.log(2) * math.prod(x.shape[1:]))).sum())}


for family in ("pixelcnn", "made"):
    register_training(TrainingSpec(
        family=family, recipe=LikelihoodRecipe, evaluate=evaluate_density,
        headline=density_headline, lr=1e-3,
        floors=(("test_bits_per_dim", "<=", 3.2 if family == "pixelcnn" else 3.86),),
    ))  # fmt: skip
