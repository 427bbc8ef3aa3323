"""The shipped families' training declarations, one module each (training/declaration.py
says what a declaration holds). Importing this package imports every module in it, and each
registers its family's declaration: a new module here needs no edit anywhere else."""

import importlib
import pkgutil

from ..declaration import SPECS, check_floors, register_training, trainable, training_spec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SPECS", "check_floors", "register_training", "trainable", "training_spec"]
