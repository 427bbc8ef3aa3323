"""The base recipe: how a model is trained (its optimizers, its loss for one batch, its
validation metrics). Each family's own recipe subclasses it in training/families/.

A recipe owns the optimizers of one model. ``train_step`` takes a batch of clean images in
[0, 1] and returns the numbers shown on the progress bar; ``evaluate_batch`` returns sums
over the batch so the loop can average them over a whole split.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import LatentModel

from .data import Split
from .distributed import LossForward, World


def psnr_sum(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Sum over the batch of per-image PSNR in dB for pixels in [0, 1]."""
    mse = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).sum())


class Recipe:
    """Training of a plain autoencoder; the other families override parts of it."""

    def __init__(self, model: LatentModel, args: argparse.Namespace) -> None:
        self.model = model
        self.args = args
        self.optimizers = self.build_optimizers()
        # Every training loss is computed through this: fn(model, *args). The trainer swaps
        # in a DistributedDataParallel wrapper under torchrun (see distributed.py).
        self.forward: Callable[..., Any] = LossForward(model)
        self.world = World()  # this process's place under torchrun; the trainer sets it

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (``--device``): batches and noise go there."""
        return next(self.model.parameters()).device

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.model.parameters(), lr=self.args.lr)}

    def reconstruction_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the per-image loss (MSE directly targets PSNR)."""
        if self.args.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        return F.mse_loss(torch.sigmoid(logits), x, reduction="sum") / x.shape[0]

    def model_input(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        loss = self.forward(
            lambda m, x_in: self.reconstruction_loss(m(x_in), x), self.model_input(x, generator)
        )
        self._step("model", loss)
        return {"loss": loss.item()}

    def _step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        x_hat = self.model.reconstruct(x)
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        return {"mse": float(mse.sum()), "psnr": psnr_sum(x_hat, x)}

    def pretrain(self, split: Split, generator: torch.Generator) -> None:
        """Hook for families with a pretraining phase; most have none."""

    def begin(self, train: Split, resumed: bool) -> None:
        """Hook run once before the first epoch, also on ``--resume`` (``resumed``): an RBM
        picks its persistent chains' start and, on a fresh run, sets its visible biases to the
        training pixels' base rate; most families have none."""

    def state(self) -> dict[str, torch.Tensor]:
        """What the recipe keeps between steps besides the model and the optimizers, for the
        checkpoint (an RBM's persistent chains); most recipes keep nothing."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state()`` from a checkpoint on ``--resume`` (before ``begin``)."""

    def finish(self, train: Split) -> None:
        """Hook run once after the last epoch, before the artifact is written (an RBM
        estimates its partition function here). A deterministic autoencoder gets its latent
        density fitted here (``--prior-components``), so its artifact generates."""
        components = getattr(self.args, "prior_components", 0)
        if self.model.fits_latent_density and components > 0:
            from .latent_prior import fit_latent_prior

            if len(train) < 2 * components:
                tqdm.write(
                    f"latent density: skipped, {len(train)} training images are too few for "
                    f"{components} components (--prior-components; 0 turns it off)"
                )
                return

            density, summary = fit_latent_prior(
                self.model, train, components, self.args.prior_images, self.args.seed
            )
            self.model.attach_latent_density(density)
            tqdm.write(f"latent density: {summary}")


def cosine_factor(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 5% (Loshchilov & Hutter, 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
