"""Model calls run as TorchScript traces: one call into C++ per batch instead of ~25.

Why: every torch call on the inference thread gives up the GIL and must take it back, and
under load the event loop holds the GIL about half of the time (py-spy --gil). Beside a
thread that runs Python, the eager ae-fashion reconstruct took 8.3 ms per image at batch
32 instead of 0.27 ms alone; traced, 0.40 ms (0.24 alone). In the service with one worker:
2,150 -> 2,860 req/s (bench/README.md).

``torch.jit.trace`` is deprecated in favour of ``torch.compile`` and ``torch.export``, but
neither gives a call that runs without the GIL unless a C++ compiler builds it at load
time. So a trace is used only where it is proven. Each model call is traced on its first
batch (with ``LATENTSERVE_TRACE_AT_START``, the service sends one per call once the
models are loaded: ``Operations.warm_up``), on 16 rows made from that batch, and the
trace must match the eager call on those rows, on 17 rows of other values and on one row:
a trace records one path through the Python code, and shape checks, branches and numbers
computed in Python for that input are fixed in it. Any error or mismatch logs a warning
and leaves that call eager for good. Inputs of another shape than the traced one always
run eagerly, so the model's own checks still word the errors.
``LATENTSERVE_TORCHSCRIPT=false`` turns it off.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger("latentserve.tracing")
Output = torch.Tensor | tuple[torch.Tensor, ...]


class _MethodCall(nn.Module):
    """``model.<method>(x)`` as a module, so the trace keeps the weights as parameters."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(x)


class TracedCall:
    """``model.<method>``, traced on its first call and checked against the eager call.

    Runs on the engine's single inference thread only, which also does the tracing.
    """

    TRACE_ROWS = 16

    def __init__(self, model: nn.Module, method: str, label: str, enabled: bool = True) -> None:
        self.eager: Callable[[torch.Tensor], Output] = getattr(model, method)
        self.model, self.method, self.label = model, method, label
        self.state = "untraced" if enabled else "eager"  # -> "traced" or "eager"
        self._traced: torch.jit.ScriptModule | None = None
        self._shape: tuple[int, ...] = ()

    def __call__(self, x: torch.Tensor) -> Output:
        if self.state == "untraced" and len(x):
            self._trace(x)
        if self._traced is not None and tuple(x.shape[1:]) == self._shape:
            out: Output = self._traced(x)
            return out
        return self.eager(x)

    def _trace(self, x: torch.Tensor) -> None:
        self.state = "eager"  # unless everything below succeeds
        # Traced on TRACE_ROWS rows whatever the first batch held: a branch on the batch
        # size is fixed in the trace, and it should be the one for batches under load
        # (models/blocks.py: ImageConvTranspose2d switches at 3 images of 14x14).
        example = x.repeat(-(-self.TRACE_ROWS // len(x)), *([1] * (x.ndim - 1)))[: self.TRACE_ROWS]
        # other sizes and other values: a Python number computed from the input would be
        # frozen in the trace, and would show here
        other = torch.cat([example, x[:1]]).flip(0) * 0.5 + 0.25
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks
                traced = torch.jit.trace(
                    _MethodCall(self.model, self.method).eval(), example, check_trace=False
                )
            for probe in (example, other, x[:1]):
                _assert_same(traced(probe), self.eager(probe))
        except Exception as exc:  # anything: the eager call stays
            log.warning("%s stays eager: tracing it failed (%s)", self.label, exc)
            return
        self._traced, self._shape, self.state = traced, tuple(x.shape[1:]), "traced"


def _assert_same(got: Any, expected: Any) -> None:
    got_t = got if isinstance(got, tuple) else (got,)
    expected_t = expected if isinstance(expected, tuple) else (expected,)
    if len(got_t) != len(expected_t):
        raise AssertionError(f"{len(got_t)} outputs traced, {len(expected_t)} eager")
    for g, e in zip(got_t, expected_t, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, equal_nan=True)
