"""Users' own models as ONNX graphs: a folder of ``config.json`` (the manifest) and ``.onnx``
files, served with every operation its graphs allow. ONNX files are data (a protobuf graph),
not code: nothing is unpickled and no custom-op library is ever loaded.

The manifest (``config.json``)::

    {"format": 1, "family": "onnx", "config": {
        "image_shape": [1, 28, 28], "latent_dim": 16,
        "encoder": "encoder.onnx",        # image [B, C, H, W] in [0, 1] -> latent [B, K]
        "decoder": "decoder.onnx",        # latent [B, K] -> image [B, C, H, W] in [0, 1]
        "prior": "normal",                # optional: generate decodes z ~ N(0, I)
        "class_names": ["t-shirt", ...]}} # optional

A decoder with ``"prior": "normal"`` (a GAN's generator, a VAE's decoder) generates; an encoder
and a decoder reconstruct, and so interpolate, do arithmetic and denoise; a decoder alone
decodes, interpolates and does arithmetic on latents. ``python -m training export --format
onnx`` writes such a folder from any shipped artifact.

Checks before an ONNX Runtime session is created (``CheckpointError`` with the reason: the
service keeps that model not ready and serves the others): the file is inside the folder and
at most ``MAX_GRAPH_BYTES``; it parses as an ONNX model; every operator is in the standard
domains (no custom ops); external tensor data, if any, lies inside the folder; the graph has
one input and at least one output, of the ranks and sizes the manifest says (the batch axis
may be symbolic). Then one row is run through each graph and its output shape checked.
"""

from __future__ import annotations

import dataclasses
import io
import math
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .base import ConfigError, LatentModel, ModelConfig, check_code_shape, check_images
from .operations import Op

FAMILY = "onnx"
MAX_GRAPH_BYTES = 512 * 1024 * 1024
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
PRIORS = ("normal",)
OPSET = 17
EXPORT_LOCK = threading.Lock()  # see export_graph


class GraphError(ValueError):
    """A graph or the manifest is unusable; the message says which file and why."""


@dataclasses.dataclass
class OnnxConfig(ModelConfig):
    encoder: str | None = None
    decoder: str | None = None
    prior: str | None = None
    class_names: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder is None and self.decoder is None:
            raise ConfigError("an ONNX manifest names an encoder, a decoder, or both")
        if self.prior is not None and self.prior not in PRIORS:
            raise ConfigError(f"prior: one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.prior is not None and self.decoder is None:
            raise ConfigError("prior: generation decodes the prior's codes, so it needs a decoder")
        for role in ("encoder", "decoder"):
            name = getattr(self, role)
            if name is not None and (
                not isinstance(name, str) or Path(name).name != name or not name.endswith(".onnx")
            ):
                raise ConfigError(
                    f"{role}: a file name in the folder ending in .onnx, got {name!r}"
                )


class OnnxModel(LatentModel):
    """A model whose calls are ONNX Runtime sessions; see the module docstring."""

    family: ClassVar[str] = FAMILY
    config_class: ClassVar[type[ModelConfig]] = OnnxConfig
    # every call is already a graph: never exported or traced again (trace=False)
    operations: ClassVar[dict[str, Op]] = {
        "encode": Op("encode", trace=False),
        "decode": Op("decode", trace=False),
        "reconstruct": Op("reconstruct", trace=False),
        "generate": Op("decode", prepare="sample_latent", trace=False),
    }
    config: OnnxConfig

    def __init__(self, config: OnnxConfig, sessions: dict[str, Any]) -> None:
        super().__init__(config)
        self.sessions = sessions  # role -> onnxruntime.InferenceSession
        ops = {}
        if "encoder" in sessions:
            ops["encode"] = self.operations["encode"]
        if "decoder" in sessions:
            ops["decode"] = self.operations["decode"]
            if config.prior is not None:
                ops["generate"] = self.operations["generate"]
        if len(sessions) == 2:
            ops["reconstruct"] = self.operations["reconstruct"]
        self.__dict__["operations"] = ops  # this instance's declaration (see LatentModel)
        self.__dict__["latent_prior"] = config.prior

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    def _run(self, role: str, x: torch.Tensor) -> torch.Tensor:
        session = self.sessions[role]
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}  # fmt: skip
        return torch.from_numpy(np.asarray(session.run(None, feed)[0], dtype=np.float32))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> latent [B, K]."""
        if "encoder" not in self.sessions:
            raise self._unsupported("encode")
        check_images(self, x)
        return self._run("encoder", x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent [B, K] -> images [B, C, H, W], clamped to [0, 1]."""
        if "decoder" not in self.sessions:
            raise self._unsupported("decode")
        check_code_shape(self, z)
        return self._run("decoder", z).clamp(0, 1)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def sample_latent(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """z ~ N(0, temperature^2 I): [n, K]."""
        if "generate" not in self.operations:
            raise self._unsupported("generate")
        self.check_draw(n, labels)
        return torch.randn(n, self.latent_dim, generator=generator) * temperature


def load_onnx_model(folder: Path, config: dict[str, Any], threads: int = 1) -> OnnxModel:
    """The manifest's graphs checked, opened and probed -> the model. GraphError says why not."""
    try:
        cfg = OnnxConfig.from_dict(config)
    except (ConfigError, TypeError) as exc:
        raise GraphError(f"{folder / 'config.json'}: {exc}") from None
    assert isinstance(cfg, OnnxConfig)
    c, h, w = cfg.image_shape
    k = cfg.latent_dim
    shapes = {"encoder": ([c, h, w], [k]), "decoder": ([k], [c, h, w])}
    sessions = {}
    for role in ("encoder", "decoder"):
        name = getattr(cfg, role)
        if name is None:
            continue
        inner, outer = shapes[role]
        graph = check_graph(folder, name, inner, outer)
        session = open_session(graph, threads)
        probe = np.zeros((1, *inner), np.float32)
        try:
            out = session.run(None, {session.get_inputs()[0].name: probe})[0]
        except Exception as exc:
            raise GraphError(f"{name}: running one row failed: {str(exc)[:300]}") from None
        if list(np.shape(out)) != [1, *outer]:
            raise GraphError(f"{name}: one row gave shape {list(np.shape(out))}, the manifest says {[1, *outer]}")  # fmt: skip
        sessions[role] = session
    return OnnxModel(cfg, sessions)


def check_graph(folder: Path, name: str, inner: list[int], outer: list[int]) -> Path:
    """The graph file's path, after every check that needs no session."""
    import onnx

    path = (folder / name).resolve()
    if folder.resolve() not in path.parents:
        raise GraphError(f"{name}: outside the model's folder")
    if not path.is_file():
        raise GraphError(f"{name}: missing (the manifest names it)")
    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise GraphError(f"{name}: {size} bytes, more than {MAX_GRAPH_BYTES} allowed")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:
        raise GraphError(f"{name}: not an ONNX model ({str(exc)[:200]})") from None
    domains = {o.domain for o in proto.opset_import} | {n.domain for n in proto.graph.node}
    custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if custom or proto.functions:
        raise GraphError(f"{name}: custom operator domains {custom or '(local functions)'}; only standard ONNX operators are served")  # fmt: skip
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = {e.key: e.value for e in tensor.external_data}.get("location", "")
            target = (folder / where).resolve()
            if folder.resolve() not in target.parents or not target.is_file():
                raise GraphError(f"{name}: external data {where!r} is not a file inside the folder")
    graph_inputs = [
        i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}
    ]
    if len(graph_inputs) != 1 or not proto.graph.output:
        raise GraphError(f"{name}: needs exactly one input and an output, has {len(graph_inputs)} inputs")  # fmt: skip
    for what, value, want in (
        ("input", graph_inputs[0], inner),
        ("output", proto.graph.output[0], outer),
    ):
        dims = [
            d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim
        ]
        fixed = dims[1:]
        if len(dims) != len(want) + 1 or any(
            d is not None and d != e for d, e in zip(fixed, want, strict=True)
        ):
            raise GraphError(f"{name}: {what} {value.name!r} has shape {['?' if d is None else d for d in dims]}, the manifest needs [B, {', '.join(map(str, want))}]")  # fmt: skip
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise GraphError(f"{name}: {what} {value.name!r} must be float32")
    if math.prod(inner) > 1 << 24:
        raise GraphError(f"{name}: inputs of {math.prod(inner)} values per row are too large")
    return path


def open_session(graph: Path, threads: int) -> Any:
    """A CPU session (external data resolves next to the file)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])  # fmt: skip


def session_options(threads: int) -> Any:
    """The options of every ONNX Runtime session latentserve opens (users' graphs here, the
    service's exported calls in service/onnx_engine.py): ``threads`` intra-op threads, one
    inter-op thread, no spinning (idle threads must not take the cores the event loop and
    the other lane need), no memory arena.

    No arena: an arena keeps each session's peak (a batch of 64) for good. Measured in one
    process holding all 34 calls of the shipped models after a batch of 64 each: 1,018 MB
    RSS with arenas, 685 MB without (eager PyTorch 604, TorchScript traces 788), for 10-30%
    more time per image (still less than a trace's: ae-fashion reconstruct 168 vs 182 us at
    batch 64, 265 vs 497 us at batch 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # errors only: shape notes would flood the log
    return options


def export_graph(
    module: torch.nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...]
) -> bytes:
    """``module`` on inputs like ``example`` (one tensor, or a tuple for a module of several
    inputs) -> an ONNX graph: input ``x`` (``x0``, ``x1``, ... for several), outputs ``y0``,
    ``y1``, ... (one run of the module counts them), the batch axis (0) of each dynamic.

    The TorchScript-based exporter (``dynamo=False``, deprecated since torch 2.9 but still
    shipped in 2.13): the torch.export-based one needs the onnxscript package and took seconds
    per call where this takes a tenth of one. One export at a time: the exporter keeps
    module-level state (the opset, "exporting now"), and each of the service's lanes compiles
    its own calls on its own thread."""
    module = module.eval()
    # outside inference mode: the exporter takes an inference tensor for a constant, and the
    # graph then has no input at all (the service's engines run in inference mode)
    examples = example if isinstance(example, tuple) else (example,)
    with torch.inference_mode(False), torch.no_grad():
        examples = tuple(x.clone() for x in examples)
        produced = module(*examples)
    n_out = len(produced) if isinstance(produced, tuple) else 1
    inputs = ["x"] if len(examples) == 1 else [f"x{i}" for i in range(len(examples))]
    outputs = [f"y{i}" for i in range(n_out)]
    buffer = io.BytesIO()
    with EXPORT_LOCK, warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on traced Python values
        torch.onnx.export(
            module, examples, buffer,  # type: ignore[arg-type]  # a file object works
            dynamo=False, opset_version=OPSET,
            input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
        )  # fmt: skip
    return buffer.getvalue()
