"""``python -m training cards``: one markdown table of every model card in a weights folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models import DeclarationError

from .families import training_spec


def row(folder: Path) -> str | None:
    card_file = folder / "card.json"
    if not card_file.exists():
        return None
    card: dict[str, Any] = json.loads(card_file.read_text())
    metrics = card.get("metrics") or {}
    try:
        headline = (
            training_spec(card["family"]).headline(metrics) if metrics else "not evaluated yet"
        )
    except (KeyError, DeclarationError):
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
