"""What the evaluators of several families share: reconstruction PSNR against PCA, the
class-conditional judge, GAN inversion and Frechet distance. Each family's own evaluator is in
its module under training/families/."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import LatentModel, SearchBudget, load_model
from models.classifier import Classifier

from .data import Dataset
from .metrics import PCA, frechet_distance, psnr

Metrics = dict[str, Any]


def as_float(split_images: torch.Tensor) -> torch.Tensor:
    return split_images.float() / 255


@torch.no_grad()
def in_batches(fn: Any, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def reconstruction_metrics(model: LatentModel, data: Dataset, test: torch.Tensor) -> Metrics:
    x_hat = in_batches(model.reconstruct, test)
    k = min(model.latent_dim, math.prod(model.image_shape))
    pca = PCA(as_float(data.train.images).numpy(), k)
    return {
        "psnr": float(psnr(x_hat, test).mean()),
        "mse": float((x_hat - test).pow(2).mean()),
        "pca_components": k,
        "pca_psnr": float(psnr(pca.reconstruct(test.numpy()), test).mean()),
    }


@torch.no_grad()
def conditional_accuracy(
    model: LatentModel, judge: Classifier, per_class: int, real: tuple[torch.Tensor, torch.Tensor],
    temperature: float = 1.0,
) -> Metrics:  # fmt: skip
    """Generate ``per_class`` images of every class; the share the judge puts in that class,
    beside the judge's accuracy on the real test images of that class (``real``: images
    [N, C, H, W], labels [N]) and their ratio: a judge stricter on one class (shirts) than on
    another (coats) then asks of each class only what it can tell apart itself."""
    names = model.class_names
    if list(judge.config.class_names) != names:
        raise ValueError(
            f"the judge's classes {list(judge.config.class_names)} differ from {names}"
        )
    images, labels = real
    judged_real = in_batches(judge, images).argmax(1)
    g = torch.Generator().manual_seed(0)
    accuracy: dict[str, float] = {}
    real_accuracy: dict[str, float | None] = {}  # None: no test image of the class
    ratio: dict[str, float | None] = {}  # None: no real accuracy to compare with
    for c, name in enumerate(names):
        codes = model.sample_latent(per_class, g, temperature, labels=torch.full((per_class,), c))
        predicted = in_batches(judge, in_batches(model.decode, codes)).argmax(1)
        accuracy[name] = float((predicted == c).float().mean())
        of_class = labels == c
        real = float((judged_real[of_class] == c).float().mean()) if of_class.any() else None
        real_accuracy[name] = real
        ratio[name] = accuracy[name] / real if real else None
    known = [r for r in ratio.values() if r is not None]
    return {
        "conditional_accuracy": accuracy,
        "min_conditional_accuracy": min(accuracy.values()),
        "mean_conditional_accuracy": sum(accuracy.values()) / len(accuracy),
        "judge_accuracy_on_real": real_accuracy,
        "conditional_ratio": ratio,
        "min_conditional_ratio": min(known) if known else None,
        "conditional_samples_per_class": per_class,
        "conditional_temperature": temperature,
    }


def inversion_metrics(
    model: LatentModel, test: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, Metrics]:
    """Invert the first ``--inversion-images`` test images by optimisation: their codes
    [N, latent_dim], the PSNR of the generator's reconstructions and the time per image; and,
    for a model with an inverter, the same for the amortised inversion (one image at a time,
    as the service runs a single request)."""
    inverted = test[: args.inversion_images]
    started = time.perf_counter()
    budget = SearchBudget(args.inversion_steps, args.inversion_restarts, method="optimisation")
    z = model.run("encode", inverted, budget=budget).latent  # the declared search
    seconds = (time.perf_counter() - started) / len(inverted)
    metrics: Metrics = {
        "inversion_psnr": float(psnr(model.decode(z), inverted).mean()),
        "inversion_images": len(inverted),
        "inversion_seconds_per_image": seconds,
    }
    if "amortised" in model.inversion_methods:
        metrics.update(amortised_inversion_metrics(model, inverted, args.inversion_refine_steps))
    return z, metrics


def amortised_inversion_metrics(model: LatentModel, x: torch.Tensor, refine_steps: int) -> Metrics:
    """PSNR and milliseconds per image of the amortised inversion of x [N, C, H, W], one image
    per call (the median time)."""
    budget = SearchBudget(method="amortised", refine_steps=refine_steps)
    codes, times = [], []
    for i in range(len(x)):
        started = time.perf_counter()
        codes.append(model.run("encode", x[i : i + 1], budget=budget).latent)
        times.append(time.perf_counter() - started)
    z = torch.cat(codes)
    return {
        "amortised_inversion_psnr": float(psnr(model.decode(z), x).mean()),
        "amortised_inversion_ms_per_image": 1000 * float(np.median(times)),
        "amortised_inversion_refine_steps": refine_steps,
    }


def amortised_headline(m: Metrics) -> str:
    """The model card's words for the amortised inversion, when the model has one."""
    if "amortised_inversion_psnr" not in m:
        return ""
    return (f"; amortised {m['amortised_inversion_psnr']:.2f} dB at "
            f"{m['amortised_inversion_ms_per_image']:.1f} ms/image")  # fmt: skip


@torch.no_grad()
def frechet_metrics(
    judge: Classifier, samples: torch.Tensor, data: Dataset, test: torch.Tensor
) -> Metrics:
    """Frechet distance of samples to the test images on the judge's features, and its floor:
    the distance between as many training images and the test images."""

    def features(x: torch.Tensor) -> np.ndarray:
        return in_batches(judge.features, x).numpy().astype(np.float64)

    test_feats = features(test)
    train_feats = features(as_float(data.train.images[: len(test)]))
    return {
        "frechet_distance": frechet_distance(features(samples), test_feats),
        "frechet_train_vs_test": frechet_distance(train_feats, test_feats),
    }


def class_share_metrics(predicted: torch.Tensor, class_names: list[str]) -> Metrics:
    """Which classes the judge put generated images in: predicted class indices [N]."""
    shares = torch.bincount(predicted, minlength=len(class_names)).float() / len(predicted)
    return {
        "samples": len(predicted),
        "class_shares": {name: float(s) for name, s in zip(class_names, shares, strict=True)},
        "min_class_share": float(shares.min()),
    }


def inception_score(probs: torch.Tensor) -> float:
    """The classifier Inception Score (Salimans et al. 2016) of judged samples, from the
    judge's class probabilities [N, classes]: exp(E_x KL(p(y|x) || p(y))), between 1 (every
    sample alike, or each one undecided) and the number of classes (confident and balanced)."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return float((p * (p.log() - marginal.log())).sum(1).mean().exp())


@torch.no_grad()
def sample_metrics(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    """For a model that generates: ``--samples`` seeded samples judged by the classifier:
    the Frechet distance on its features, the Inception Score and the class shares."""
    samples = seeded_samples(model.sample, args.samples)
    return {
        **judge_samples(load_judge(args), samples, data, test),
        "sampler": model.latent_prior or "the model's own",
        "judge": str(args.classifier or "classifier-fashion"),
    }


def seeded_samples(
    draw: Callable[[int, torch.Generator], torch.Tensor], n: int, desc: str = "samples"
) -> torch.Tensor:
    """``n`` images [n, C, H, W] from ``draw(count, generator)`` in chunks of 500, all from
    one generator seeded 0: the same samples on every run."""
    g = torch.Generator().manual_seed(0)
    chunks = tqdm(range(0, n, 500), desc=desc, unit="chunk", leave=False)
    return torch.cat([draw(min(500, n - i), g) for i in chunks])


def judge_samples(
    judge: Classifier, samples: torch.Tensor, data: Dataset, test: torch.Tensor
) -> Metrics:
    """Generated images [N, C, H, W] judged: class shares, Frechet distance, Inception Score."""
    probs = in_batches(judge.classify, samples)
    return {
        **class_share_metrics(probs.argmax(1), data.class_names),
        **frechet_metrics(judge, samples, data, test),
        "inception_score": inception_score(probs),
    }


def judge_path(args: argparse.Namespace) -> Path:
    """The classifier that judges samples: --classifier, else classifier-fashion beside the model."""
    return Path(args.classifier or args.model.parent / "classifier-fashion")


def load_judge(args: argparse.Namespace) -> Classifier:
    path = judge_path(args)
    judge = load_model(path)
    if not isinstance(judge, Classifier):
        raise ValueError(f"{path} is a {judge.family} model, not a classifier")
    return judge


def evaluate_reconstruction(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    return reconstruction_metrics(model, data, test)
