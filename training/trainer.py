"""The training loop: epochs with a live progress bar, validation, checkpoints, artifact."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import FAMILIES, CheckpointError, ConfigError, LatentModel, build_model, load_model
from models.checkpoint import WEIGHTS_FILE, check_state

from .artifacts import hardware, write_artifact
from .checkpoints import load_checkpoint, save_checkpoint
from .data import Dataset, Split, batches, load_dataset
from .distributed import World, join_world
from .families import training_spec
from .recipes import Recipe, cosine_factor


def model_config(args: argparse.Namespace, dataset: Dataset) -> dict[str, Any]:
    """The family's config fields, taken from the flags that were given."""
    fields = {f.name for f in dataclasses.fields(FAMILIES[args.family].config_class)}
    config: dict[str, Any] = {"image_shape": dataset.image_shape}
    for name in fields - {"image_shape", "class_names"}:
        value = getattr(args, name, None)
        if value is not None:
            config[name] = value
    if "class_names" in fields:
        config["class_names"] = dataset.class_names
    if "label_classes" in fields:  # a family that may learn from labels without taking them
        config["label_classes"] = len(dataset.class_names)
    return config


def initial_model(args: argparse.Namespace, dataset: Dataset) -> LatentModel:
    """Load ``--init-from`` for fine-tuning. Flags may change how it trains (noise mix,
    sparsity weight, beta), not its architecture: the weights must still fit."""
    base = load_model(args.init_from)
    if base.family != args.family:
        raise ConfigError(
            f"--init-from {args.init_from} holds a {base.family!r} model, not {args.family!r}"
        )
    if tuple(base.image_shape) != tuple(dataset.image_shape):
        raise ConfigError(
            f"--init-from {args.init_from} takes images {list(base.image_shape)}, "
            f"the dataset gives {list(dataset.image_shape)}"
        )
    config = dataclasses.asdict(base.config)
    given = {k: v for k, v in model_config(args, dataset).items() if k != "class_names"}
    changed = {k: v for k, v in given.items() if _plain(v) != _plain(config[k])}
    try:
        model = build_model(args.family, config | changed)
        check_state(args.init_from / WEIGHTS_FILE, model.state_dict(), base.state_dict())
    except (ConfigError, CheckpointError) as exc:
        flags = ", ".join(f"--{k.replace('_', '-')} ({v})" for k, v in changed.items())
        raise ConfigError(
            f"{flags} changes the architecture of --init-from {args.init_from}: {exc}; "
            "drop the flag or train from scratch"
        ) from None
    model.load_state_dict(base.state_dict())
    return model.train()


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def training_device(name: str) -> torch.device:
    """``--device``: cpu; cuda (the process's own GPU under torchrun, LOCAL_RANK); auto, cuda
    where torch sees a GPU, else cpu. Asking for cuda where there is none is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ConfigError(f"--device must be auto, cpu or cuda, got {name!r}")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        raise ConfigError(
            f"--device cuda, but torch {torch.__version__} has {build} here; "
            "use --device cpu (or auto)"
        )
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    return device


@torch.no_grad()
def evaluate_split(recipe: Recipe, split: Split, batch_size: int = 500) -> dict[str, float]:
    """Average the recipe's per-image metrics over a whole split (on the model's device)."""
    recipe.model.eval()
    device = recipe.device
    sums: dict[str, float] = {}
    for x, y in batches(split, batch_size):
        x, y = x.to(device), y.to(device)
        for key, value in recipe.evaluate_batch(x, y).items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: value / len(split) for key, value in sums.items()}


def train(args: argparse.Namespace) -> Path:
    """Run one training job end to end and return the artifact folder.

    Under ``torchrun`` every process runs this; see ``distributed.py`` for the split of work.
    """
    device = training_device(args.device)
    world = join_world(device)
    try:
        return _train(args, world, device)
    finally:
        world.close()


def _train(args: argparse.Namespace, world: World, device: torch.device) -> Path:
    if args.batch_size % world.size:
        raise ConfigError(
            f"--batch-size {args.batch_size} is the global batch and must divide evenly "
            f"among the {world.size} processes"
        )
    torch.manual_seed(args.seed)  # same initial weights on every rank
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    dataset = load_dataset(args.dataset, args.image_shape, args.data_dir, args.val_size, args.seed)
    if args.init_from is not None:
        model = initial_model(args, dataset)
    else:
        model = build_model(args.family, model_config(args, dataset))
    model.to(device)  # before the optimizers are built over its parameters
    recipe = training_spec(args.family).recipe(model, args)
    recipe.world = world
    for opt in recipe.optimizers.values():
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    ckpt = args.checkpoint_dir or Path("runs") / args.out.name
    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    if args.resume and (ckpt / "state.json").exists():
        # Every rank reads the same checkpoint, whatever the number of ranks that wrote it:
        # the state holds no per-rank part (see distributed.py).
        meta = load_checkpoint(ckpt, model, recipe.optimizers)
        start_epoch, history, elapsed = meta["epoch"], meta["history"], meta["elapsed"]
        recipe.load_state(meta["recipe_state"])
        if world.is_main:
            tqdm.write(f"resumed from {ckpt} after epoch {start_epoch}")
    recipe.begin(dataset.train, resumed=bool(args.resume and start_epoch))
    recipe.forward = world.wrap(model)  # after loading: DDP starts from rank 0's weights
    if (
        not (args.resume and start_epoch)
        and args.pretrain_epochs
        and hasattr(recipe, "pretrain_step")
    ):
        started = time.perf_counter()
        model.train()
        recipe.pretrain(dataset.train, torch.Generator().manual_seed(args.seed))
        elapsed += time.perf_counter() - started

    steps = len(dataset.train) // args.batch_size or 1
    if args.steps_per_epoch:
        steps = min(steps, args.steps_per_epoch)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        train_stats = run_epoch(recipe, dataset.train, args, epoch, steps)
        if world.is_main:
            val = evaluate_split(recipe, dataset.val)
            seconds = time.perf_counter() - started
            elapsed += seconds
            history.append(
                {"epoch": epoch + 1, "train": train_stats, "val": val, "seconds": seconds}
            )
            summary = " ".join(f"{k}={v:.4g}" for k, v in val.items())
            tqdm.write(f"epoch {epoch + 1}/{args.epochs}: val {summary} ({seconds:.1f}s)")
            meta = {
                "epoch": epoch + 1,
                "history": history,
                "elapsed": elapsed,
                "processes": world.size,
                "args": _jsonable(args),
            }
            save_checkpoint(ckpt, model, recipe.optimizers, meta, recipe.state())
        world.barrier()

    model.eval()
    out = args.out
    gap = world.check_in_sync(model)
    model.to("cpu")  # what follows (fitted densities, AIS, the artifact) runs on the CPU
    if world.is_main:
        if world.size > 1:
            tqdm.write(f"ddp: the {world.size} replicas agree (max parameter difference {gap:.2g})")
        started = time.perf_counter()
        recipe.finish(dataset.train)
        elapsed += time.perf_counter() - started
        card = model_card(args, model, dataset, history, elapsed, steps, world, device)
        out = write_artifact(args.out, model, dataset, history, card, args.overwrite)
        tqdm.write(f"wrote {out} ({elapsed:.0f}s of training)")
    world.barrier()
    return out


def run_epoch(
    recipe: Recipe,
    split: Split,
    args: argparse.Namespace,
    epoch: int,
    steps: int,
) -> dict[str, float]:
    """One pass over the training split; returns the mean of each number the recipe reports
    (rank 0's, under torchrun)."""
    world, device = recipe.world, recipe.device
    recipe.model.train()
    generator = torch.Generator().manual_seed(args.seed * 10_000 + epoch)  # resumable order
    # Rank 0 on the CPU draws its noise (corruption, latents) from the data-order generator,
    # as one process does; the other ranks from their own streams, so no two ranks add the
    # same noise. On a GPU the noise is drawn there, from a generator of its own.
    noise = generator
    if world.rank or device.type != "cpu":
        seed = (args.seed * 10_000 + epoch) * 1_000 + world.rank
        noise = torch.Generator(device).manual_seed(seed)
    totals: dict[str, float] = {}
    bar = tqdm(
        batches(split, args.batch_size, generator, drop_last=True, shard=world.shard),
        total=steps,
        desc=f"epoch {epoch + 1}/{args.epochs}",
        leave=False,
        mininterval=1.0,
        disable=not world.is_main,
    )
    done = 0
    for step, (x, y) in enumerate(bar):
        factor = cosine_factor(epoch * steps + step, args.epochs * steps, warmup=min(100, steps))
        for opt in recipe.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * factor
        stats = recipe.train_step(x.to(device), y.to(device), noise)
        if not all(math.isfinite(v) for v in stats.values()):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} step {step}: {stats}")
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
        done = step + 1
        bar.set_postfix({k: f"{v / done:.4g}" for k, v in totals.items()}, refresh=False)
        if done >= steps:
            break
    bar.close()
    return {key: value / max(done, 1) for key, value in totals.items()}


def model_card(
    args: argparse.Namespace,
    model: LatentModel,
    dataset: Dataset,
    history: list[dict[str, Any]],
    elapsed: float,
    steps: int,
    world: World | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    images_seen = args.epochs * steps * args.batch_size
    card: dict[str, Any] = {
        "name": args.out.name,
        "family": model.family,
        "parameters": model.parameter_count(),
        "image_shape": list(model.image_shape),
        "latent_dim": model.latent_dim,
        "dataset": {
            "name": dataset.name,
            "class_names": list(dataset.class_names),
            "train": len(dataset.train),
            "val": len(dataset.val),
            "test": len(dataset.test),
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "wall_time_s": round(elapsed, 1),
            "images_per_s": round(images_seen / elapsed, 1) if elapsed else None,
            "hardware": hardware(device),
            "processes": (world or World()).size,
            "command": "python -m training " + shlex.join(args.argv),
            "init_from": str(args.init_from) if args.init_from else None,
            "final_val": history[-1]["val"] if history else {},
        },
        "metrics": {},
    }
    if args.init_from is not None:
        card["training"].update(stage_history(args.init_from, card["training"]))
    return card


def stage_history(init_from: Path, run: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuned artifact's card lists every stage that made it: the stages of the
    ``--init-from`` artifact's card (or that card's own run, as stage 1), then this run."""
    try:
        base = json.loads((init_from / "card.json").read_text()).get("training", {})
    except (OSError, ValueError, AttributeError):
        return {}  # an artifact without a readable card: only this run is known
    keys = ("command", "epochs", "wall_time_s", "hardware")
    stages = base.get("stages") or [{"stage": 1, **{k: base.get(k) for k in keys}}]
    stages = [*stages, {"stage": len(stages) + 1, **{k: run[k] for k in keys}}]
    return {
        "stages": stages,
        "total_epochs": sum(s.get("epochs") or 0 for s in stages),
        "total_wall_time_s": round(sum(s.get("wall_time_s") or 0 for s in stages), 1),
    }


def _jsonable(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
