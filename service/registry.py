"""The set of served models: loaded once at startup, swapped atomically on reload.

A model is a sub-folder of the weights folder. Its name is checked against a strict
pattern before it ever touches the file system, so no name can reach outside that folder.
A model that fails to load is recorded with the reason and the others keep serving; on a
reload, a model whose new files are bad keeps its previous version.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from models import CheckpointError, ConfigError, LatentModel, load_model
from models.anomaly import (
    FEATURES_FILE,
    Calibration,
    FeatureGaussian,
    has_anomaly_score,
    read_calibration,
    read_feature_gaussian,
)
from models.atlas import Atlas, AtlasError, has_atlas, read_atlas, read_thumbnails
from models.plugins import load_plugins

log = logging.getLogger("latentserve.registry")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

#: API operations the service composes from what a model declares (models/operations.py):
#: each needs all of the declared operations listed. A model that declares encode and decode
#: but no reconstruct of its own (a GAN, which encodes by search) reconstructs through its code.
COMPOSED: dict[str, tuple[str, ...]] = {
    "reconstruct": ("encode", "decode"),
    "denoise": ("reconstruct",),
    "interpolate": ("decode",),
    "arithmetic": ("decode",),
    "anomaly": ("likelihood",),  # and an anomaly calibration beside the weights
}


def served_operations(declared: Iterable[str], calibrated: bool = False) -> list[str]:
    """The API operations a model with these declared operations answers; anomaly also needs
    an anomaly calibration beside the weights (``calibrated``)."""
    have = set(declared)
    composed = {op for op, needs in COMPOSED.items() if set(needs) <= have}
    return sorted((have | composed) - (set() if calibrated else {"anomaly"}))


def valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(name)) and ".." not in name


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
    """One served model. Immutable: a reload creates a new one, in-flight requests keep theirs."""

    name: str
    model: LatentModel
    card: dict[str, Any]
    load_seconds: float
    files_mtime: float
    #: scores of held-out images for anomaly percentiles (models/anomaly.py); None: no anomaly
    calibration: Calibration | None = None
    #: the training Gaussian of the model's features, for a calibration that combines parts
    features: FeatureGaussian | None = None
    #: the latent-space atlas (models/atlas.py) and its thumbnail sheet (PNG); None: none
    atlas: Atlas | None = None
    thumbnails: bytes | None = None

    @functools.cached_property  # asked on every request; the model never changes
    def operations(self) -> list[str]:
        return served_operations(self.model.operations, self.calibration is not None)

    @functools.cached_property
    def replies(self) -> dict[str, bytes]:
        """Replies that never change for this loaded model, built once (the atlas's map per
        projection); a reload makes a new LoadedModel, and so new replies."""
        return {}

    def _density(self) -> dict[str, Any] | None:
        """The family's density declaration as the API shows it (not the name of its
        features method, an internal detail)."""
        if self.model.density is None:
            return None
        declared = dataclasses.asdict(self.model.density)
        del declared["features"]
        return declared

    @property
    def class_names(self) -> list[str]:
        """The model's own classes, else those of the data set its card names."""
        return self.model.class_names or list(self.card.get("dataset", {}).get("class_names", []))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.model.family,
            "image_shape": list(self.model.image_shape),
            "latent_dim": self.model.latent_dim,
            "operations": self.operations,
            "inversion": list(self.model.inversion_methods),
            "samplers": list(self.model.sampler_names),
            "chain_samplers": list(self.model.chain_sampler_names),
            "parameters": self.model.parameter_count(),
            "class_names": self.class_names,
            "conditional": self.model.conditional,
            "latent_prior": self.model.latent_prior,
            "density": self._density(),
            "metrics": self.card.get("metrics", {}),
            "dataset": self.card.get("dataset", {}).get("name"),
            "atlas": None if self.atlas is None else {
                "projections": self.atlas.projections,
                "images": len(self.atlas.labels),
                "thumbnails": self.thumbnails is not None,
            },
        }  # fmt: skip


@dataclasses.dataclass
class Staged:
    """Models loaded by ``ModelRegistry.stage`` and not yet serving."""

    models: dict[str, LoadedModel]
    failed: dict[str, str]
    report: dict[str, Any]

    def fresh(self) -> list[LoadedModel]:
        return [self.models[name] for name in self.report["loaded"]]


def _read_anomaly(
    name: str, folder: Path, model: LatentModel
) -> tuple[Calibration | None, FeatureGaussian | None]:
    """The anomaly calibration beside the weights and, for a combined score, the feature
    Gaussian it needs. Anything missing or broken leaves the model serving without anomaly."""
    if not has_anomaly_score(model.density):  # a VAE's likelihood has no code length
        return None, None
    try:
        calibration = read_calibration(folder)
        if calibration is None or "feature_distance" not in calibration.part_names:
            return calibration, None
        method = model.density.features if model.density else None
        if method is None:
            raise ValueError(
                f"its calibration combines feature distances; {model.family} has no features"
            )
        features = read_feature_gaussian(folder)
        if features is None:
            raise ValueError(
                f"its calibration combines feature distances, and {FEATURES_FILE} is missing"
            )
        with torch.inference_mode():
            dims = getattr(model, method)(torch.zeros(1, *model.image_shape)).shape[1]
        if dims != len(features.mean):
            raise ValueError(
                f"{FEATURES_FILE} is over {len(features.mean)} features; the model gives {dims}"
            )
        return calibration, features
    except ValueError as exc:  # the model still serves; only anomaly is missing
        log.warning("%s: no anomaly scores: %s", name, exc)
        return None, None


def _read_atlas(name: str, folder: Path, model: LatentModel) -> tuple[Atlas | None, bytes | None]:
    """The atlas beside the weights of a model that encodes and decodes, and its thumbnails;
    a broken file is logged and the model serves without it."""
    if not has_atlas(model):
        return None, None
    try:
        atlas = read_atlas(folder, model.latent_dim)
        return atlas, read_thumbnails(folder, atlas) if atlas is not None else None
    except AtlasError as exc:
        log.warning("%s: no atlas: %s", name, exc)
        return None, None


def _mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)


class ModelRegistry:
    def __init__(
        self, weights_dir: Path, names: list[str], threads: int = 1,
        preloaded: dict[str, LoadedModel] | None = None,
    ) -> None:  # fmt: skip
        """``preloaded``: models loaded already (preloading.py); each is kept by the first
        load while its files are unchanged, as a reload keeps an unchanged model."""
        self.weights_dir = weights_dir
        self.threads = threads  # ONNX Runtime sessions of users' ONNX models
        self.configured = list(names)
        self._models: dict[str, LoadedModel] = dict(preloaded or {})
        self._failed: dict[str, str] = {}
        self._pending: set[str] = set(names)
        self.plugins_failed: dict[str, str] = {}  # family plugin -> why it did not load
        self._lock = threading.Lock()  # one load or reload at a time
        self.loaded_once = False

    # -- reading (lock-free: the dicts are replaced, never mutated) --
    def get(self, name: str) -> LoadedModel | None:
        return self._models.get(name) if valid_name(name) else None

    @property
    def models(self) -> dict[str, LoadedModel]:
        return self._models

    @property
    def failed(self) -> dict[str, str]:
        return self._failed

    def not_ready(self) -> dict[str, str]:
        """Configured models that are not serving, with the reason."""
        if not self.loaded_once:
            return {name: "loading" for name in self.configured or ["(scanning weights folder)"]}
        out = dict(self._failed)
        for name in self.configured:
            if name not in self._models and name not in out:
                out[name] = "not loaded"
        return out

    # -- loading --
    def discover(self) -> list[str]:
        if self.configured:
            return self.configured
        if not self.weights_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.weights_dir.iterdir()
            if p.is_dir() and (p / "config.json").exists()
        )

    def load_all(self) -> dict[str, Any]:
        """(Re)load every model; keep the old version of any model whose files are bad."""
        staged = self.stage()
        self.commit(staged)
        return staged.report

    def stage(self) -> Staged:
        """Load what is new or changed beside the models being served, which keep serving;
        ``commit`` swaps them in. One stage at a time (a lock, released by ``commit``)."""
        self._lock.acquire()
        try:
            self.plugins_failed = load_plugins()  # newly installed families, after a reload too
            names = self.discover()
            models: dict[str, LoadedModel] = {}
            failed: dict[str, str] = {}
            report: dict[str, Any] = {"loaded": [], "unchanged": [], "failed": {}, "kept_old": [],
                                      "plugins_failed": dict(self.plugins_failed)}  # fmt: skip
            for name in names:
                old = self._models.get(name)
                try:
                    entry = self._load_one(name, old)
                except (CheckpointError, ConfigError, OSError, ValueError) as exc:
                    reason = str(exc).replace(str(self.weights_dir), "<weights>")
                    log.error("model %s failed to load: %s", name, reason)
                    failed[name] = reason
                    report["failed"][name] = reason
                    if old is not None:
                        models[name] = old
                        report["kept_old"].append(name)
                    continue
                models[name] = entry
                report["unchanged" if entry is old else "loaded"].append(name)
        except BaseException:
            self._lock.release()
            raise
        return Staged(models, failed, report)

    def commit(self, staged: Staged) -> None:
        """The swap: two reference assignments; requests already running keep their model."""
        try:
            self._models, self._failed = staged.models, staged.failed
            self.loaded_once = True
        finally:
            self._lock.release()

    def _load_one(self, name: str, old: LoadedModel | None) -> LoadedModel:
        if not valid_name(name):
            raise ValueError(
                f"invalid model name {name!r}: use lowercase letters, digits, '.', '_', '-'"
            )
        folder = self.weights_dir / name
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: no such model folder")
        mtime = _mtime(folder)
        if old is not None and old.files_mtime == mtime:
            return old
        started = time.perf_counter()
        model = load_model(folder, threads=self.threads)
        card_file = folder / "card.json"
        try:
            card = json.loads(card_file.read_text()) if card_file.exists() else {}
        except (OSError, json.JSONDecodeError):
            card = {}
        seconds = time.perf_counter() - started
        log.info(
            "loaded %s (%s, %d parameters) in %.3fs",
            name,
            model.family,
            model.parameter_count(),
            seconds,
        )
        calibration, features = _read_anomaly(name, folder, model)
        atlas, thumbnails = _read_atlas(name, folder, model)
        card = card if isinstance(card, dict) else {}
        return LoadedModel(
            name, model, card, seconds, mtime, calibration, features, atlas, thumbnails
        )
