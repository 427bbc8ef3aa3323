"""A model call exported to ONNX in memory and run by ONNX Runtime.

Why: on the 2-vCPU reference host, a small conv autoencoder at batch 1 took 0.98 ms eager,
0.79 ms as a TorchScript trace and 0.21 ms in ONNX Runtime; a DCGAN generator 17.3 / 15.4 /
6.3 ms (issue 19; ``make bench`` prints the forward cost per engine). ONNX Runtime also runs
without the GIL, as a trace does.

The graph is made at load time from the model in memory (``torch.onnx.export``, dynamic batch
axis), never written to disk and never read from anywhere else. It is the TorchScript-based
exporter (``dynamo=False``, deprecated since torch 2.9 but still shipped in 2.13): the
torch.export-based one needs the onnxscript package and took seconds per call where this takes
a tenth of one, and every graph is checked against the eager call before it serves anyway. The
session gets deliberate settings: ``LATENTSERVE_TORCH_THREADS`` intra-op threads (the same
budget as torch's), one inter-op thread, no spinning (idle threads must not take the cores the
event loop and the other lane need), no memory arena (below). ``engines.py`` uses it only after its outputs
matched the eager call.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .tracing import MethodCall

log = logging.getLogger("latentserve.engines")
OPSET = 17
#: the exporter keeps module-level state (the opset, "exporting now"); each lane's inference
#: thread compiles its own calls, so two exports could otherwise overlap
EXPORT_LOCK = threading.Lock()
Output = torch.Tensor | tuple[torch.Tensor, ...]


def providers_for(device: str) -> list[str]:
    """ONNX Runtime's execution providers for a device setting (cpu, cuda, auto)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def export_graph(model: torch.nn.Module, method: str, example: torch.Tensor) -> tuple[bytes, int]:
    """``model.<method>`` on inputs like ``example`` -> (an ONNX graph, its number of outputs);
    the batch axis (0) of the input and of every output is dynamic."""
    call = MethodCall(model, method).eval()
    # outside inference mode: the exporter takes an inference tensor for a constant, and the
    # graph then has no input at all (the engines run in inference mode)
    with torch.inference_mode(False), torch.no_grad():
        example = example.clone()
        produced = call(example)
    n_out = len(produced) if isinstance(produced, tuple) else 1
    outputs = [f"y{i}" for i in range(n_out)]
    buffer = io.BytesIO()
    with EXPORT_LOCK, warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on traced Python values
        torch.onnx.export(
            call, (example,), buffer,  # type: ignore[arg-type]  # a file object works
            dynamo=False, opset_version=OPSET,
            input_names=["x"], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["x", *outputs]},
        )  # fmt: skip
    return buffer.getvalue(), n_out


def session_for(graph: bytes, threads: int, providers: Sequence[str]) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory arena: an arena keeps each session's peak (a batch of 64) for good. Measured
    # in one process holding all 34 calls of the shipped models after a batch of 64 each:
    # 1,018 MB RSS with arenas, 685 MB without (eager PyTorch 604, TorchScript traces 788), for
    # 10-30% more time per image (still less than a trace's: ae-fashion reconstruct 168 vs
    # 182 us at batch 64, 265 vs 497 us at batch 1).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: shape notes would flood the log
    return ort.InferenceSession(graph, options, providers=list(providers))


class OnnxCall:
    """Runs an exported call: torch tensor in, torch tensor(s) out, as the eager call."""

    def __init__(self, session: object, n_outputs: int) -> None:
        self.session = session
        self.n_outputs = n_outputs

    def __call__(self, x: torch.Tensor) -> Output:
        feed = {"x": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)}
        values = self.session.run(None, feed)  # type: ignore[attr-defined]
        tensors = tuple(torch.from_numpy(v) for v in values)
        return tensors[0] if self.n_outputs == 1 else tensors


def onnx_call(
    model: torch.nn.Module, method: str, example: torch.Tensor, threads: int, device: str
) -> Callable[[torch.Tensor], Output]:
    graph, n_out = export_graph(model, method, example)
    return OnnxCall(session_for(graph, threads, providers_for(device)), n_out)
