"""Which engine runs a model call: ONNX Runtime, a TorchScript trace, or eager PyTorch.

``LATENTSERVE_ENGINE``:
- ``auto`` (default): ONNX Runtime if the call exports and its outputs match, else a
  TorchScript trace if that matches, else eager;
- ``onnxruntime``: the same order (a call ONNX cannot take falls back, with a warning);
- ``torchscript``: a trace if it matches, else eager;
- ``torch``: eager, always.

Each call is compiled on its first batch (with ``LATENTSERVE_TRACE_AT_START``, right after
loading: ``Operations.warm_up``), from 16 rows made from that batch (of each input, for a
call of several, such as a search's objective), and is used only after it matched the eager
call within the engine's tolerance on those 16 rows, on 17 rows of other values and on one
row (the guard catches a Python number or branch frozen for one
input, a batch-size path, an exporter's mistake). Tolerances (rtol and atol):
TorchScript 1e-5 (the same kernels); ONNX Runtime 1e-4 (its own kernels sum in another
order: a 784-pixel log-likelihood of -2,000 nats moved by up to 0.02 in tests, 1e-5 of it).
Any error or mismatch logs a warning and moves on to the next engine. Inputs of another shape
than the compiled one run eagerly, so the model's own checks still word the errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .memory import return_freed_memory
from .onnx_engine import onnx_call
from .tracing import assert_same, trace_call

log = logging.getLogger("latentserve.engines")
Output = torch.Tensor | tuple[torch.Tensor, ...]
ENGINE_ORDER = {
    "auto": ("onnxruntime", "torchscript"),
    "onnxruntime": ("onnxruntime", "torchscript"),
    "torchscript": ("torchscript",),
    "torch": (),
}
TOLERANCE = {"onnxruntime": 1e-4, "torchscript": 1e-5}


class EngineCall:
    """``model.<method>`` for the inference thread, compiled on its first call by the first
    engine of the setting's order whose outputs match the eager call.

    ``state``: "pending" until the first batch, then "onnxruntime", "torchscript" or
    "eager". Runs on the engine's single inference thread only, which also compiles."""

    EXAMPLE_ROWS = 16

    def __init__(
        self, model: nn.Module, method: str, label: str, engine: str = "auto",
        threads: int = 1, device: str = "cpu",
    ) -> None:  # fmt: skip
        if engine not in ENGINE_ORDER:
            raise ValueError(f"engine: one of {', '.join(ENGINE_ORDER)}, got {engine!r}")
        self.eager: Callable[..., Output] = getattr(model, method)
        self.model, self.method, self.label = model, method, label
        self.order = ENGINE_ORDER[engine]
        self.threads, self.device = threads, device
        self.state = "pending" if self.order else "eager"
        self.compiled: Callable[..., Any] | None = None
        self._shape: tuple[tuple[int, ...], ...] = ()
        self.failures: dict[str, str] = {}  # engine -> why it was not used

    def __call__(self, *inputs: torch.Tensor) -> Output:
        if self.state == "pending" and len(inputs[0]):
            self.compile(*inputs)
        if self.compiled is not None and _shapes(inputs) == self._shape:
            out: Output = self.compiled(*inputs)
            return out
        return self.eager(*inputs)

    def compile(self, *inputs: torch.Tensor) -> None:
        try:
            self._compile(inputs)
        finally:
            return_freed_memory()  # the exporter's and tracer's garbage (service/memory.py)

    def _compile(self, inputs: tuple[torch.Tensor, ...]) -> None:
        self.state = "eager"  # unless an engine below succeeds
        # Compiled on EXAMPLE_ROWS rows whatever the first batch held: a branch on the batch
        # size is fixed in a trace or a graph, and it should be the one for batches under
        # load (models/blocks.py: ImageConvTranspose2d switches at 3 images of 14x14).
        rows = self.EXAMPLE_ROWS
        example = tuple(x.repeat(-(-rows // len(x)), *([1] * (x.ndim - 1)))[:rows] for x in inputs)
        # other sizes and other values: a Python number computed from the input would be
        # frozen in the compiled call, and would show here
        other = tuple(
            torch.cat([e, x[:1]]).flip(0) * 0.5 + 0.25 for e, x in zip(example, inputs, strict=True)
        )
        one = tuple(x[:1] for x in inputs)
        for engine in self.order:
            try:
                compiled = self._build(engine, example)
                for probe in (example, other, one):
                    assert_same(compiled(*probe), self.eager(*probe), TOLERANCE[engine])
            except Exception as exc:  # anything: the next engine, or the eager call
                self.failures[engine] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.warning("%s: not run by %s (%s)", self.label, engine, self.failures[engine])
                continue
            self.compiled, self._shape, self.state = compiled, _shapes(inputs), engine
            return
        if self.order:
            log.warning("%s stays eager", self.label)

    def _build(self, engine: str, example: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
        if engine == "onnxruntime":
            key = f"{self.label} {_shapes(example)}"  # a graph exported ahead has this key
            return onnx_call(self.model, self.method, example, self.threads, self.device, key)
        traced: Callable[..., Any] = trace_call(self.model, self.method, example)
        return traced


def _shapes(inputs: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    """What a compiled call is fixed to: each input's shape past the batch axis."""
    return tuple(tuple(x.shape[1:]) for x in inputs)
