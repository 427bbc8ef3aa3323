"""``python -m training evaluate --model weights/NAME``: measure a model on the test split.

Prints a table of the model's metrics beside honest baselines and the quality floors, and
writes them into the model's ``card.json`` (``--no-write`` to only print).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import LatentModel, corrupt, load_model
from models.cgan import ConditionalGAN
from models.classifier import Classifier
from models.conditioning import ConditionalCode
from models.cvae import ConditionalVAE
from models.gan import GAN
from models.inversion import invert
from models.sparse import SparseAutoencoder
from models.vae import VAE

from .data import FASHION_MNIST_DIR, Dataset, load_dataset
from .metrics import (
    CLASSICAL_DENOISERS,
    PCA,
    active_units,
    denoise_all,
    frechet_distance,
    psnr,
    tune_denoiser,
)

Metrics = dict[str, Any]
SIGMAS = (0.1, 0.3, 0.5)
#: Quality floors for the shipped Fashion-MNIST models: (metric, comparison, floor or baseline key).
FLOORS: dict[str, list[tuple[str, str, float | str]]] = {
    "ae": [("psnr", ">=", 24.0)],
    "dae": [
        ("psnr_gaussian_0.1", ">=", 26.5),
        ("psnr_gaussian_0.3", ">=", 21.4),
        ("psnr_gaussian_0.5", ">=", 18.3),
    ],
    "stacked-ae": [("psnr", ">=", "pca_psnr+3")],
    "sparse-ae": [("psnr", ">=", "pca_psnr+3"), ("mean_activation_rel_error", "<=", 0.2)],
    "vae": [("psnr", ">=", 20.0)],
    # the GANs' Frechet distance is reported beside its floor, the train-vs-test distance
    "gan": [("min_class_share", ">=", 0.05)],
    "cvae": [("min_conditional_accuracy", ">=", 0.90)],
    "cgan": [("min_conditional_accuracy", ">=", 0.90)],
    "classifier": [("accuracy", ">=", 0.90)],
}


def add_evaluate_parser(p: argparse.ArgumentParser) -> None:
    from .cli import positive_int

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument(
        "--model", type=Path, required=True, help="artifact folder, e.g. weights/vae-fashion"
    )
    p.add_argument("--dataset", help="dataset spec (default: the one named in the model card)")
    p.add_argument(
        "--data-dir", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST IDX folder"
    )
    p.add_argument(
        "--classifier",
        type=Path,
        help="judge for GAN samples (default: classifier-fashion beside the model)",
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=10_000,
        help="GAN: images generated for class shares and Frechet distance",
    )
    p.add_argument(
        "--inversion-images", type=positive_int, default=100,
        help="GAN: test images to invert",
    )  # fmt: skip
    p.add_argument(
        "--inversion-steps", type=positive_int, default=200, help="GAN: Adam steps per inversion"
    )
    p.add_argument(
        "--inversion-restarts", type=positive_int, default=4, help="GAN: random starts per image"
    )
    p.add_argument(
        "--iw-samples", type=positive_int, default=500, help="VAE: importance samples K per image"
    )
    p.add_argument(
        "--iw-images",
        type=positive_int,
        default=1000,
        help="VAE: test images for the importance-weighted bound",
    )
    p.add_argument(
        "--baseline-images",
        type=positive_int,
        default=1000,
        help="DAE: test images for the classical denoisers",
    )
    p.add_argument(
        "--tune-images",
        type=positive_int,
        default=200,
        help="DAE: validation images to tune the classical denoisers on",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use only the first N test images (0: all); for smoke tests",
    )
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.add_argument("--no-write", action="store_true", help="print only; leave card.json alone")
    p.set_defaults(func=run_evaluate)


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
    return out


@torch.no_grad()
def conditional_accuracy(
    model: ConditionalCode, judge: Classifier, per_class: int, temperature: float = 1.0
) -> Metrics:
    """Generate ``per_class`` images of every class; the share the judge puts in that class."""
    names = list(model.config.class_names)  # type: ignore[attr-defined]
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


@torch.no_grad()
def evaluate_cvae(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, ConditionalVAE)
    out = reconstruction_metrics(model, data, test)
    labels = data.test.labels[: len(test)]
    torch.manual_seed(0)
    nll_sum = kl_sum = correct = 0.0
    for i in range(0, len(test), 500):
        x, y = test[i : i + 500], labels[i : i + 500]
        nll, kl, _ = model.loss_terms(x, y)
        nll_sum, kl_sum = nll_sum + float(nll.sum()), kl_sum + float(kl.sum())
        correct += float((model.encode_parts(x)[2].argmax(1) == y).sum())
    n = len(test)
    out.update(
        neg_elbo_given_class_nats=(nll_sum + kl_sum) / n,
        kl_nats=kl_sum / n,
        encoder_class_accuracy=correct / n,
    )
    judge = load_judge(args)
    out.update(conditional_accuracy(model, judge, args.samples // model.num_classes))
    return out


@torch.no_grad()
def evaluate_cgan(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, ConditionalGAN)
    judge = load_judge(args)
    out = conditional_accuracy(model, judge, args.samples // model.num_classes)
    g = torch.Generator().manual_seed(0)
    samples = in_batches(model.decode, model.sample_latent(min(args.samples, 10_000), g))
    out.update(frechet_metrics(judge, samples, data, test))
    z, inversion = inversion_metrics(model, test, args)
    # the class tail of an inverted code: does inversion find the image's class too?
    labels = data.test.labels[: len(z)]
    found = z[:, model.noise_dim :].argmax(1)
    return {**out, **inversion, "inversion_class_accuracy": float((found == labels).float().mean())}


def inversion_metrics(
    model: GAN, test: torch.Tensor, args: argparse.Namespace
) -> tuple[torch.Tensor, Metrics]:
    """Invert the first ``--inversion-images`` test images: their codes [N, latent_dim], and
    the PSNR of the generator's reconstructions and the time per image."""
    inverted = test[: args.inversion_images]
    started = time.perf_counter()
    z, _ = invert(
        model,
        inverted,
        steps=args.inversion_steps,
        restarts=args.inversion_restarts,
        generator=torch.Generator().manual_seed(0),
    )
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


def load_judge(args: argparse.Namespace) -> Classifier:
    path = args.classifier or args.model.parent / "classifier-fashion"
    judge = load_model(path)
    if not isinstance(judge, Classifier):
        raise ValueError(f"{path} is a {judge.family} model, not a classifier")
    return judge


@torch.no_grad()
def evaluate_gan(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    judge = load_judge(args)
    g = torch.Generator().manual_seed(0)
    samples = torch.cat(
        [model.sample(min(500, args.samples - i), g) for i in range(0, args.samples, 500)]
    )
    predicted = in_batches(judge, samples).argmax(1)
    shares = torch.bincount(predicted, minlength=len(data.class_names)).float() / len(samples)
    assert isinstance(model, GAN)
    return {
        **inversion_metrics(model, test, args)[1],
        "samples": len(samples),
        "class_shares": {name: float(s) for name, s in zip(data.class_names, shares, strict=True)},
        "min_class_share": float(shares.min()),
        **frechet_metrics(judge, samples, data, test),
        "judge": str(args.classifier or "classifier-fashion"),
    }


@torch.no_grad()
def evaluate_classifier(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    labels = data.test.labels[: len(test)]
    predicted = in_batches(model, test).argmax(1)
    per_class = {
        name: float((predicted[labels == c] == c).float().mean())
        for c, name in enumerate(data.class_names)
        if (labels == c).any()
    }
    return {
        "accuracy": float((predicted == labels).float().mean()),
        "per_class_accuracy": per_class,
    }


def evaluate_plain(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    return reconstruction_metrics(model, data, test)


EVALUATORS = {
    "ae": evaluate_plain,
    "stacked-ae": evaluate_plain,
    "dae": evaluate_dae,
    "sparse-ae": evaluate_sparse,
    "vae": evaluate_vae,
    "gan": evaluate_gan,
    "cvae": evaluate_cvae,
    "cgan": evaluate_cgan,
    "classifier": evaluate_classifier,
}


def check_floors(family: str, metrics: Metrics) -> list[dict[str, Any]]:
    """Compare each metric with its floor; a floor like 'pca_psnr+3' is relative to a baseline."""
    results = []
    for metric, op, floor in FLOORS.get(family, []):
        if isinstance(floor, str):
            key, _, plus = floor.partition("+")
            bound = metrics[key] + (float(plus) if plus else 0.0)
        else:
            bound = floor
        value = metrics[metric]
        met = value >= bound if op == ">=" else value <= bound
        results.append(
            {"metric": metric, "value": value, "floor": f"{op} {bound:.4g}", "met": bool(met)}
        )
    return results


def print_table(name: str, metrics: Metrics, floors: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(f"  {'metric':<46} {'value':>12}")
    for key, value in metrics.items():
        if isinstance(value, float | int) and not isinstance(value, bool):
            print(f"  {key:<46} {value:>12.4f}")
    for key, value in metrics.get("baselines", {}).items():
        print(f"  {'baseline: ' + key:<46} {value['psnr']:>12.4f}")
    for key, value in metrics.get("conditional_accuracy", {}).items():
        print(f"  {'generated as ' + key + ', judged ' + key:<46} {value:>12.4f}")
    for key, value in metrics.get("class_shares", {}).items():
        print(f"  {'class share: ' + key:<46} {value:>12.4f}")
    for f in floors:
        print(
            f"  floor {f['metric']} {f['floor']}: {'met' if f['met'] else 'NOT MET'} ({f['value']:.4f})"
        )


def run_evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    card_file = args.model / "card.json"
    card = json.loads(card_file.read_text()) if card_file.exists() else {}
    spec = args.dataset or card.get("dataset", {}).get("name", "fashion-mnist")
    data = load_dataset(spec, model.image_shape if spec != "fashion-mnist" else None, args.data_dir)
    test = as_float(data.test.images)
    if args.limit:
        test = test[: args.limit]
    started = time.perf_counter()
    metrics = EVALUATORS[model.family](model, data, test, args)
    metrics["test_images"] = len(test)
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    floors = check_floors(model.family, metrics) if spec == "fashion-mnist" else []
    print_table(args.model.name, metrics, floors)
    if not args.no_write:
        card["metrics"] = metrics
        card["quality_floors"] = floors
        tmp = card_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, card_file)
