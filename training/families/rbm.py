"""The RBM: persistent contrastive divergence (Tieleman 2008) on binarized images, then
annealed importance sampling of log Z (models/gibbs.py) so the artifact reports and serves
a log-likelihood."""

from __future__ import annotations

import argparse

import torch
from tqdm import tqdm

from models import LatentModel
from models.gibbs import ais_betas, ais_log_partition
from models.rbm import RBM, binarize

from ..data import Dataset, Split
from ..declaration import TrainingSpec, register_training
from ..density import density_headline, evaluate_density
from ..recipes import Recipe
from ..scoring import Metrics


def base_rate_bias(train: Split) -> torch.Tensor:
    """Log-odds of each pixel being on in the binarized training images [D]: the AIS base
    model (and a good start for the visible biases, Hinton's "practical guide", 2010)."""
    on = (train.images.float() / 255 > 0.5).float().flatten(1).mean(0)
    p = (on * len(train.images) + 0.5) / (len(train.images) + 1)  # never exactly 0 or 1
    return torch.log(p) - torch.log1p(-p)


class RBMRecipe(Recipe):
    """PCD-k: the positive phase on the data, the negative phase on persistent chains that
    take ``--cd-steps`` Gibbs steps per update and are never reset. The gradient of
    mean F(v_data) - mean F(v_chain) is the log-likelihood gradient's CD estimate."""

    model: RBM

    def __init__(self, model: LatentModel, args: argparse.Namespace) -> None:
        super().__init__(model, args)
        self.chains: torch.Tensor | None = None

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        m = self.model
        v = binarize(x).flatten(1)
        if self.chains is None or len(self.chains) != len(v):
            self.chains = v.clone()  # start the chains at data (PCD's usual start)
        with torch.no_grad():
            chain = self.chains
            for _ in range(self.args.cd_steps):
                h = torch.bernoulli(m.hidden_given(chain), generator=generator)
                chain = torch.bernoulli(m.visible_given(h), generator=generator)
            self.chains = chain
        loss = m.free_energy(v).mean() - m.free_energy(self.chains).mean()
        self._step("model", loss)
        with torch.no_grad():
            error = (m.visible_given(m.hidden_given(v)) - v).pow(2).mean()
        return {"free_energy_gap": loss.item(), "reconstruction_mse": error.item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        v = binarize(x).flatten(1)
        m = self.model
        error = (m.visible_given(m.hidden_given(v)) - v).pow(2).mean(1)
        return {
            "reconstruction_mse": float(error.sum()),
            "free_energy": float(m.free_energy(v).sum()),
        }

    def finish(self, train: Split) -> None:
        """Estimate log Z by AIS and store it with the weights."""
        betas = ais_betas(self.args.ais_betas)
        bar = tqdm(total=len(betas) - 1, desc="AIS log Z", leave=False, mininterval=1.0)

        def progress(k: int) -> None:
            bar.n = k
            bar.refresh()

        log_z, error = ais_log_partition(
            self.model, base_rate_bias(train), betas, self.args.ais_runs,
            torch.Generator().manual_seed(self.args.seed), progress,
        )  # fmt: skip
        bar.close()
        self.model.log_partition.copy_(torch.tensor([log_z, error]))
        tqdm.write(
            f"AIS: log Z = {log_z:.2f} +- {error:.2f} ({len(betas) - 1} betas, {self.args.ais_runs} runs)"
        )


@torch.no_grad()
def evaluate_rbm(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    """The density evaluation, and the stored AIS estimate of log Z it rests on."""
    assert isinstance(model, RBM)
    log_z, error = (float(v) for v in model.log_partition)
    return {
        **evaluate_density(model, data, test, args),
        "ais_log_partition": log_z,
        "ais_log_partition_std_error": error,
    }


register_training(TrainingSpec(
    family="rbm", recipe=RBMRecipe, evaluate=evaluate_rbm, headline=density_headline,
    lr=1e-3, floors=(),
))  # fmt: skip
