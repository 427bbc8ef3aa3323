"""Does an RBM's sampler show the model's own distribution? Class shares three ways.

    python -m bench.rbm_equilibrium --model weights/rbm-fashion
    python -m bench.rbm_equilibrium --model runs/rbm-x --steps 1000,5000,20000 --chains 1000

All judged by ``classifier-fashion`` (as the evaluator's class shares are):
1. chains started at 100 binarized test images of each class: the share of each class's chains
   that the judge still puts in that class after ``--data-steps`` Gibbs steps (does the model
   keep a mode there?);
2. ``--chains`` chains from the base rate (as ``generate`` starts them): the class shares after
   each of ``--steps`` (do the shares still move: the chains have not reached equilibrium);
3. ``--anneal-runs`` runs annealed from the base rate along AIS's path (``--anneal-betas``), the
   class shares as they land and weighted by their importance weights, an estimate of the
   shares of the model's own distribution (with its effective sample size).
Not a test: figures, not verdicts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from models import load_model
from models.gibbs import ais_betas, anneal
from models.rbm import RBM, binarize
from training.data import FASHION_MNIST_DIR, load_fashion_mnist_split


def gibbs(
    rbm: RBM, v: torch.Tensor, steps: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` block Gibbs steps from states v [n, D]: (last v, its p(v = 1 | h)) [n, D]."""
    p_v = v
    for _ in range(steps):
        h = torch.bernoulli(rbm.hidden_given(v), generator=g)
        p_v = rbm.visible_given(h)
        v = torch.bernoulli(p_v, generator=g)
    return v, p_v


def judged(judge: torch.nn.Module, p_v: torch.Tensor) -> torch.Tensor:
    return judge(p_v.view(-1, 1, 28, 28)).argmax(1)


def shares(labels: torch.Tensor, weights: torch.Tensor | None = None) -> np.ndarray:
    w = torch.ones(len(labels), dtype=torch.float64) if weights is None else weights
    return (torch.zeros(10, dtype=torch.float64).index_add_(0, labels, w) / w.sum()).numpy()


def fmt(values: np.ndarray) -> str:
    return "[" + " ".join(f"{v:.3f}" for v in values) + "]"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rbm_equilibrium", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--model", type=Path, default=Path("weights/rbm-fashion"))
    parser.add_argument("--judge", type=Path, default=Path("weights/classifier-fashion"))
    parser.add_argument("--data-dir", type=Path, default=FASHION_MNIST_DIR)
    parser.add_argument("--data-steps", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=1000)
    parser.add_argument("--steps", default="1000,5000", help="comma-separated step counts")
    parser.add_argument("--anneal-runs", type=int, default=500)
    parser.add_argument("--anneal-betas", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    marks = sorted(int(s) for s in args.steps.split(","))
    if min(marks) < 1 or args.chains < 1 or args.anneal_runs < 1 or args.data_steps < 1:
        parser.error("steps, chains, runs and data steps must be at least 1")
    torch.set_num_threads(args.threads)
    rbm, judge = load_model(args.model).eval(), load_model(args.judge).eval()
    if not isinstance(rbm, RBM) or tuple(rbm.image_shape) != (1, 28, 28):
        parser.error(f"{args.model} is not a 1x28x28 rbm")
    test = load_fashion_mnist_split(args.data_dir, "t10k")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        labels = test.labels
        pick = torch.cat([torch.nonzero(labels == k)[:100, 0] for k in range(10)])
        start = binarize(test.images[pick].float() / 255).flatten(1)
        _, p_v = gibbs(rbm, start, args.data_steps, g)
        kept = (judged(judge, p_v) == labels[pick]).float().view(10, -1).mean(1).numpy()
        print(
            f"1. chains from test images, after {args.data_steps} steps, share still judged their class:"
        )
        print("   " + fmt(kept))
        print(f"2. {args.chains} chains from the base rate, class shares after:")
        v = torch.bernoulli(torch.sigmoid(rbm.base_rate).expand(args.chains, -1), generator=g)
        done, started = 0, time.perf_counter()
        for mark in marks:
            v, p_v = gibbs(rbm, v, mark - done, g)
            done = mark
            found = shares(judged(judge, p_v))
            print(f"   {mark:6d} steps: {fmt(found)} min {found.min():.3f}"
                  f" ({time.perf_counter() - started:.0f} s)")  # fmt: skip
        log_w, p_v = anneal(rbm, rbm.base_rate, ais_betas(args.anneal_betas), args.anneal_runs, g)
        p_v = p_v.float()
        w = torch.softmax(log_w, 0)
        found = judged(judge, p_v)
        print(f"3. {args.anneal_runs} runs annealed over {args.anneal_betas} betas: as they land "
              f"{fmt(shares(found))}")  # fmt: skip
        print(f"   weighted by their importance weights {fmt(shares(found, w))}"
              f" (effective sample size {float(1 / (w**2).sum()):.1f})")  # fmt: skip
    names = getattr(judge.config, "class_names", None)
    if names:
        print("classes in order: " + ", ".join(names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
