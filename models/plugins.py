"""Families from other installed packages, through the entry-point group ``latentserve.families``.

A package registers a family in its own metadata::

    [project.entry-points."latentserve.families"]
    my-ae = "my_package.model:MyAutoencoder"    # a models.LatentModel subclass

``load_plugins`` imports each entry (its module may also register the family's training
declaration, training/families.py) and registers the class as ``@register`` would, declaration
checks included. A plugin that fails (an import error, a bad declaration) is recorded by entry
name with its reason, logged, and skipped: the other families, and every model of theirs, load
as before. Plugins run code by design, so only what is installed in this environment is loaded:
no path or name from a request reaches this module.
"""

from __future__ import annotations

import importlib.metadata
import logging

from .base import FAMILIES, LatentModel, register

GROUP = "latentserve.families"
log = logging.getLogger("latentserve.plugins")

#: entry name -> why it could not be loaded (the latest ``load_plugins``)
FAILED: dict[str, str] = {}


def load_plugins() -> dict[str, str]:
    """Load every installed family plugin not loaded yet; returns entry name -> error."""
    failed: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=GROUP):
        try:
            cls = entry.load()
            if not (isinstance(cls, type) and issubclass(cls, LatentModel)):
                raise TypeError(f"{entry.value} is not a models.LatentModel subclass")
            if FAMILIES.get(getattr(cls, "family", "")) is not cls:
                register(cls)
        except Exception as exc:  # a plugin's own bug must not stop the service
            failed[entry.name] = f"{entry.value}: {type(exc).__name__}: {exc}"
            log.error("family plugin %s failed to load: %s", entry.name, failed[entry.name])
    FAILED.clear()
    FAILED.update(failed)
    return failed
