"""``python -m training export --format onnx --model weights/NAME --out DIR``: write a model
as a user's ONNX model folder (models/onnx_model.py): ``config.json`` (the manifest),
``encoder.onnx`` where the model encodes with a network (not by search, as a GAN does),
``decoder.onnx`` where it decodes, ``"prior": "normal"`` where its generate decodes N(0, I)
codes. The folder is then loaded back and its outputs compared with the model's own on
seeded inputs; the export fails unless they agree within 1e-4.

This is also how to bring a model trained elsewhere: export its encoder and decoder to ONNX
with the same input and output shapes (images [B, C, H, W] in [0, 1], latents [B, K]) and
write the manifest by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from torch import nn

from models import LatentModel, load_model
from models.checkpoint import CONFIG_FILE, FORMAT_VERSION
from models.onnx_model import FAMILY, export_graph, load_onnx_model

TOLERANCE = 1e-4


class _Role(nn.Module):
    """One operation of the model as a module: encode -> its latent, decode -> images."""

    def __init__(self, model: LatentModel, operation: str) -> None:
        super().__init__()
        self.model, self.operation = model, operation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.run(self.operation, x)
        return out.latent if self.operation == "encode" else out.images  # type: ignore[attr-defined]


def export_onnx(model: LatentModel, out: Path) -> dict[str, object]:
    """Write the folder; the manifest's config."""
    ops = model.operations
    roles = {}
    if "encode" in ops and not ops["encode"].search:
        roles["encoder"] = ("encode", torch.rand(2, *model.image_shape))
    if "decode" in ops:
        roles["decoder"] = ("decode", torch.randn(2, model.latent_dim))
    if not roles:
        raise SystemExit(f"{model.family} models neither encode nor decode: nothing to export")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "image_shape": list(model.image_shape),
        "latent_dim": model.latent_dim,
    }
    for role, (operation, example) in roles.items():
        graph = export_graph(_Role(model, operation), example)
        (out / f"{role}.onnx").write_bytes(graph)
        config[role] = f"{role}.onnx"
    generate = ops.get("generate")
    if (
        generate is not None
        and generate.prepare == "sample_latent"
        and model.latent_prior == "normal"
    ):
        config["prior"] = "normal"
    if model.class_names:
        config["class_names"] = model.class_names
    manifest = {"format": FORMAT_VERSION, "family": FAMILY, "config": config}
    (out / CONFIG_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return config


def check_export(model: LatentModel, out: Path) -> dict[str, float]:
    """The largest difference between the exported graphs and the model, per graph."""
    exported = load_onnx_model(out, json.loads((out / CONFIG_FILE).read_text())["config"])
    g = torch.Generator().manual_seed(0)
    errors = {}
    with torch.no_grad():
        if "encode" in exported.operations:
            x = torch.rand(7, *model.image_shape, generator=g)
            errors["encoder"] = float(
                (exported.encode(x) - model.run("encode", x).latent).abs().max()
            )  # type: ignore[attr-defined]
        if "decode" in exported.operations:
            z = torch.randn(7, model.latent_dim, generator=g)
            errors["decoder"] = float(
                (exported.decode(z) - model.run("decode", z).images).abs().max()
            )  # type: ignore[attr-defined]
    return errors


def add_export_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("--model", type=Path, required=True, help="an artifact folder (weights/NAME)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="what to write")
    p.add_argument("--out", type=Path, required=True, help="a new folder (e.g. weights/ae-onnx)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    config = export_onnx(model, args.out)
    try:
        errors = check_export(model, args.out)
    except Exception:
        shutil.rmtree(args.out, ignore_errors=True)
        raise
    bad = {k: v for k, v in errors.items() if v > TOLERANCE}
    if bad:
        shutil.rmtree(args.out, ignore_errors=True)
        raise SystemExit(f"the exported graphs differ from the model by {bad} (> {TOLERANCE}); nothing written")  # fmt: skip
    graphs = ", ".join(f"{k} (max |difference| {v:.1e})" for k, v in errors.items())
    print(f"{args.out}: {graphs}; prior: {config.get('prior', 'none')}")
