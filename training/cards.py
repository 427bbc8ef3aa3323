"""``python -m training cards``: one markdown table of every model card in a weights folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HEADLINE = {
    "ae": lambda m: f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f})",
    "stacked-ae": lambda m: f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f})",
    "sparse-ae": lambda m: (f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f}); "
                            f"mean code {m['mean_activation']:.3f} vs target {m['sparsity_target']}"),
    "dae": lambda m: ("PSNR at sigma 0.1/0.3/0.5: " + " / ".join(f"{m[f'psnr_gaussian_{s}']:.2f}" for s in (0.1, 0.3, 0.5))
                      + " dB (best classical: " + " / ".join(f"{max(v['psnr'] for k, v in m['baselines'].items() if k.endswith(f'sigma {s}')):.2f}" for s in (0.1, 0.3, 0.5)) + ")"),
    "vae": lambda m: (f"-ELBO {m['neg_elbo_nats']:.1f} nats, IWAE(K={m['iwae_samples']}) {m['iwae_nats']:.1f}, KL {m['kl_nats']:.1f}, "
                      f"{m['active_units']}/{m['latent_dim']} active units, PSNR {m['psnr']:.2f} dB"),
    "gan": lambda m: (f"smallest class share {m['min_class_share']:.1%} of {m['samples']}; Frechet distance "
                      f"{m['frechet_distance']:.2f} (train vs test: {m['frechet_train_vs_test']:.2f}); inversion PSNR "
                      f"{m['inversion_psnr']:.2f} dB at {m['inversion_seconds_per_image']:.2f} s/image"),
    "cvae": lambda m: (f"judged as the requested class: {m['mean_conditional_accuracy']:.1%} on average, "
                       f"{m['min_conditional_accuracy']:.1%} for the worst class; -ELBO given the class "
                       f"{m['neg_elbo_given_class_nats']:.1f} nats, PSNR {m['psnr']:.2f} dB"),
    "cgan": lambda m: (f"judged as the requested class: {m['mean_conditional_accuracy']:.1%} on average, "
                       f"{m['min_conditional_accuracy']:.1%} for the worst class; Frechet distance "
                       f"{m['frechet_distance']:.2f} (train vs test: {m['frechet_train_vs_test']:.2f})"),
    "classifier": lambda m: f"test accuracy {m['accuracy']:.2%}",
}  # fmt: skip


def row(folder: Path) -> str | None:
    card_file = folder / "card.json"
    if not card_file.exists():
        return None
    card: dict[str, Any] = json.loads(card_file.read_text())
    metrics = card.get("metrics") or {}
    try:
        headline = HEADLINE[card["family"]](metrics) if metrics else "not evaluated yet"
    except KeyError:
        headline = "metrics incomplete; run the evaluator"
    floors = card.get("quality_floors") or []
    verdict = (
        "all met"
        if floors and all(f["met"] for f in floors)
        else (
            ", ".join(
                f"{f['metric']} {f['floor']}: {'met' if f['met'] else 'NOT met'}" for f in floors
            )
            or "-"
        )
    )
    t = card["training"]
    size_mb = (folder / "model.safetensors").stat().st_size / 1e6
    epochs = f"{t['total_epochs']} ({len(t['stages'])} stages)" if t.get("stages") else t["epochs"]
    return (f"| `{card['name']}` | {card['family']} | {card['latent_dim']} | {card['parameters']:,} ({size_mb:.1f} MB) | "
            f"{epochs} | {t.get('total_wall_time_s', t['wall_time_s']) / 60:.1f} min | {headline} | {verdict} |")  # fmt: skip


def table(weights: Path) -> str:
    lines = [
        "| model | family | latent | parameters | epochs | training time | test metrics (baseline) | quality floors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [r for folder in sorted(weights.iterdir()) if folder.is_dir() and (r := row(folder))]
    return "\n".join(lines)


def add_cards_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=Path("weights"), help="folder of model folders")
    p.set_defaults(func=lambda args: print(table(args.weights)))
