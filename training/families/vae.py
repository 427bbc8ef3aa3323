"""The VAE: the (beta-weighted) ELBO, scored by -ELBO, the importance-weighted bound (IWAE)
and active units."""

from __future__ import annotations

import argparse
import math

import torch
from tqdm import tqdm

from models import LatentModel
from models.vae import VAE

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..density import evaluate_density
from ..metrics import active_units
from ..recipes import Recipe
from ..scoring import Metrics, reconstruction_metrics


class VAERecipe(Recipe):
    model: VAE

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:

        def losses(m: VAE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, mu, log_var = m(x)
            nll, kl = m.elbo_terms(x, logits, mu, log_var)
            return (nll + m.config.beta * kl).mean(), nll.detach(), kl.detach()

        loss, nll, kl = self.forward(losses)
        self._step("model", loss)
        return {"loss": loss.item(), "nll": nll.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        logits, mu, log_var = self.model(x)
        nll, kl = self.model.elbo_terms(x, logits, mu, log_var)
        out.update(neg_elbo=float((nll + kl).sum()), kl=float(kl.sum()))
        return out


@torch.no_grad()
def evaluate_vae(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, VAE)
    out = reconstruction_metrics(model, data, test)
    torch.manual_seed(0)
    nll_sum = kl_sum = 0.0
    means = []
    for i in range(0, len(test), 500):
        x = test[i : i + 500]
        logits, mu, log_var = model(x)
        nll, kl = model.elbo_terms(x, logits, mu, log_var)
        nll_sum, kl_sum = nll_sum + float(nll.sum()), kl_sum + float(kl.sum())
        means.append(mu)
    n = len(test)
    out.update(
        neg_elbo_nats=(nll_sum + kl_sum) / n,
        reconstruction_nats=nll_sum / n,
        kl_nats=kl_sum / n,
        active_units=active_units(torch.cat(means).numpy()),
        latent_dim=model.latent_dim,
    )
    g = torch.Generator().manual_seed(0)
    k = args.iw_samples
    bounds = []
    subset = test[: args.iw_images]
    chunk = max(1, 20_000 // k)  # keep each decoder batch near 20k images
    for i in tqdm(range(0, len(subset), chunk), desc=f"IWAE bound, K={k}", leave=False):
        log_w = model.log_importance_weights(subset[i : i + chunk], k, g)
        bounds.append(torch.logsumexp(log_w, 1) - math.log(k))
    out["iwae_nats"] = float(-torch.cat(bounds).mean())
    out["iwae_samples"] = k
    out["iwae_images"] = len(subset)
    out.update(evaluate_density(model, data, test, args))  # bits/dim, anomaly AUROC
    return out


register_training(TrainingSpec(
    family="vae", recipe=VAERecipe, evaluate=evaluate_vae, floors=(("psnr", ">=", 20.0),),
    headline=lambda m: (f"-ELBO {m['neg_elbo_nats']:.1f} nats, IWAE(K={m['iwae_samples']}) {m['iwae_nats']:.1f}, KL {m['kl_nats']:.1f}, "
                      f"{m['active_units']}/{m['latent_dim']} active units, PSNR {m['psnr']:.2f} dB"),
))  # fmt: skip
