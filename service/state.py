"""The state one app instance shares between its routes, its loader and its reload follower."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .batching import BatchEngine
from .config import Settings
from .inference import Operations
from .metrics import Metrics
from .registry import ModelRegistry

if TYPE_CHECKING:
    from .reloading import ReloadSignal


@dataclasses.dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    engine: BatchEngine
    operations: Operations
    metrics: Metrics
    reload_signal: ReloadSignal | None = None  # shared by the workers (reloading.py)
    #: False while LATENTSERVE_TRACE_AT_START compiles the calls: readiness waits for it
    warmed: bool = True
