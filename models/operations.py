"""What a family can do, declared in one place: the API operation -> the model method.

Every family class has ``operations: dict[str, Op]``, keyed by the operation names of the REST
API (``OPERATIONS``). The service never asks a model's class what it is; it reads this map,
calls the declared method, and wraps what comes back in the operation's typed output (the
diffusers habit): ``encode`` gives an ``EncodeOutput`` with ``latent`` and, where the family
has them, ``mean``/``log_var`` (a VAE's posterior) or ``reconstruction_error`` (a search such
as GAN inversion); ``decode``, ``reconstruct`` and ``generate`` give ``ImageOutput``;
``classify`` gives ``ClassifyOutput``.

A declared method is a pure function of one batched tensor (rows are independent), which is
what lets the service batch concurrent requests and trace the call. Two kinds are special:
- ``generate`` runs in two steps: ``prepare`` (a model method, called per request with the
  request's own seeded generator, so batching never changes which images a seed gives)
  draws the randomness as a tensor [n, ...]; ``method`` turns it into images, batched. A
  latent model draws codes and decodes them; a model without a code draws whatever noise its
  sampler consumes.
- ``search=True`` marks an iterative optimisation (GAN inversion): it is called with
  ``budget=SearchBudget(...)`` from the service's settings and is never traced. What it
  evaluates at every step can be declared as ``objective``, a method of two batched tensors
  (code [B, K], target images [B, C, H, W]) -> (error [B], gradient [B, K]) written with
  forward operations only: the service compiles it like any call and passes it in as
  ``budget.objective``.

``check_declaration`` runs when a family registers (an ``assert`` would vanish under ``-O``):
a family that declares an operation without the methods it names is refused at import.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch

#: The operations of the API that a model itself provides. The service composes others from
#: these (denoise and interpolate, arithmetic from decode; reconstruct from encode + decode).
OPERATIONS = ("encode", "decode", "reconstruct", "generate", "classify", "likelihood")

#: What each operation's method takes: images [B, C, H, W] in [0, 1], or codes [B, latent_dim].
INPUTS = {
    "encode": "images",
    "reconstruct": "images",
    "classify": "images",
    "likelihood": "images",
    "decode": "latents",
}


#: L-BFGS evaluations after an inverter's prediction (inversion.refine): the service's default
#: (``LATENTSERVE_INVERSION_REFINE_STEPS``) and the evaluator's. With the preconditioner and the
#: objective on ONNX Runtime, 16 answered a single image in 27.5 / 31.4 ms p50 through the
#: service at 24.59 / 24.88 dB (gan-fashion / cgan-fashion, bench/results/inversion.md), and
#: stay under 50 ms with the eager objective (about 2.3 ms an evaluation)
REFINE_STEPS = 16


#: a search's objective: (code [B, K], target images [B, C, H, W]) -> (error [B], gradient [B, K])
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Op:
    """One declared operation: the model method that does it, and how to read its result."""

    method: str
    #: names of what the method returns, in order: one name for a tensor, several for a tuple
    returns: tuple[str, ...] = ("value",)
    #: generate only: the method that draws a request's randomness, (n, generator, temperature,
    #: labels) -> the input of ``method`` [n, ...]
    prepare: str | None = None
    #: an iterative search, called with ``budget=SearchBudget``; never traced
    search: bool = False
    #: False for a method the service always calls with arguments (a VAE's likelihood takes
    #: samples=): a trace has none, so none is made
    trace: bool = True
    #: a chain sampler: ``budget.steps`` is its length (a request's ``steps``)
    takes_steps: bool = False
    #: a chain sampler: the method that returns its frames [n, F, C, H, W] (for a GIF)
    frames: str | None = None
    #: a search only: the method (code [B, K], target [B, C, H, W]) -> (error [B], gradient
    #: [B, K]) it evaluates at each step; the service compiles it (``budget.objective``)
    objective: str | None = None

    @property
    def traceable(self) -> bool:
        return self.trace and not self.search


@dataclasses.dataclass(frozen=True)
class SearchBudget:
    """How hard a search operation may try: steps, random restarts, a time cap in seconds,
    the method, and ``stop``, asked between steps: true when nobody waits for the result
    any more (the serving engine's cancellation and deadlines); the search then ends at once."""

    steps: int = 200
    restarts: int = 4
    time_s: float | None = None
    stop: Callable[[], bool] | None = None
    #: how a model that can search more than one way does it (``LatentModel.inversion_methods``):
    #: "amortised" (a trained inverter's prediction, refined for ``refine_steps`` steps) or
    #: "optimisation" (``steps`` steps from ``restarts`` random starts); None: the first it has
    method: str | None = None
    refine_steps: int = REFINE_STEPS
    #: the declared ``Op.objective`` as the caller compiled it (the service's engines), taking
    #: (code [B, K], target [B, C, H, W]); None: the search calls the model's own method
    objective: Objective | None = None


@dataclasses.dataclass(frozen=True)
class Density:
    """What a family's ``log_likelihood`` computes, declared beside it.

    ``kind`` is "exact", "lower bound (ELBO)" or "AIS estimate"; a family whose method takes
    ``samples`` (K importance samples, Burda et al. 2016) gives the ELBO at K = 1 and the
    importance-weighted bound above. ``convention`` names how grey levels are read, because
    numbers under different conventions are not comparable: "8-bit discrete" (a distribution
    over the 256 values of each pixel), "Bernoulli on grey levels" (each level in [0, 1] is the
    probability of a binary pixel, as in most VAE papers), "binarized at 0.5".
    """

    kind: str
    convention: str
    takes_samples: bool = False
    #: a method x [B, C, H, W] -> the model's own features of each image [B, D], whose
    #: training Gaussian gives the anomaly score its second part (models/anomaly.py)
    features: str | None = None

    def describe(self, samples: int = 1) -> str:
        """The kind of the number ``log_likelihood`` gives with ``samples`` importance samples."""
        if not self.takes_samples or samples == 1:
            return self.kind
        return f"importance-weighted bound (K={samples})"

    @property
    def exact(self) -> bool:
        return self.kind == "exact"


@dataclasses.dataclass
class ModelOutput:
    """Base of the typed outputs: tensors with one row per input row."""

    KIND: ClassVar[str]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None
        }


@dataclasses.dataclass
class EncodeOutput(ModelOutput):
    """latent [B, K]; a VAE's posterior mean and log-variance [B, K]; a search's error [B]."""

    latent: torch.Tensor
    mean: torch.Tensor | None = None
    log_var: torch.Tensor | None = None
    reconstruction_error: torch.Tensor | None = None
    KIND: ClassVar[str] = "encode"


@dataclasses.dataclass
class ImageOutput(ModelOutput):
    """images [B, C, H, W] in [0, 1] (or uint8 pixels [B, H, W, C] where the service asks)."""

    images: torch.Tensor
    KIND: ClassVar[str] = "images"


@dataclasses.dataclass
class ClassifyOutput(ModelOutput):
    """class probabilities [B, num_classes]."""

    probabilities: torch.Tensor
    KIND: ClassVar[str] = "classify"


@dataclasses.dataclass
class LikelihoodOutput(ModelOutput):
    """log p(x) in nats [B] (or the bound or estimate the family's ``density`` names)."""

    log_likelihood: torch.Tensor
    KIND: ClassVar[str] = "likelihood"


def wrap_output(
    operation: str, op: Op, raw: torch.Tensor | tuple[torch.Tensor, ...]
) -> ModelOutput:
    """The declared method's raw result -> the operation's typed output."""
    values = (raw,) if isinstance(raw, torch.Tensor) else tuple(raw)
    if len(values) != len(op.returns):
        raise TypeError(f"{op.method} returned {len(values)} tensors, declared {op.returns}")
    named = dict(zip(op.returns, values, strict=True))
    if operation == "encode":
        latent = named.get("latent", named.get("mean"))
        if latent is None:
            latent = named["value"]
        return EncodeOutput(
            latent=latent,
            mean=named.get("mean"),
            log_var=named.get("log_var"),
            reconstruction_error=named.get("reconstruction_error"),
        )
    if operation == "classify":
        return ClassifyOutput(probabilities=values[0])
    if operation == "likelihood":
        return LikelihoodOutput(log_likelihood=values[0])
    return ImageOutput(images=values[0])


class DeclarationError(TypeError):
    """A family's declaration is incomplete or inconsistent; the message says what is missing."""


ENCODE_RETURNS = {"value", "latent", "mean", "log_var", "reconstruction_error"}


def check_declaration(cls: type, ops: dict[str, Op], example_config: dict[str, Any]) -> None:
    """Refuse a family whose declaration names operations or methods it does not have."""
    name = getattr(cls, "family", cls.__name__)
    density = getattr(cls, "density", None)
    if ("likelihood" in ops) != isinstance(density, Density):
        raise DeclarationError(
            f"family {name!r}: likelihood and density=Density(...) go together; "
            "declare both or neither"
        )
    if density is not None and "likelihood" in ops:
        ll_method = ops["likelihood"].method
        takes = "samples" in inspect.signature(getattr(cls, ll_method)).parameters
        if takes != density.takes_samples:
            raise DeclarationError(
                f"family {name!r}: density.takes_samples={density.takes_samples}, but "
                f"{ll_method} {'takes' if takes else 'does not take'} samples="
            )
    if not isinstance(ops, dict) or not all(isinstance(op, Op) for op in ops.values()):
        raise DeclarationError(f"family {name!r}: operations must be a dict of API operation -> Op")
    unknown = sorted(set(ops) - set(OPERATIONS))
    if unknown:
        raise DeclarationError(
            f"family {name!r}: unknown operations {unknown}; the API has {list(OPERATIONS)}"
        )
    samplers = getattr(cls, "samplers", {})
    if not isinstance(samplers, dict) or not all(isinstance(op, Op) for op in samplers.values()):
        raise DeclarationError(f"family {name!r}: samplers must be a dict of name -> Op")
    if "latent" in samplers:
        raise DeclarationError(f"family {name!r}: sampler 'latent' is the fitted density's name")
    if samplers and ops.get("generate") not in samplers.values():
        raise DeclarationError(f"family {name!r}: generate must be one of its samplers")
    named = [*ops.items(), *(("generate", op) for op in samplers.values())]
    for operation, op in named:
        if op.objective is not None and not op.search:
            raise DeclarationError(f"family {name!r}: {operation}: only a search has an objective")
        for method in (op.method, op.prepare, op.frames, op.objective):
            if method is not None and not callable(getattr(cls, method, None)):
                raise DeclarationError(
                    f"family {name!r}: {operation} names {cls.__name__}.{method}, which does not exist"
                )
        if (operation == "generate") != (op.prepare is not None):
            raise DeclarationError(
                f"family {name!r}: {operation}: only generate has (and needs) prepare=..."
            )
        for method in filter(None, (op.method, op.frames)):
            if op.search and "budget" not in inspect.signature(getattr(cls, method)).parameters:
                raise DeclarationError(
                    f"family {name!r}: {operation} is a search, so {method} must take budget="
                )
        if (op.takes_steps or op.frames) and not op.search:
            raise DeclarationError(
                f"family {name!r}: {operation}: a chain (takes_steps, frames) runs as a search"
            )
        if operation == "encode" and not set(op.returns) <= ENCODE_RETURNS:
            raise DeclarationError(
                f"family {name!r}: encode returns {op.returns}; names must be in {sorted(ENCODE_RETURNS)}"
            )
        if operation != "encode" and len(op.returns) != 1:
            raise DeclarationError(f"family {name!r}: {operation} must return one tensor")
    if "generate" in ops and ops["generate"].prepare == "sample_latent" and "decode" not in ops:
        raise DeclarationError(
            f"family {name!r}: generate draws codes with sample_latent, so it must declare decode "
            "(interpolation between seeds decodes those codes)"
        )
    if not isinstance(example_config, dict):
        raise DeclarationError(f"family {name!r}: example_config must be a dict of config fields")
