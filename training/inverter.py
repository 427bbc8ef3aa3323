"""``python -m training fit-inverter --model weights/gan-fashion``: train a GAN's inverter.

The amortised half of GAN inversion (models/inversion.py; Zhu et al. 2016, Zhu et al. 2020):
a conv encoder E learns, with the generator G fixed, to map a training image x to the code
whose image is x, by minimising ||G(E(x)) - x||^2 over the training images, the objective the
service's refinement steps then continue on the one image it is given. Then the refinement's
preconditioner is fitted (the generator's mean Gauss-Newton matrix at E's codes for training
images; ``--epochs 0`` fits only it, keeping a trained inverter). The inverter is stored
in the artifact's own ``model.safetensors`` (tensors ``inverter.*``) and its width in
``config.json``; the GAN's other weights are written back unchanged. The card gains the
amortised inversion's PSNR and time per image beside the optimisation's.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from tqdm import tqdm

from models import LatentModel, save_model
from models.gan import GAN, make_inverter
from models.inversion import gauss_newton_preconditioner
from models.operations import REFINE_STEPS

from .argtypes import non_negative_int, positive_float, positive_int
from .artifacts import add_artifact_arguments, open_artifact
from .data import Split, batches
from .metrics import psnr
from .scoring import amortised_inversion_metrics, as_float

DEFAULT_WIDTH = 32


def add_fit_inverter_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add_artifact_arguments(p, "weights/gan-fashion")
    p.add_argument(
        "--width", type=positive_int, default=argparse.SUPPRESS,
        help=f"the inverter's first conv width (default {DEFAULT_WIDTH}); with --epochs 0 the "
        "trained inverter's width, and another is refused",
    )  # fmt: skip
    p.add_argument(
        "--epochs", type=non_negative_int, default=8,
        help="passes over the training images; 0: keep the model's trained inverter as it is "
        "and fit only the refinement's preconditioner",
    )  # fmt: skip
    p.add_argument(
        "--preconditioner-images", type=positive_int, default=300,
        help="training images whose predicted codes the preconditioner averages over",
    )  # fmt: skip
    p.add_argument(
        "--steps-per-epoch", type=positive_int, help="stop each epoch after this many batches"
    )
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=positive_float, default=2e-3, help="peak of the one-cycle schedule")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights and batch order")
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.add_argument(
        "--refine-steps", type=non_negative_int, default=REFINE_STEPS,
        help="refinement steps of the amortised inversion the card reports",
    )  # fmt: skip
    p.add_argument(
        "--eval-images", type=positive_int, default=100, help="test images the card's PSNR is on"
    )
    p.set_defaults(func=run_fit_inverter)


def val_psnr(model: GAN, split: Split, images: int = 1000) -> float:
    """Mean PSNR of G(E(x)) on the first validation images, without refinement."""
    assert model.inverter is not None
    x = as_float(split.images[:images])
    with torch.no_grad():
        return float(psnr(model.decode(model.inverter(x)), x).mean())


def fit_inverter(model: GAN, train: Split, val: Split, args: argparse.Namespace) -> dict:
    """Train a new inverter of ``args.width`` into ``model``; its summary for the card."""
    torch.manual_seed(args.seed)
    model.config.inverter_width = getattr(args, "width", DEFAULT_WIDTH)
    model.inverter = make_inverter(model)
    assert model.inverter is not None
    model.eval()  # the generator's batch norm as it serves
    for p in model.parameters():
        p.requires_grad_(False)
    inverter = model.inverter.train()
    for p in inverter.parameters():
        p.requires_grad_(True)
    per_epoch = math.ceil(len(train) / args.batch_size)
    if args.steps_per_epoch:
        per_epoch = min(per_epoch, args.steps_per_epoch)
    opt = torch.optim.Adam(inverter.parameters(), lr=args.lr / 10)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.epochs * per_epoch
    )
    order = torch.Generator().manual_seed(args.seed)
    started, history = time.perf_counter(), []
    for epoch in range(1, args.epochs + 1):
        bar = tqdm(total=per_epoch, desc=f"epoch {epoch}/{args.epochs}", mininterval=2.0)
        total = 0.0
        for step, (x, _) in enumerate(batches(train, args.batch_size, order, drop_last=True)):
            if step == per_epoch:
                break
            loss = (model.decode(inverter(x)) - x).pow(2).mean()  # ||G(E(x)) - x||^2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            total += loss.item()
            bar.update(1)
            bar.set_postfix(mse=f"{loss.item():.4f}")
        bar.close()
        inverter.eval()
        history.append(
            {"epoch": epoch, "train_mse": total / per_epoch, "val_psnr": val_psnr(model, val)}
        )
        inverter.train()
        print(json.dumps(history[-1]))
    inverter.eval()
    return {
        "kind": "amortised GAN inversion (Zhu et al. 2016; 2020): conv encoder, then L-BFGS refinement",
        "width": model.config.inverter_width,
        "parameters": sum(p.numel() for p in inverter.parameters()),
        "epochs": args.epochs,
        "steps_per_epoch": per_epoch,
        "batch_size": args.batch_size,
        "seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }


def fit_preconditioner(model: GAN, train: Split, args: argparse.Namespace) -> dict:
    """Give the model's inverter the refinement's preconditioner (models/inversion.py), from
    its predictions for the first ``--preconditioner-images`` training images; its summary."""
    assert model.inverter is not None
    model.eval()
    started = time.perf_counter()
    x = as_float(train.images[: args.preconditioner_images])
    with torch.no_grad():
        codes = model.inverter(x)
    model.set_inversion_preconditioner(gauss_newton_preconditioner(model, codes))
    return {
        "kind": "Gauss-Newton: mean J^T J of the generator at the inverter's codes",
        "images": len(x),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_fit_inverter(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    opened = open_artifact(args)
    model: LatentModel = opened.model
    if not isinstance(model, GAN):
        raise SystemExit(
            f"{args.model}: a {model.family} model has no generator to invert (gan, cgan)"
        )
    if args.epochs:
        summary = fit_inverter(model, opened.data.train, opened.data.val, args)
    elif model.inverter is None:
        raise SystemExit(f"{args.model}: --epochs 0 keeps the trained inverter, and it has none")
    elif getattr(args, "width", model.config.inverter_width) != model.config.inverter_width:
        raise SystemExit(
            f"{args.model}: --epochs 0 keeps the trained inverter, of width "
            f"{model.config.inverter_width}; a width of {args.width} needs training (--epochs 1 "
            "or more)"
        )
    else:
        summary = opened.card.get("inverter", {})
    summary["preconditioner"] = fit_preconditioner(model, opened.data.train, args)
    test = as_float(opened.data.test.images[: args.eval_images])
    with torch.inference_mode():
        metrics = amortised_inversion_metrics(model, test, args.refine_steps)
    metrics["amortised_inversion_images"] = len(test)
    save_model(model, args.model)  # the generator and critic unchanged, the inverter added
    print(f"inverter: {json.dumps({k: v for k, v in summary.items() if k != 'history'})}")
    print(f"amortised inversion: {json.dumps(metrics)}")
    opened.card["inverter"] = summary
    opened.card.setdefault("metrics", {}).update(metrics)
    opened.write_card()
