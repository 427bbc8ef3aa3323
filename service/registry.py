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
from pathlib import Path
from typing import Any

from models import CheckpointError, LatentModel, load_model
from models.conditioning import ConditionalCode

log = logging.getLogger("latentserve.registry")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")

#: Service operations and, for each, the alternative sets of model operations that provide it
#: (a GAN encodes by inversion: models/inversion.py).
SERVICE_OPERATIONS: dict[str, tuple[frozenset[str], ...]] = {
    "encode": (frozenset({"encode"}), frozenset({"invert"})),
    "decode": (frozenset({"decode"}),),
    "reconstruct": (frozenset({"reconstruct"}), frozenset({"invert", "decode"})),
    "denoise": (frozenset({"reconstruct"}),),
    "interpolate": (frozenset({"decode"}),),
    "arithmetic": (frozenset({"decode"}),),
    "generate": (frozenset({"sample"}),),
    "classify": (frozenset({"classify"}),),
}


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

    @functools.cached_property  # asked on every request; the model never changes
    def operations(self) -> list[str]:
        have = self.model.operations
        return sorted(
            op for op, options in SERVICE_OPERATIONS.items() if any(o <= have for o in options)
        )

    @property
    def class_names(self) -> list[str]:
        names = getattr(self.model.config, "class_names", None) or self.card.get("dataset", {}).get(
            "class_names", []
        )
        return list(names)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.model.family,
            "image_shape": list(self.model.image_shape),
            "latent_dim": self.model.latent_dim,
            "operations": self.operations,
            "parameters": self.model.parameter_count(),
            "class_names": self.class_names,
            "conditional": isinstance(self.model, ConditionalCode),
            "metrics": self.card.get("metrics", {}),
            "dataset": self.card.get("dataset", {}).get("name"),
        }


def _mtime(folder: Path) -> float:
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)


class ModelRegistry:
    def __init__(self, weights_dir: Path, names: list[str]) -> None:
        self.weights_dir = weights_dir
        self.configured = list(names)
        self._models: dict[str, LoadedModel] = {}
        self._failed: dict[str, str] = {}
        self._pending: set[str] = set(names)
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
        with self._lock:
            names = self.discover()
            models: dict[str, LoadedModel] = {}
            failed: dict[str, str] = {}
            report: dict[str, Any] = {"loaded": [], "unchanged": [], "failed": {}, "kept_old": []}
            for name in names:
                old = self._models.get(name)
                try:
                    entry = self._load_one(name, old)
                except (CheckpointError, OSError, ValueError) as exc:
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
            self._models, self._failed = models, failed  # the swap: two reference assignments
            self.loaded_once = True
            return report

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
        model = load_model(folder)
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
        return LoadedModel(name, model, card if isinstance(card, dict) else {}, seconds, mtime)
