"""The denoising autoencoder: trained on corrupted inputs, scored against tuned classical
denoisers (training/metrics.py), and its generative stochastic network's chain samples
judged as every generating model's are (models/gsn.py)."""

from __future__ import annotations

import argparse

import torch

from models import LatentModel, corrupt
from models.denoising import CHAIN_STEPS, DenoisingAutoencoder

from ..data import Dataset
from ..declaration import TrainingSpec, denoising_picture, register_training
from ..metrics import CLASSICAL_DENOISERS, denoise_all, psnr, tune_denoiser
from ..recipes import Recipe, psnr_sum
from ..scoring import (
    Metrics,
    as_float,
    in_batches,
    judge_path,
    judge_samples,
    load_judge,
    reconstruction_metrics,
    seeded_samples,
)

SIGMAS = (0.1, 0.3, 0.5)


class DenoisingRecipe(Recipe):
    model: DenoisingAutoencoder

    def model_input(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.corrupt_for_training(x, generator)

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        g = torch.Generator().manual_seed(0)
        noisy = corrupt(x, "gaussian", 0.3, g)
        out["psnr_sigma0.3"] = psnr_sum(self.model.reconstruct(noisy), x)
        return out


def evaluate_dae(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    out = reconstruction_metrics(model, data, test)
    tune_clean = as_float(data.val.images[: args.tune_images])
    base_clean = test[: args.baseline_images]
    baselines: Metrics = {}
    for sigma in SIGMAS:
        g = torch.Generator().manual_seed(int(sigma * 1000))
        noisy = corrupt(test, "gaussian", sigma, g)
        out[f"psnr_gaussian_{sigma}"] = float(
            psnr(in_batches(model.reconstruct, noisy), test).mean()
        )
        out[f"psnr_noisy_input_{sigma}"] = float(psnr(noisy, test).mean())
        tune_noisy = corrupt(tune_clean, "gaussian", sigma, g).numpy()
        base_noisy = noisy[: args.baseline_images].numpy()
        for name, (fn, _) in CLASSICAL_DENOISERS.items():
            param, _ = tune_denoiser(name, tune_noisy, tune_clean.numpy(), sigma)
            score = float(psnr(denoise_all(fn, base_noisy, param, sigma), base_clean).mean())
            baselines[f"{name} sigma {sigma}"] = {"psnr": score, "tuned_parameter": param}
        out[f"psnr_gaussian_{sigma}_same_images_as_baselines"] = float(
            psnr(in_batches(model.reconstruct, noisy[: args.baseline_images]), base_clean).mean()
        )
    for kind, levels in (("salt_pepper", (0.1, 0.2)), ("mask", (0.25, 0.5))):
        for level in levels:
            noisy = corrupt(test, kind, level, torch.Generator().manual_seed(1))
            out[f"psnr_{kind}_{level}"] = float(
                psnr(in_batches(model.reconstruct, noisy), test).mean()
            )
    out["baselines"] = baselines
    if isinstance(model, DenoisingAutoencoder) and judge_path(args).is_dir():
        out["chain"] = chain_metrics(model, data, test, args)
    return out


@torch.no_grad()
def chain_metrics(
    model: DenoisingAutoencoder, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    """``--samples`` images from the GSN chain (CHAIN_STEPS steps from uniform noise, seeded),
    judged like every model's samples (scoring.judge_samples)."""
    samples = seeded_samples(model.sample_many, args.samples, "GSN chains")
    return {**judge_samples(load_judge(args), samples, data, test), "steps": CHAIN_STEPS}


register_training(TrainingSpec(
    family="dae", recipe=DenoisingRecipe, evaluate=evaluate_dae, picture=denoising_picture,
    floors=(("psnr_gaussian_0.1", ">=", 26.5), ("psnr_gaussian_0.3", ">=", 21.4),
            ("psnr_gaussian_0.5", ">=", 18.3)),
    headline=lambda m: ("PSNR at sigma 0.1/0.3/0.5: " + " / ".join(f"{m[f'psnr_gaussian_{s}']:.2f}" for s in (0.1, 0.3, 0.5))
                      + " dB (best classical: " + " / ".join(f"{max(v['psnr'] for k, v in m['baselines'].items() if k.endswith(f'sigma {s}')):.2f}" for s in (0.1, 0.3, 0.5)) + ")"),
))  # fmt: skip
