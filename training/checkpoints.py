"""Resumable training checkpoints: model, optimizers, epoch and history, without pickle.

Kept apart from the shipped artifact (nanoGPT's habit): the artifact is what the service
loads, the checkpoint is what a crashed or interrupted run continues from. Tensors go into
``state.safetensors``; everything else (optimizer hyperparameters, step counts, history)
into ``state.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import check_state


class ResumeError(ValueError):
    """A checkpoint does not fit the run that tries to resume from it."""


def _split(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in a nested structure into ``tensors``, leaving a reference."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[k, _split(f"{prefix}.{k}", v, tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_split(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _join(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    recipe_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the training state; files are renamed into place so a crash leaves the old one.
    ``recipe_state``: what a recipe keeps between steps besides the model and optimizers (an
    RBM's persistent chains), restored by ``load_checkpoint``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    model_state = _split("model", dict(model.state_dict()), tensors)
    opt_state = {
        name: _split(f"opt.{name}", o.state_dict(), tensors) for name, o in optimizers.items()
    }
    recipe = _split("recipe", dict(recipe_state or {}), tensors)
    doc = {"meta": meta, "model": model_state, "optimizers": opt_state, "recipe": recipe}
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.json.tmp").write_text(json.dumps(doc))
    os.replace(folder / "state.safetensors.tmp", folder / "state.safetensors")
    os.replace(folder / "state.json.tmp", folder / "state.json")


def load_checkpoint(
    folder: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Any]:
    """Restore model and optimizers in place; return the saved ``meta``, with the recipe's
    own state (empty for a checkpoint from before recipes kept one) under ``recipe_state``."""
    try:
        doc = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{folder}: cannot read the training checkpoint ({exc})") from None
    state = _join(doc["model"], tensors)
    try:
        check_state(folder / "state.safetensors", model.state_dict(), state)
    except ValueError as exc:
        raise ResumeError(f"{exc}; was it written by a different model config?") from None
    model.load_state_dict(state)
    if set(doc["optimizers"]) != set(optimizers):
        raise ResumeError(f"{folder}: optimizers {sorted(doc['optimizers'])} do not match this run")
    for name, opt in optimizers.items():
        saved = _join(doc["optimizers"][name], tensors)
        saved["state"] = {int(k): v for k, v in saved["state"].items()}
        opt.load_state_dict(saved)
    recipe_state = _join(doc.get("recipe", {"__dict__": []}), tensors)
    return {**doc["meta"], "recipe_state": recipe_state}
