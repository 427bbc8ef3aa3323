"""``python -m training fit-prior --model weights/NAME``: make a deterministic autoencoder
generate, by fitting a Gaussian mixture to the codes of its training images (ex-post density
estimation, Ghosh et al. 2020; models/latent_density.py) and storing it beside the weights.
On an RBM it fits the Bernoulli mixture its generated Gibbs chains start from (stored in the
weights, ``start_components`` in the config).

The trainer runs the same step at the end of training (``--prior-components``, 0 to skip),
so a newly trained ae, stacked-ae, sparse-ae or dae generates; this command gives it to
artifacts trained before. ``evaluate`` then reports the samples' Frechet distance.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from tqdm import tqdm

from models import LatentModel
from models.latent_density import GaussianMixture, fit_gaussian_mixture, write_latent_density

from .argtypes import non_negative_int, positive_int
from .artifacts import add_artifact_arguments, open_artifact
from .data import Split
from .families import training_spec
from .scoring import as_float


@torch.no_grad()
def training_codes(model: LatentModel, train: Split, images: int, seed: int) -> torch.Tensor:
    """Codes [N, K] of up to ``images`` training images (a seeded sample)."""
    n = min(images, len(train))
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    out = []
    for i in tqdm(range(0, n, 500), desc="encode", leave=False, mininterval=2.0):
        out.append(model.run("encode", as_float(train.images[index[i : i + 500]])).latent.float())
    return torch.cat(out)


def fit_latent_prior(
    model: LatentModel, train: Split, components: int, images: int = 20_000, seed: int = 0
) -> tuple[GaussianMixture, dict[str, Any]]:
    """Fit the mixture to the model's training codes; the density and a summary for the card."""
    if not model.fits_latent_density:
        raise ValueError(f"{model.family} models do not take a fitted latent density")
    started = time.perf_counter()
    codes = training_codes(model, train, images, seed)
    bar = tqdm(desc="EM", leave=False, mininterval=1.0)
    last: list[float] = []

    def progress(step: int, ll: float) -> None:
        last[:] = [ll]
        bar.update(1)
        bar.set_postfix(log_likelihood=f"{ll:.3f}")

    density = fit_gaussian_mixture(codes, components, seed=seed, progress=progress)
    bar.close()
    summary = {
        "kind": "gaussian mixture (Ghosh et al. 2020)",
        "components": components,
        "covariance": "diagonal" if density.diagonal else "full",
        "training_codes": len(codes),
        "log_likelihood_per_code": round(last[0], 4) if last else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return density, summary


def add_prior_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prior-components", type=non_negative_int, default=10,
        help="ae families: Gaussian-mixture components fitted to the codes after training "
        "(so the model generates); 0: none",
    )  # fmt: skip
    p.add_argument(
        "--prior-images", type=positive_int, default=20_000,
        help="ae families: training images whose codes the mixture is fitted to",
    )  # fmt: skip


def add_fit_prior_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add_artifact_arguments(p, "weights/ae-fashion")
    p.add_argument(
        "--components", type=positive_int, default=10,
        help="mixture components (ae families: Gaussian; rbm: Bernoulli, e.g. 20)",
    )  # fmt: skip
    p.add_argument("--images", type=positive_int, default=20_000, help="training codes to fit")
    p.add_argument("--seed", type=int, default=0, help="seeds the code sample and k-means++")
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.set_defaults(func=run_fit_prior)


def run_fit_prior(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    opened = open_artifact(args)
    own = training_spec(opened.model.family).fit_prior
    if own is not None:
        own(opened, args.components, args.seed)
        return
    if not opened.model.fits_latent_density:
        raise SystemExit(
            f"{args.model}: {opened.model.family} models do not take a fitted latent density "
            "(the ae, stacked-ae, sparse-ae and dae families do; an rbm takes the Bernoulli "
            "mixture its generated chains start from)"
        )
    density, summary = fit_latent_prior(
        opened.model, opened.data.train, args.components, args.images, args.seed
    )
    write_latent_density(args.model, density)
    print(f"latent density: {json.dumps(summary)}")
    opened.card["latent_density"] = summary
    opened.write_card()
