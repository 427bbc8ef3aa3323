"""Loading the models, and reloading them in every worker, not just the one that was asked.

With several uvicorn workers, ``POST /v1/admin/reload`` reaches one process. That process
reloads, then writes a new token into a shared signal file; every worker checks the file once
a second and reloads when the token changes. Models whose files did not change are kept as
they are (the registry compares modification times), so the extra reloads cost little.
``python -m service`` creates the file when it starts more than one worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from .state import AppState

log = logging.getLogger("latentserve")
POLL_SECONDS = 1.0


def load_models(state: AppState) -> dict[str, Any]:
    """(Re)load every model in this worker and update the load metrics; the registry's report."""
    report = state.registry.load_all()
    _loaded(state, report)
    return report


async def reload_models(state: AppState) -> dict[str, Any]:
    """Reload without pausing requests: new and changed models load in a thread beside the
    served ones, then their calls are traced (one small batch each, as requests would on
    their first use) while the old versions still serve, and only then are they swapped in.
    No request waits on a load or a trace."""
    staged = await asyncio.to_thread(state.registry.stage)
    try:
        if state.settings.engine != "torch" and staged.fresh():
            await state.operations.warm_up(staged.fresh())
    finally:
        state.registry.commit(staged)
    _loaded(state, staged.report)
    return staged.report


def _loaded(state: AppState, report: dict[str, Any]) -> None:
    for name, lm in state.registry.models.items():
        state.metrics.load_seconds.labels(name).set(lm.load_seconds)
    state.metrics.models_failed.set(len(state.registry.failed))
    log.info("models ready: %s; failed: %s", sorted(state.registry.models),
             list(report["failed"]) or "none")  # fmt: skip


class ReloadSignal:
    """A small file shared by the workers; a new token in it means "reload"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = self._read()

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def send(self) -> None:
        """Ask every worker (this one included, which then finds nothing new) to reload."""
        token = f"{os.getpid()}-{time.time_ns()}"
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text(token)
        tmp.replace(self.path)  # atomic: a reader sees the old token or the new one

    def changed(self) -> bool:
        token = self._read()
        if token == self.seen:
            return False
        self.seen = token
        return True


async def follow(state: AppState, signal: ReloadSignal, interval: float = POLL_SECONDS) -> None:
    """Reload whenever another worker signals; runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        if signal.changed():
            try:
                await reload_models(state)
            except Exception:  # a failed reload must not stop the following ones
                log.exception("reload on signal failed")
