"""A model call exported to ONNX in memory and run by ONNX Runtime.

Why: on the 2-vCPU reference host, a small conv autoencoder at batch 1 took 0.98 ms eager,
0.79 ms as a TorchScript trace and 0.21 ms in ONNX Runtime; a DCGAN generator 17.3 / 15.4 /
6.3 ms (issue 19; ``make bench`` prints the forward cost per engine). ONNX Runtime also runs
without the GIL, as a trace does.

The graph is made at load time from the model in memory (models/onnx_model.py
``export_graph``: the TorchScript-based exporter, dynamic batch axis), never written to disk;
a supervisor that preloads for its workers has a child process export the graphs and hand
them over (``GRAPHS``, handover.py: preloading.py), so that the exporter's modules and garbage
stay out of the memory the workers share. The session has the options of every session
latentserve opens (``session_options``: ``LATENTSERVE_TORCH_THREADS`` intra-op threads, the
same budget as torch's; one inter-op thread; no spinning; no memory arena). ``engines.py``
uses it only after its outputs matched the eager call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from models.onnx_model import export_graph, session_options

from .handover import KeyedHandover
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


#: graphs exported by another process (preloading's child), by call key
GRAPHS: KeyedHandover[bytes] = KeyedHandover()


def onnx_call(
    model: torch.nn.Module, method: str, example: tuple[torch.Tensor, ...], threads: int,
    device: str, key: str | None = None,
) -> Callable[..., Output]:  # fmt: skip
    """``model.<method>`` exported on ``example`` and run by ONNX Runtime. ``key`` names the
    call and its input shapes: a graph handed over under it is used instead of exporting."""
    graph = GRAPHS.take(key) if key else None
    if graph is None:
        graph = export_graph(MethodCall(model, method), example)
        if key:
            GRAPHS.record(key, graph)
    session = session_for(graph, threads, providers_for(device))
    return OnnxCall(session, len(session.get_outputs()))  # type: ignore[attr-defined]
