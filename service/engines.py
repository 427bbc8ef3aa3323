"""Which engine runs a model call: ONNX Runtime, a TorchScript trace, or eager PyTorch.

``LATENTSERVE_ENGINE``:
- ``auto`` (default): the fastest engine whose outputs match: ONNX Runtime if the call
  exports and matches, unless a TorchScript trace that matches runs faster, else eager;
- ``onnxruntime``: ONNX Runtime if it matches, else a trace, else eager (a call ONNX cannot
  take falls back, with a warning);
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

Which is faster (``auto``) is timed on the compile example (16 rows), taking turns, best of
``TIMING_ROUNDS`` runs each (fewer past ``TIMING_BUDGET_S``); another engine replaces the
first of the order only if it takes under ``MARGIN`` (90%) of its time, so calls within 10%
of each other do not change engine from one start to the next with the host's noise. A
trace is made only where the eager call itself takes under ``EAGER_MARGIN`` (95%) of ONNX
Runtime's time: a trace runs the eager call's kernels without the Python between them (at
16 rows a few percent of a shipped call's time), and a trace made only to lose stays in
TorchScript's class registry (a ScriptModule type per trace: tracing every shipped call once
and dropping them all left a process 120 MB larger). Then the trace is timed against ONNX
Runtime too. Where preloading compiles ahead, its child process times and the supervisor
builds the child's choice, untimed (``CHOICES``, handover.py). Measured at 16 rows here (per
image, one thread, trace against ONNX Runtime): ONNX Runtime for the autoencoders, the
classifier, MADE, PixelCNN and the RBM (stacked-ae-fashion reconstruct 67 vs 43 us,
ae-fashion 253 vs 227), the trace for the GAN generators (gan-fashion decode 380 vs 434 us:
ONNX Runtime's transposed convolutions run at 60-75 GFLOP/s, oneDNN's faster);
``python -m bench.engines`` lists every call's choice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypedDict

import torch
from torch import nn

from .handover import KeyedHandover
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
TIMING_ROUNDS = 5
#: timing stops after this many seconds per pair of calls (one round at least): a pixelcnn
#: likelihood of 16 rows takes ~0.13 s
TIMING_BUDGET_S = 0.25
MARGIN = 0.9
#: a trace is tried where the eager call takes under this share of ONNX Runtime's time: a
#: trace saves the Python between the eager call's kernels (under 5% at 16 rows), so beyond
#: it a trace could not reach MARGIN; where it was 1.0, gan-fashion's inversion objective
#: (eager 776 us per image, ONNX Runtime 803) was traced (726) only to lose
EAGER_MARGIN = 0.95


class Choice(TypedDict):
    """The engine a call runs on and the times (us per image) it was chosen by."""

    engine: str
    timings: dict[str, float]


#: what another process chose for a call (preloading's child), by call key: built first and
#: untimed here, so that both processes keep the same engine
CHOICES: KeyedHandover[Choice] = KeyedHandover()


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
        self.fastest = engine == "auto"  # else the first engine of the order that matches
        self.threads, self.device = threads, device
        self.state = "pending" if self.order else "eager"
        self.compiled: Callable[..., Any] | None = None
        self._shape: tuple[tuple[int, ...], ...] = ()
        self.failures: dict[str, str] = {}  # engine -> why it was not used
        self.timings: dict[str, float] = {}  # auto: us per image on the compile example

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
        key = call_key(self.label, example)
        order, fastest = self.order, self.fastest
        elsewhere = CHOICES.take(key)
        if elsewhere is not None and elsewhere["engine"] in order:  # timed there: untimed here
            first = elsewhere["engine"]
            order, fastest = (first, *(e for e in order if e != first)), False
            self.timings = dict(elsewhere["timings"])
        chosen: tuple[str, Callable[..., Any]] | None = None
        for engine in order:
            if chosen is not None and not self._eager_beats(chosen, example):
                break  # a trace of the eager call would not be faster either
            compiled = self._checked(engine, key, (example, other, one))
            if compiled is None:
                continue
            if chosen is None or self._faster((engine, compiled), chosen, example):
                chosen = (engine, compiled)
            if not fastest:
                break
        if chosen is not None:
            CHOICES.record(key, Choice(engine=chosen[0], timings=dict(self.timings)))
        if chosen is None:
            if self.order:
                log.warning("%s stays eager", self.label)
            return
        self.state, self.compiled = chosen
        self._shape = _shapes(inputs)
        if len(self.timings) > 1:
            log.info("%s: %s (us per image at %d rows: %s)", self.label, self.state, rows,
                     ", ".join(f"{k} {v:,.0f}" for k, v in self.timings.items()))  # fmt: skip

    def _checked(
        self, engine: str, key: str, probes: tuple[tuple[torch.Tensor, ...], ...]
    ) -> Callable[..., Any] | None:
        """The call compiled by ``engine`` if its outputs match the eager call's on every
        probe, else None (and why, in ``failures``)."""
        try:
            compiled = self._build(engine, key, probes[0])
            for probe in probes:
                assert_same(compiled(*probe), self.eager(*probe), TOLERANCE[engine])
        except Exception as exc:  # anything: the next engine, or the eager call
            self.failures[engine] = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.warning("%s: not run by %s (%s)", self.label, engine, self.failures[engine])
            return None
        return compiled

    def _eager_beats(
        self, chosen: tuple[str, Callable[..., Any]], example: tuple[torch.Tensor, ...]
    ) -> bool:
        """Whether the eager call runs ``example`` in under ``EAGER_MARGIN`` of the chosen
        engine's time: only then can a trace of it be faster by ``MARGIN``."""
        return self._faster(("eager", self.eager), chosen, example, margin=EAGER_MARGIN)

    def _faster(
        self, a: tuple[str, Callable[..., Any]], b: tuple[str, Callable[..., Any]],
        example: tuple[torch.Tensor, ...], margin: float = MARGIN,
    ) -> bool:  # fmt: skip
        """Whether call ``a`` runs ``example`` in under ``margin`` of call ``b``'s time: best
        of ``TIMING_ROUNDS`` runs each (fewer past ``TIMING_BUDGET_S``), taking turns
        (``timings`` keeps both, per image)."""
        best = {a[0]: float("inf"), b[0]: float("inf")}
        timing_since = time.perf_counter()
        for round_ in range(TIMING_ROUNDS):
            if round_ and time.perf_counter() - timing_since > TIMING_BUDGET_S:
                break
            for name, call in (b, a):
                started = time.perf_counter()
                call(*example)
                best[name] = min(best[name], time.perf_counter() - started)
        for name, seconds in best.items():
            self.timings[name] = seconds / len(example[0]) * 1e6
        return best[a[0]] < margin * best[b[0]]

    def _build(
        self, engine: str, key: str, example: tuple[torch.Tensor, ...]
    ) -> Callable[..., Any]:
        if engine == "onnxruntime":  # a graph exported ahead has the call's key
            return onnx_call(self.model, self.method, example, self.threads, self.device, key)
        traced: Callable[..., Any] = trace_call(self.model, self.method, example)
        return traced


def call_key(label: str, example: tuple[torch.Tensor, ...]) -> str:
    """A compiled call's name across processes: its label and input shapes."""
    return f"{label} {_shapes(example)}"


def _shapes(inputs: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    """What a compiled call is fixed to: each input's shape past the batch axis."""
    return tuple(tuple(x.shape[1:]) for x in inputs)
