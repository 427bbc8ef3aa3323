"""What the evaluators of several families share: reconstruction PSNR against PCA, the
class-conditional judge, GAN inversion and Frechet distance. Each family's own evaluator is in
its module under training/families/."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch

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
    model: LatentModel, judge: Classifier, per_class: int, temperature: float = 1.0
) -> Metrics:
    """Generate ``per_class`` images of every class; the share the judge puts in that class."""
    names = model.class_names
    if list(judge.config.class_names) != names:
        raise ValueError(
            f"the judge's classes {list(judge.config.class_names)} differ from {names}"
        )
    g = torch.Generator().manual_seed(0)
    accuracy = {}
    for c, name in enumerate(names):
        labels = torch.full((per_class,), c, dtype=torch.long)
        codes = model.sample_latent(per_class, g, temperature, labels=labels)
        predicted = in_batches(judge, in_batches(model.decode, codes)).argmax(1)
        accuracy[name] = float((predicted == c).float().mean())
    return {
        "conditional_accuracy": accuracy,
        "min_conditional_accuracy": min(accuracy.values()),
        "mean_conditional_accuracy": sum(accuracy.values()) / len(accuracy),
        "conditional_samples_per_class": per_class,
        "conditional_temperature": temperature,
    }


def inversion_metrics(
    model: LatentModel, test: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, Metrics]:
    """Invert the first ``--inversion-images`` test images: their codes [N, latent_dim], and
    the PSNR of the generator's reconstructions and the time per image."""
    inverted = test[: args.inversion_images]
    started = time.perf_counter()
    budget = SearchBudget(args.inversion_steps, args.inversion_restarts)
    z = model.run("encode", inverted, budget=budget).latent  # the declared search
    seconds = (time.perf_counter() - started) / len(inverted)
    return z, {
        "inversion_psnr": float(psnr(model.decode(z), inverted).mean()),
        "inversion_images": len(inverted),
        "inversion_seconds_per_image": seconds,
    }


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


def load_judge(args: argparse.Namespace) -> Classifier:
    path = args.classifier or args.model.parent / "classifier-fashion"
    judge = load_model(path)
    if not isinstance(judge, Classifier):
        raise ValueError(f"{path} is a {judge.family} model, not a classifier")
    return judge


def evaluate_reconstruction(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    return reconstruction_metrics(model, data, test)
