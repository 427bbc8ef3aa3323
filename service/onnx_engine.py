"""A model call exported to ONNX in memory and run by ONNX Runtime.

Why: on the 2-vCPU reference host, a small conv autoencoder at batch 1 took 0.98 ms eager,
0.79 ms as a TorchScript trace and 0.21 ms in ONNX Runtime; a DCGAN generator 17.3 / 15.4 /
6.3 ms (issue 19; ``make bench`` prints the forward cost per engine). ONNX Runtime also runs
without the GIL, as a trace does.

The graph is made at load time from the model in memory (models/onnx_model.py
``export_graph``: the TorchScript-based exporter, dynamic batch axis), never written to disk and
never read from anywhere else; the session has the options of every session latentserve opens
(``session_options``: ``LATENTSERVE_TORCH_THREADS`` intra-op threads, the same budget as
torch's; one inter-op thread; no spinning; no memory arena). ``engines.py`` uses it only after
its outputs matched the eager call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.onnx_model import export_graph, session_options

from .tracing import MethodCall

log = logging.getLogger("latentserve.engines")
Output = torch.Tensor | tuple[torch.Tensor, ...]


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's execution providers for a device setting (cpu, cuda, auto)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_for(graph: bytes, threads: int, providers: Sequence[str]) -> object:
    import onnxruntime as ort

    session = ort.InferenceSession(graph, session_options(threads), providers=list(providers))
    # ONNX Runtime's Python wrapper keeps the graph's bytes (weights included: as much memory
    # again as the session's own copy; 63 MB for the shipped models' calls) to re-create the
    # session on another provider after a failed run; the engine has checked the session
    # already, so no fallback, and the bytes go
    session.disable_fallback()
    if hasattr(session, "_model_bytes"):
        session._model_bytes = None
    return session


class OnnxCall:
    """Runs an exported call: torch tensor(s) in, torch tensor(s) out, as the eager call."""

    def __init__(self, session: object, n_outputs: int) -> None:
        self.session = session
        self.n_outputs = n_outputs
        self.names = [i.name for i in session.get_inputs()]  # type: ignore[attr-defined]

    def __call__(self, *inputs: torch.Tensor) -> Output:
        feed = {
            name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            for name, x in zip(self.names, inputs, strict=True)
        }
        values = self.session.run(None, feed)  # type: ignore[attr-defined]
        tensors = tuple(torch.from_numpy(v) for v in values)
        return tensors[0] if self.n_outputs == 1 else tensors


def onnx_call(
    model: torch.nn.Module, method: str, example: tuple[torch.Tensor, ...], threads: int,
    device: str,
) -> Callable[..., Output]:  # fmt: skip
    graph, n_out = export_graph(MethodCall(model, method), example)
    return OnnxCall(session_for(graph, threads, providers_for(device)), n_out)
