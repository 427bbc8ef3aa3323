"""Anomaly scores beside the served one: what else was tried on the shipped exact models.

    python -m bench.anomaly                  # trains the background model (8 min), then scores
    python -m bench.anomaly --minutes 2      # a weaker background, for a quick look

The service's anomaly score is input complexity (Serra et al. 2020, ``models/anomaly.py``).
This measures, on the same sets as the evaluator (``training/ood.py``: 1,000 test images
against 1,000 of each set), three alternatives for ``pixelcnn-fashion`` and ``made-fashion``:

- ``llr``: the likelihood ratio to a background model (Ren et al., "Likelihood Ratios for
  Out-of-Distribution Detection", NeurIPS 2019): log p_background(x) - log p_model(x), the
  background a *local* PixelCNN (one gated layer of 32 channels, no dilation: it sees a few
  pixels around each one), trained here for ``--minutes``. The ratio keeps what the full model
  knows beyond local statistics.
- ``fisher``: both scores turned into p-values among the 2,000 validation images and combined
  by Fisher's method (-log(1 - p1) - log(1 - p2)): a two-test detector.
- ``vae reconstruction``: mean squared error of ``vae-fashion``'s reconstruction, for reference.

Prints one AUROC table. Figures, not verdicts: nothing here is served.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from models import load_model
from models.anomaly import complexity_bits
from models.pixelcnn import PixelCNN, PixelCNNConfig
from training.data import load_fashion_mnist
from training.density import log_likelihoods
from training.ood import auroc, ood_sets

LN2 = math.log(2)


def train_background(train: torch.Tensor, minutes: float, seed: int) -> PixelCNN:
    """A local PixelCNN on the training images [N, 1, 28, 28], trained for ``minutes``."""
    torch.manual_seed(seed)
    config = PixelCNNConfig(image_shape=(1, 28, 28), channels=32, dilations=(1,), mixtures=5)
    model = PixelCNN(config)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + minutes * 60
    bar = tqdm(desc="background model", unit="step", mininterval=2.0)
    while time.monotonic() < deadline:
        x = train[torch.randint(0, len(train), (64,), generator=g)]
        loss = -model.log_likelihood(x).mean() / (LN2 * 784)  # bits/dim
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update()
        bar.set_postfix(bits_per_dim=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def p_values(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Share of the reference scores below each score, kept below 1 for the logarithm."""
    ranks = np.searchsorted(np.sort(reference), scores) / len(reference)
    return np.minimum(ranks, 1 - 0.5 / len(reference))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=8.0, help="training time of the background")
    p.add_argument("--weights", default="weights", help="folder of the shipped models")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_fashion_mnist(val_size=2000)
    test = data.test.images.float() / 255
    sets = {
        "validation": data.val.images.float()[:2000] / 255,
        "test": test[:1000],
        **ood_sets(test, 1000),
    }
    background = train_background(data.train.images.float() / 255, args.minutes, args.seed)
    with torch.no_grad():
        local = {k: torch.cat([background.log_likelihood(x[i : i + 500]) for i in range(0, len(x), 500)]).double()
                 for k, x in sets.items()}  # fmt: skip
    code_bits = {k: complexity_bits(x, "8-bit discrete") for k, x in sets.items()}
    ood = [k for k in sets if k not in ("validation", "test")]
    rows: list[tuple[str, dict[str, np.ndarray]]] = []
    for name in ("pixelcnn-fashion", "made-fashion"):
        model = load_model(f"{args.weights}/{name}")
        ll = {k: log_likelihoods(model, x, desc=f"{name}: {k}") for k, x in sets.items()}
        raw = {k: (-v / (LN2 * 784)).numpy() for k, v in ll.items()}
        complexity = {k: ((-ll[k] / LN2 - code_bits[k]) / 784).numpy() for k in sets}
        llr = {k: ((local[k] - ll[k]) / (LN2 * 784)).numpy() for k in sets}
        fisher = {
            k: -np.log1p(-p_values(complexity["validation"], complexity[k]))
            - np.log1p(-p_values(llr["validation"], llr[k]))
            for k in sets
        }
        rows += [(f"{name}: raw -log p", raw), (f"{name}: input complexity (served)", complexity),
                 (f"{name}: llr, local background", llr), (f"{name}: fisher(complexity, llr)", fisher)]  # fmt: skip
    vae = load_model(f"{args.weights}/vae-fashion")
    with torch.no_grad():
        errors = {k: (vae.run("reconstruct", x).tensors()["images"] - x).pow(2).flatten(1).mean(1).numpy()
                  for k, x in sets.items()}  # fmt: skip
    rows.append(("vae-fashion: reconstruction error", errors))
    print(f"\nAUROC against {len(sets['test'])} Fashion-MNIST test images; background model "
          f"trained {args.minutes:g} min, test {float(-local['test'].mean() / (LN2 * 784)):.3f} bits/dim\n")  # fmt: skip
    print("| score | " + " | ".join(ood) + " | min |")
    print("|---|" + "---|" * (len(ood) + 1))
    for label, scores in rows:
        aucs = [auroc(scores["test"], scores[k]) for k in ood]
        print(f"| {label} | " + " | ".join(f"{a:.3f}" for a in aucs) + f" | {min(aucs):.3f} |")


if __name__ == "__main__":
    main()
