"""Each family's training side, declared in one place: its recipe, evaluator, quality floors,
card headline, default learning rate and the picture its artifact shows.

One module per shipped family (``training/families/vae.py`` ...; the package imports them
all) ends with one
``register_training(TrainingSpec(...))``. A family from another package registers its own the
same way, in a module named by an entry point of the group ``latentserve.training`` (its model
comes through ``latentserve.families``, models/plugins.py; the service never imports the
training side), so ``python -m training train --family NAME`` trains it. ``register_training`` checks the spec
when it is made: the family must exist, the recipe must be a ``Recipe``, a floor must name a
comparison it knows. A missing piece is an error at import, not a KeyError hours later.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from models import FAMILIES, DeclarationError, LatentModel, corrupt
from models.plugins import load_plugins

from .data import Dataset
from .recipes import Recipe
from .scoring import Metrics

if TYPE_CHECKING:
    from .artifacts import OpenedArtifact

Evaluator = Callable[[LatentModel, Dataset, torch.Tensor, argparse.Namespace], Metrics]
#: (metric, ">=" or "<=", a number or "baseline_key+margin")
Floor = tuple[str, str, float | str]


def default_picture(model: LatentModel, dataset: Dataset) -> tuple[torch.Tensor, int]:
    """The images of ``samples.png`` and its columns: samples of a model that generates
    (one row per class for a conditional one), else test images over their reconstructions."""
    g = torch.Generator().manual_seed(0)
    if model.conditional and "generate" in model.operations:
        k = len(model.class_names)
        labels = torch.arange(k).repeat_interleave(8)
        return model.sample(8 * k, g, labels=labels), 8
    if "generate" in model.operations:
        return model.sample(64, generator=g), 8
    test = dataset.test.images[:16].float() / 255
    return torch.cat([test, model.reconstruct(test)]), 16


def denoising_picture(model: LatentModel, dataset: Dataset) -> tuple[torch.Tensor, int]:
    """Clean, noisy (Gaussian, sigma 0.3) and denoised rows."""
    test = dataset.test.images[:16].float() / 255
    noisy = corrupt(test, "gaussian", 0.3, torch.Generator().manual_seed(0))
    return torch.cat([test, noisy, model.reconstruct(noisy)]), 16


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    family: str
    recipe: type[Recipe]
    evaluate: Evaluator
    headline: Callable[[Metrics], str]  # the card's one-line summary of its metrics
    floors: tuple[Floor, ...] = ()  # met by the shipped Fashion-MNIST model
    lr: float = 2e-3
    picture: Callable[[LatentModel, Dataset], tuple[torch.Tensor, int]] = default_picture
    # ``fit-prior`` for a family whose way to generate is its own (the rbm's chain start):
    # (opened artifact, components, seed) -> writes the artifact and its card. None: the
    # autoencoders' latent density, or nothing to fit
    fit_prior: Callable[[OpenedArtifact, int, int], None] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.recipe, type) and issubclass(self.recipe, Recipe)):
            raise DeclarationError(f"{self.family}: recipe must be a training.recipes.Recipe")
        for name in ("evaluate", "headline", "picture"):
            if not callable(getattr(self, name)):
                raise DeclarationError(f"{self.family}: {name} must be callable")
        for metric, op, bound in self.floors:
            if op not in (">=", "<=") or not isinstance(bound, int | float | str):
                raise DeclarationError(f"{self.family}: bad floor {(metric, op, bound)!r}")


SPECS: dict[str, TrainingSpec] = {}


def register_training(spec: TrainingSpec) -> TrainingSpec:
    """Add a family's training declaration; its model family must be registered already."""
    if spec.family not in FAMILIES:
        raise DeclarationError(
            f"training for {spec.family!r}: no such model family; register the model first"
        )
    if SPECS.get(spec.family, spec) is not spec:
        raise DeclarationError(f"training for {spec.family!r} registered twice")
    SPECS[spec.family] = spec
    return spec


TRAINING_GROUP = "latentserve.training"
log = logging.getLogger("latentserve.training")


def load_training_plugins() -> dict[str, str]:
    """Import the installed families, then each ``latentserve.training`` module (which calls
    ``register_training``); entry name -> error for those that failed, also logged."""
    importlib.import_module("training.families")  # the shipped ones (they import this module)
    failed = dict(load_plugins())
    for entry in importlib.metadata.entry_points(group=TRAINING_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a plugin's bug names the plugin, and the others still train
            failed[entry.name] = f"{entry.value}: {type(exc).__name__}: {exc}"
            log.error("training plugin %s failed to load: %s", entry.name, failed[entry.name])
    return failed


def trainable() -> list[str]:
    """Families that can be trained: shipped ones and installed plugins that register one."""
    load_training_plugins()
    return sorted(SPECS)


def training_spec(family: str) -> TrainingSpec:
    if family not in SPECS:
        load_training_plugins()
    if family not in SPECS:
        raise DeclarationError(
            f"family {family!r} has no training declaration; trainable: {', '.join(sorted(SPECS))}"
        )
    return SPECS[family]


def check_floors(spec: TrainingSpec, metrics: Metrics) -> list[dict[str, Any]]:
    """Compare each metric with its floor; a floor like 'pca_psnr+3' is relative to a baseline."""
    results = []
    for metric, op, floor in spec.floors:
        if isinstance(floor, str):
            key, _, plus = floor.partition("+")
            bound = metrics[key] + (float(plus) if plus else 0.0)
        else:
            bound = floor
        value = metrics[metric]  # None: not measurable here (no test image of a class)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        results.append(
            {"metric": metric, "value": value, "floor": f"{op} {bound:.4g}", "met": bool(met)}
        )
    return results
