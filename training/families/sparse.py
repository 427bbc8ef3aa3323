"""The sparse autoencoder: reconstruction plus the KL sparsity penalty on the code."""

from __future__ import annotations

import argparse

import torch

from models import LatentModel
from models.sparse import SparseAutoencoder

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import Metrics, in_batches, reconstruction_metrics


class SparseRecipe(Recipe):
    model: SparseAutoencoder

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:

        def losses(m: SparseAutoencoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            z = m.encode(x)
            rec = self.reconstruction_loss(m.decode_logits(z), x)
            loss = rec + m.config.sparsity_weight * m.sparsity_penalty(z)
            return loss, rec.detach(), z.detach().mean()

        loss, rec, mean_act = self.forward(losses)
        self._step("model", loss)
        return {"loss": loss.item(), "rec": rec.item(), "mean_act": mean_act.item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        out["mean_activation"] = float(self.model.encode(x).mean(1).sum())
        return out


def evaluate_sparse(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, SparseAutoencoder)
    out = reconstruction_metrics(model, data, test)
    codes = in_batches(model.encode, test)
    target = model.config.sparsity_target
    out["mean_activation"] = float(codes.mean())
    out["sparsity_target"] = target
    out["mean_activation_rel_error"] = abs(float(codes.mean()) - target) / target
    out["fraction_of_units_below_0.1"] = float((codes < 0.1).float().mean())
    return out


register_training(TrainingSpec(
    family="sparse-ae", recipe=SparseRecipe, evaluate=evaluate_sparse,
    floors=(("psnr", ">=", "pca_psnr+3"), ("mean_activation_rel_error", "<=", 0.2)),
    headline=lambda m: (f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f}); "
                            f"mean code {m['mean_activation']:.3f} vs target {m['sparsity_target']}"),
))  # fmt: skip
