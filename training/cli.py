"""Command line: ``python -m training train ...`` and ``python -m training evaluate ...``.

Every hyperparameter is a flag with a documented default (``--help`` lists them). Bad
values end the run with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from models import CheckpointError, ConfigError, DeclarationError

from .argtypes import (
    float_list,
    fraction,
    image_shape,
    int_list,
    noise_kinds,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from .checkpoints import ResumeError
from .data import FASHION_MNIST_DIR, DatasetError
from .families import trainable, training_spec


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit 2: argparse's usage block buries the actual problem."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train_parser(sub.add_parser("train", help="train a model and write its artifact"))
    from .evaluate import add_evaluate_parser

    add_evaluate_parser(sub.add_parser("evaluate", help="measure a model on the test split"))
    from .atlas import add_atlas_parser

    add_atlas_parser(sub.add_parser("atlas", help="fit a model's latent-space atlas"))
    from .latent_prior import add_fit_prior_parser

    add_fit_prior_parser(
        sub.add_parser(
            "fit-prior",
            help="fit an autoencoder's latent density (so it generates), or where an RBM's "
            "generated chains start",
        )
    )
    from .inverter import add_fit_inverter_parser

    add_fit_inverter_parser(
        sub.add_parser("fit-inverter", help="train a GAN's inverter (amortised inversion)")
    )
    from .export import add_export_parser

    add_export_parser(
        sub.add_parser("export", help="write a model as ONNX graphs and a manifest (served as is)")
    )
    from .cards import add_cards_parser

    add_cards_parser(sub.add_parser("cards", help="print a markdown table of the model cards"))
    return parser


def add_train_parser(p: argparse.ArgumentParser) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p.formatter_class = fmt
    g = p.add_argument_group("run")
    g.add_argument(
        "--family", required=True, choices=trainable(),
        help="model family to train (installed family plugins with a training declaration too)",
    )  # fmt: skip
    g.add_argument(
        "--dataset", default="fashion-mnist", help="fashion-mnist, folder:PATH or synthetic"
    )
    g.add_argument(
        "--data-dir", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST IDX folder"
    )
    g.add_argument(
        "--image-shape",
        type=image_shape,
        help="C,H,W to convert folder images to (default: read off the images)",
    )
    g.add_argument(
        "--val-size",
        type=positive_int,
        default=5000,
        help="images carved from train for validation",
    )
    g.add_argument(
        "--out", type=Path, required=True, help="artifact folder to write, e.g. weights/vae-fashion"
    )
    g.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g.add_argument("--checkpoint-dir", type=Path, help="resumable state (default runs/<out name>)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint-dir if it holds a checkpoint",
    )
    g.add_argument(
        "--init-from",
        type=Path,
        help="start from this artifact's weights and config (fine-tuning); model flags must agree",
    )
    g.add_argument(
        "--seed", type=non_negative_int, default=0, help="seeds weights, data order and noise"
    )
    g.add_argument(
        "--threads",
        type=positive_int,
        help="torch intra-op threads per process (default: the cores split among torchrun's processes)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where training computes: cuda needs a CUDA build of torch and a GPU; auto is cuda "
        "where torch sees one, else cpu (the artifact is written from the CPU either way)",
    )
    g.add_argument(
        "--dry-run", action="store_true", help="3 steps of 1 epoch on synthetic data (CI smoke run)"
    )
    from .latent_prior import add_prior_options

    add_prior_options(p.add_argument_group("latent density (ae families)"))
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=10, help="passes over the training split")
    g.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    g.add_argument(
        "--lr", type=positive_float, help="peak learning rate (default 2e-3; 2e-4 for gan)"
    )
    g.add_argument(
        "--steps-per-epoch",
        type=non_negative_int,
        default=0,
        help="cap on steps per epoch (0: whole split)",
    )
    g.add_argument(
        "--loss",
        choices=("mse", "bce"),
        default="mse",
        help="reconstruction loss of the autoencoders",
    )
    g = p.add_argument_group("model (defaults: the family's own)")
    g.add_argument("--latent-dim", type=positive_int, help="size of the code z")
    g.add_argument("--width", type=positive_int, help="first conv layer's channels (conv families)")
    g.add_argument(
        "--spatial-code",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="conv autoencoders: keep the code's 2-D layout (latent-dim a multiple of the smallest map's area)",
    )
    g.add_argument(
        "--hidden-sizes",
        type=int_list,
        help="stacked-ae: widths between image and code, e.g. 512,256",
    )
    g.add_argument(
        "--tied-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stacked-ae: decoder reuses W^T",
    )
    g.add_argument(
        "--pretrain-epochs",
        type=non_negative_int,
        default=1,
        help="stacked-ae: greedy epochs per layer",
    )
    g.add_argument(
        "--noise-kinds", type=noise_kinds, help="dae: kinds to train against, comma-separated"
    )
    g.add_argument(
        "--noise-probs",
        type=float_list,
        help="dae: chance of each noise kind, in --noise-kinds order (default: equal)",
    )
    g.add_argument("--gaussian-max", type=fraction, help="dae: largest Gaussian sigma")
    g.add_argument("--salt-pepper-max", type=fraction, help="dae: largest salt-and-pepper fraction")
    g.add_argument("--mask-max", type=fraction, help="dae: largest masked fraction")
    g.add_argument(
        "--sparsity-penalty", choices=("kl", "l1"), help="sparse-ae: penalty on the code"
    )
    g.add_argument("--sparsity-target", type=fraction, help="sparse-ae: target mean activation rho")
    g.add_argument(
        "--sparsity-weight", type=positive_float, help="sparse-ae: weight of the penalty"
    )
    g.add_argument("--beta", type=positive_float, help="vae, cvae: weight of the KL term")
    g.add_argument(
        "--class-weight", type=positive_float, help="cvae: weight of the encoder's class loss"
    )
    g.add_argument(
        "--consistency-weight",
        type=non_negative_float,
        help="cvae: weight of the class consistency of prior samples (default 0: off)",
    )
    g.add_argument(
        "--aux-class-weight",
        type=non_negative_float,
        help="cgan: weight of the AC-GAN auxiliary class loss (default 0: projection only)",
    )
    g.add_argument(
        "--class-guidance",
        type=non_negative_float,
        help="gan: weight of the CatGAN class terms of a critic class head trained on the "
        "labels (default 0: labels unused; the generator never takes a class)",
    )
    g.add_argument(
        "--mixture-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gan: draw z from one unit Gaussian per training class; the critic judges "
        "fakes against their component (projection + AC-GAN head at --class-guidance)",
    )
    g.add_argument(
        "--one-hot-components",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gan, with --mixture-prior: each component a one-hot tail of the code "
        "[z, one_hot(k)] (InfoGAN's categorical code) instead of a random mean",
    )
    g.add_argument(
        "--lr-critic", type=positive_float, default=4e-4, help="gan: critic learning rate"
    )
    g.add_argument(
        "--cd-steps",
        type=positive_int,
        default=1,
        help="rbm: Gibbs steps of the persistent chains per update (PCD-k)",
    )
    g.add_argument(
        "--gibbs-steps",
        type=positive_int,
        help="rbm: block Gibbs steps of each generated chain (default 1000)",
    )
    g.add_argument(
        "--chains",
        type=positive_int,
        help="rbm: persistent chains of the negative phase (default: the batch size); more "
        "chains cover more of the model's modes at once",
    )
    g.add_argument(
        "--replicas",
        type=positive_int,
        help="rbm: parallel-tempering replicas of the training chains and of each generated "
        "chain (default 1: plain block Gibbs sampling)",
    )
    g.add_argument(
        "--start-components",
        type=non_negative_int,
        default=20,
        help="rbm: components of the Bernoulli mixture (fitted to the training images after "
        "training) that generated Gibbs chains start from; 0: the visible biases' pixels",
    )
    g.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="rbm: adam, or sgd = SGD with momentum 0.9 as in Tieleman 2008 and Hinton's "
        "practical guide (Adam's per-weight steps let the weights grow and the chains stop mixing)",
    )
    g.add_argument(
        "--centering",
        action="store_true",
        help="rbm: train the centred RBM (Montavon & Mueller 2012; Melchior et al. 2016): "
        "gradients of v - mean(v) and h - mean(h), mapped back to the plain parameters (an "
        "exact reparameterisation with --optimizer sgd; Adam rescales each weight's step)",
    )
    g.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=0.0,
        help="rbm: L2 weight cost on W (Hinton's practical guide: 1e-4 to 1e-2); small "
        "weights keep Gibbs chains mixing between classes",
    )
    g.add_argument(
        "--ais-betas", type=positive_int, default=14_500,
        help="rbm: intermediate distributions of annealed importance sampling for log Z",
    )  # fmt: skip
    g.add_argument(
        "--ais-runs", type=positive_int, default=100, help="rbm: parallel AIS runs for log Z"
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> None:
    from .trainer import train

    if args.lr is None:
        args.lr = training_spec(args.family).lr
    if args.dry_run:
        args.dataset, args.epochs, args.steps_per_epoch = "synthetic", 1, 3
        args.batch_size = min(args.batch_size, 16)
        args.val_size = min(args.val_size, 50)
        args.ais_betas, args.ais_runs = min(args.ais_betas, 200), min(args.ais_runs, 16)
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    train(args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except (
        DatasetError,
        ConfigError,
        DeclarationError,
        CheckpointError,
        ResumeError,
        FileExistsError,
    ) as exc:
        print(f"python -m training: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m training: interrupted; nothing was written to --out", file=sys.stderr)
        return 130
    return 0
