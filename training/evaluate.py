"""``python -m training evaluate --model weights/NAME``: measure a model on the test split.

Prints a table of the model's metrics beside honest baselines and the quality floors, and
writes them into the model's ``card.json`` (``--no-write`` to only print). What is measured is
the family's own evaluator (training/families/), which this module only runs and reports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from models.atlas import has_atlas
from models.operations import REFINE_STEPS

from .argtypes import non_negative_int, positive_int
from .artifacts import add_artifact_arguments, open_artifact
from .atlas import add_atlas_options, make_atlas
from .families import check_floors, training_spec
from .scoring import Metrics, as_float, judge_path, sample_metrics


def add_evaluate_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add_artifact_arguments(p, "weights/vae-fashion")
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
        "--inversion-refine-steps", type=non_negative_int, default=REFINE_STEPS,
        help="GAN with an inverter: refinement steps of the amortised inversion",
    )  # fmt: skip
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
        "--likelihood-samples", type=positive_int, default=1,
        help="vae, cvae: importance samples of the likelihood behind the anomaly score (1: the ELBO)",
    )  # fmt: skip
    p.add_argument(
        "--calibration-images", type=positive_int, default=2000,
        help="density models: validation images whose anomaly scores calibrate the percentiles",
    )  # fmt: skip
    p.add_argument(
        "--feature-images", type=positive_int, default=10_000,
        help="density models with features (made): training images their Gaussian is fitted on",
    )  # fmt: skip
    p.add_argument(
        "--ood-images", type=positive_int, default=1000,
        help="density models: images per out-of-distribution set (and test images) for AUROC",
    )  # fmt: skip
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
    add_atlas_options(p)
    p.add_argument("--no-atlas", action="store_true", help="leave the latent-space atlas alone")
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--no-write", action="store_true", help="print only; leave card.json and the atlas alone"
    )
    p.set_defaults(func=run_evaluate)


def print_table(name: str, metrics: Metrics, floors: list[dict[str, Any]]) -> None:
    print(f"\n{name}")
    print(f"  {'metric':<46} {'value':>12}")
    for key, value in metrics.items():
        if isinstance(value, float | int) and not isinstance(value, bool):
            print(f"  {key:<46} {value:>12.4f}")
    for key, value in metrics.get("baselines", {}).items():
        print(f"  {'baseline: ' + key:<46} {value['psnr']:>12.4f}")
    for key, value in metrics.get("chain", {}).items():  # a dae's GSN chain samples
        if isinstance(value, float | int):
            print(f"  {'GSN chain: ' + key:<46} {value:>12.4f}")
    for key, value in metrics.get("conditional_accuracy", {}).items():
        print(f"  {'generated as ' + key + ', judged ' + key:<46} {value:>12.4f}")
    for key, value in metrics.get("conditional_ratio", {}).items():
        if value is not None:
            real = metrics["judge_accuracy_on_real"][key]
            print(f"  {'... over the judge on real ' + key + f' ({real:.3f})':<46} {value:>12.4f}")
    for key, value in metrics.get("class_shares", {}).items():
        print(f"  {'class share: ' + key:<46} {value:>12.4f}")
    for f in floors:
        print(
            f"  floor {f['metric']} {f['floor']}: {'met' if f['met'] else 'NOT MET'} "
            f"({'unmeasured' if f['value'] is None else format(f['value'], '.4f')})"
        )


def run_evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    opened = open_artifact(args)
    model, card, data = opened.model, opened.card, opened.data
    test = as_float(data.test.images)
    if args.limit:
        test = test[: args.limit]
    started = time.perf_counter()
    spec = training_spec(model.family)
    metrics = spec.evaluate(model, data, test, args)
    generate = model.operations.get("generate")
    if generate and generate.prepare == "sample_latent" and "frechet_distance" not in metrics:
        # every model that decodes codes from a prior (an autoencoder's fitted one too):
        # the samples' Frechet distance, Inception Score and class shares, judged alike
        if judge_path(args).is_dir():
            metrics.update(sample_metrics(model, data, test, args))
        else:
            print(f"samples not judged: no classifier at {judge_path(args)} (--classifier)")
    metrics["test_images"] = len(test)
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    floors = check_floors(spec, metrics) if data.name == "fashion-mnist" else []
    print_table(args.model.name, metrics, floors)
    if not args.no_write:
        if has_atlas(model) and not args.no_atlas:
            card["atlas"] = make_atlas(args.model, model, data, args)
        card["metrics"] = metrics
        card["quality_floors"] = floors
        opened.write_card()
