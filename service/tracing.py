"""TorchScript traces of model calls: one call into C++ per batch instead of ~25.

Why: every torch call on the inference thread gives up the GIL and must take it back, and
under load the event loop holds the GIL about half of the time (py-spy --gil). Beside a
thread that runs Python, the eager ae-fashion reconstruct took 8.3 ms per image at batch
32 instead of 0.27 ms alone; traced, 0.40 ms (0.24 alone). In the service with one worker:
2,150 -> 2,860 req/s (bench/README.md).

``torch.jit.trace`` is deprecated in favour of ``torch.compile`` and ``torch.export``, but
neither gives a call that runs without the GIL unless a C++ compiler builds it at load
time. A trace records one path through the Python code (shape checks, branches and numbers
computed in Python for that input are fixed in it), so engines.py uses one only after it
matched the eager call on several batches, as it does for the ONNX Runtime engine.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

Output = torch.Tensor | tuple[torch.Tensor, ...]


class MethodCall(nn.Module):
    """``model.<method>(*inputs)`` as a module, so the trace keeps the weights as parameters."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *inputs: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(*inputs)


def trace_call(
    model: nn.Module, method: str, example: tuple[torch.Tensor, ...]
) -> torch.jit.ScriptModule:
    """``model.<method>`` traced on the inputs ``example``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks
        return torch.jit.trace(MethodCall(model, method).eval(), example, check_trace=False)


def assert_same(got: Any, expected: Any, tolerance: float) -> None:
    """Every output of ``got`` equals ``expected``'s within ``tolerance`` (rtol and atol:
    ``|got - expected| <= atol + rtol |expected|``, NaN where both are), in shape and dtype.

    Not ``torch.testing.assert_close``: it imports torch.distributed.tensor and with it
    sympy, 40 MB of every worker's memory for one comparison."""
    got_t = got if isinstance(got, tuple) else (got,)
    expected_t = expected if isinstance(expected, tuple) else (expected,)
    if len(got_t) != len(expected_t):
        raise AssertionError(f"{len(got_t)} outputs compiled, {len(expected_t)} eager")
    for i, (g, e) in enumerate(zip(got_t, expected_t, strict=True)):
        if g.shape != e.shape or g.dtype != e.dtype:
            raise AssertionError(
                f"output {i}: {g.dtype} {list(g.shape)} compiled, {e.dtype} {list(e.shape)} eager"
            )
        close = torch.isclose(g, e, rtol=tolerance, atol=tolerance, equal_nan=True)
        if not bool(close.all()):
            worst = float((g - e)[~close].abs().nan_to_num(float("inf")).max())  # NaN: inf
            raise AssertionError(
                f"output {i}: {int((~close).sum())} of {close.numel()} values differ by more "
                f"than the tolerance {tolerance:g} (largest difference {worst:.3g})"
            )
