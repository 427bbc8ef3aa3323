"""What a finished run leaves beside the weights: pictures, a loss curve, a model card.

The artifact folder is assembled under a temporary name next to ``--out`` and renamed into
place at the end, so an interrupted run never leaves a half-written artifact behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import LatentModel, load_model, save_model
from models.imaging import make_grid

from .data import FASHION_MNIST_DIR, Dataset, load_dataset
from .families import training_spec


def hardware(device: torch.device | None = None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    found = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if device is not None and device.type == "cuda":
        found += f", trained on {torch.cuda.get_device_name(device)}"
    return found


@torch.no_grad()
def plot_history(history: list[dict[str, Any]], file: Path) -> None:
    """Loss curve PNG: every training number per epoch, and the validation ones dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    epochs = [h["epoch"] for h in history]
    for key in history[0]["train"]:
        ax.plot(epochs, [h["train"][key] for h in history], marker="o", label=f"train {key}")
    for key in history[0]["val"]:
        ax.plot(epochs, [h["val"][key] for h in history], ls="--", marker=".", label=f"val {key}")
    ax.set_xlabel("epoch")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(file)
    plt.close(fig)


def write_artifact(
    out: Path,
    model: LatentModel,
    dataset: Dataset,
    history: list[dict[str, Any]],
    card: dict[str, Any],
    overwrite: bool,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Assemble the artifact in a temporary folder, then move it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_model(model, tmp)
        with torch.no_grad():
            images, columns = training_spec(model.family).picture(model, dataset)
        make_grid(images, columns=columns, scale=2).save(tmp / "samples.png")
        if history:
            plot_history(history, tmp / "loss_curve.png")
        (tmp / "history.json").write_text(json.dumps(history, indent=1) + "\n")
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        if extra:
            extra(tmp)
        publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is replaced only with ``overwrite``."""
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


@dataclasses.dataclass
class OpenedArtifact:
    """A trained artifact opened by a command that measures or extends it: the model, its
    card (empty without card.json) and the data set the card names, split as in training."""

    folder: Path
    model: LatentModel
    card: dict[str, Any]
    data: Dataset

    def write_card(self) -> None:
        """Write the card back atomically."""
        file = self.folder / "card.json"
        tmp = file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.card, indent=2) + "\n")
        os.replace(tmp, file)


def add_artifact_arguments(p: argparse.ArgumentParser, example: str) -> None:
    """--model, --dataset and --data-dir: what every command on an artifact takes."""
    p.add_argument("--model", type=Path, required=True, help=f"artifact folder, e.g. {example}")
    p.add_argument("--dataset", help="dataset spec (default: the one named in the model card)")
    p.add_argument(
        "--data-dir", type=Path, default=FASHION_MNIST_DIR, help="Fashion-MNIST IDX folder"
    )


def open_artifact(args: argparse.Namespace) -> OpenedArtifact:
    """Load --model, its card, and its data set: --dataset, else the card's, with the
    validation split and seed the model was trained with (held out from its training)."""
    model = load_model(args.model)
    file = args.model / "card.json"
    card = json.loads(file.read_text()) if file.exists() else {}
    dataset = args.dataset or card.get("dataset", {}).get("name", "fashion-mnist")
    shape = model.image_shape if dataset != "fashion-mnist" else None
    val_size = card.get("dataset", {}).get("val") or 5000
    seed = card.get("training", {}).get("seed") or 0
    data = load_dataset(dataset, shape, args.data_dir, val_size, seed)
    return OpenedArtifact(args.model, model, card, data)
