"""Values one process records by key and another is handed, each taken once by key.

Preloading (preloading.py) compiles every call in a forked child process and hands the
supervisor what the child made: the ONNX graphs it exported (onnx_engine.py) and each call's
engine with the times it was chosen by (engines.py). Each kind is a ``KeyedHandover``: the
child records while ``recording`` runs, the supervisor compiles inside ``given``, and the code
that would export or time asks ``take`` first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyedHandover(Generic[T]):
    def __init__(self) -> None:
        self._given: dict[str, T] = {}
        self._recording: dict[str, T] | None = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[dict[str, T]]:
        """Collects every value ``record``ed meanwhile, by key."""
        recorded: dict[str, T] = {}
        self._recording = recorded
        try:
            yield recorded
        finally:
            self._recording = None

    @contextlib.contextmanager
    def given(self, values: dict[str, T]) -> Iterator[None]:
        """``take`` finds these values (by key) meanwhile; any left over are dropped after."""
        self._given.update(values)
        try:
            yield
        finally:
            self._given.clear()

    def record(self, key: str, value: T) -> None:
        if self._recording is not None:
            self._recording[key] = value

    def take(self, key: str) -> T | None:
        """The value handed over for ``key`` (once), or None."""
        return self._given.pop(key, None)
