"""Every served operation as an Open Inference Protocol model: ``<model>.<operation>``.

The mapping (docs/open-inference-protocol.md has the whole table). Images are channels-first
tensors ``[-1, C, H, W]``: FP32 in [0, 1], or UINT8 0..255 (divided by 255); latents are
FP32 ``[-1, K]``. The leading -1 is the batch: up to ``LATENTSERVE_MAX_N`` rows, each row
independent, exactly as if each had been sent alone. Scalar controls (generate's ``n``,
``seed``, ``temperature``, ``class``; interpolate's ``steps``, ``method``, ...) are the REST
operation's parameters, given in the request's ``parameters`` or, for the numeric ones, as
one-element tensors; they are checked by the very same parameter models as REST's.

- ``encode``: image -> latent (+ mean, log_var for a VAE; reconstruction_error for a GAN)
- ``decode``: latent -> image
- ``reconstruct``, ``denoise``: image -> image (denoise: + input, after optional server noise)
- ``generate``: (n, seed, temperature, class) -> image [n, C, H, W], seed [1]
- ``classify``: image -> probabilities [-1, classes]
- ``likelihood``: image -> log_likelihood (nats) [-1], bits_per_dim [-1]
- ``anomaly``: image -> score [-1], percentile [-1], anomalous BOOL [-1]
- ``interpolate``: latent_a + latent_b (or image + image_b, or seed_a + seed_b parameters)
  -> frames [steps, C, H, W]
- ``arithmetic``: a, b, c as latent_a/b/c or image/image_b/image_c -> image [1, C, H, W],
  latent [1, K]

Everything runs through ``Operations`` (inference.py), so v2 requests share the REST
requests' batches, lanes, limits, deadlines and errors, and give the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from . import composition, density
from .inference import Operations, check_latent_values, class_index, new_seed
from .oip import InferRequest, ProtocolError
from .parsing import validate
from .registry import LoadedModel
from .schemas import (
    ArithmeticParams,
    DenoiseParams,
    EncodeParams,
    GenerateParams,
    ImageParams,
    InterpolateParams,
    LikelihoodParams,
    Params,
)

IMAGE_TYPES = ("FP32", "UINT8")
INT_TYPES = ("INT64", "INT32", "UINT8", "INT16", "INT8", "UINT16", "UINT32")
FLOAT_TYPES = ("FP32", "FP64", "FP16")


class NoParams(Params):
    pass


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...]  # -1: any number of rows
    description: str
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        """The protocol's {name, datatype, shape}, and what else it accepts, in parameters."""
        extra: dict[str, Any] = {"description": self.description}
        if len(self.datatypes) > 1:
            extra["datatypes"] = list(self.datatypes)
        if self.optional:
            extra["optional"] = True
        return {"name": self.name, "datatype": self.datatypes[0], "shape": list(self.shape),
                "parameters": extra}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: the REST operation's parameter model: its fields are the accepted parameters
    params: type[Params]
    #: inputs that are parameters given as one-element tensors
    scalars: tuple[str, ...] = ()


def signature(lm: LoadedModel, operation: str) -> Signature:
    """The inputs, outputs and parameters of ``lm``'s ``operation`` as a v2 model."""
    c, h, w = lm.model.image_shape
    k = lm.model.latent_dim
    images = TensorSpec("image", IMAGE_TYPES, (-1, c, h, w),
                        "images, channels first: FP32 in [0, 1] or UINT8 0..255")  # fmt: skip
    out_images = TensorSpec("image", ("FP32",), (-1, c, h, w), "images in [0, 1], channels first")
    latents = TensorSpec("latent", ("FP32",), (-1, k), "latent codes, one per row")

    def scalar(name: str, types: tuple[str, ...], what: str) -> TensorSpec:
        return TensorSpec(name, types, (1,), f"{what} (or parameters.{name})", optional=True)

    def end(name: str, shape: tuple[int, ...], what: str) -> TensorSpec:
        return TensorSpec(name, IMAGE_TYPES if len(shape) == 4 else ("FP32",), shape, what, True)

    if operation == "encode":
        returns = set(lm.model.operations["encode"].returns)
        outs = [latents]
        # the posterior is over z alone: a conditional code appends class weights to it
        z_dim = lm.model.config.latent_dim
        outs += [TensorSpec(n, ("FP32",), (-1, z_dim), f"the posterior's {n}")
                 for n in ("mean", "log_var") if n in returns]  # fmt: skip
        if "reconstruction_error" in returns:
            outs.append(TensorSpec("reconstruction_error", ("FP32",), (-1,),
                                   "mean squared error of the code the search found"))  # fmt: skip
        return Signature((images,), tuple(outs), EncodeParams)
    if operation == "decode":
        return Signature((latents,), (out_images,), NoParams)
    if operation in ("reconstruct", "classify", "likelihood", "anomaly", "denoise"):
        outputs: dict[str, tuple[TensorSpec, ...]] = {
            "reconstruct": (out_images,),
            "denoise": (out_images, dataclasses.replace(out_images, name="input",
                        description="the input after the optional server-side noise")),
            "classify": (TensorSpec("probabilities", ("FP32",), (-1, len(lm.class_names) or -1),
                                    "class probabilities, in the order of class_names"),),
            "likelihood": (
                TensorSpec("log_likelihood", ("FP32",), (-1,), "log p(x) in nats (or its bound or estimate)"),
                TensorSpec("bits_per_dim", ("FP32",), (-1,), "-log2 p(x) per pixel and channel"),
            ),
            "anomaly": (
                TensorSpec("score", ("FP32",), (-1,), "higher: less like the training data"),
                TensorSpec("percentile", ("FP32",), (-1,), "among held-out training-like images"),
                TensorSpec("anomalous", ("BOOL",), (-1,), "percentile above LATENTSERVE_ANOMALY_PERCENTILE"),
            ),
        }  # fmt: skip
        params: dict[str, type[Params]] = {
            "denoise": DenoiseParams, "likelihood": LikelihoodParams, "reconstruct": EncodeParams,
        }  # fmt: skip
        return Signature((images,), outputs[operation], params.get(operation, ImageParams))
    if operation == "generate":
        ins = [scalar("n", INT_TYPES, "images to draw"),
               scalar("seed", ("INT64", "UINT64"), "same seed, same images"),
               scalar("temperature", FLOAT_TYPES, "prior scale")]  # fmt: skip
        if lm.model.conditional:
            ins.append(scalar("class", INT_TYPES, "class index (by name: parameters.class)"))
        seed = TensorSpec("seed", ("INT64",), (1,), "the seed used (drawn if none was given)")
        return Signature(tuple(ins), (out_images, seed), GenerateParams,
                         tuple(s.name for s in ins))  # fmt: skip
    if operation == "interpolate":
        ins = [end("latent_a", (1, k), "first end as a latent"),
               end("latent_b", (1, k), "last end as a latent"),
               end("image", (1, c, h, w), "first end as an image (encoded)"),
               end("image_b", (1, c, h, w), "last end as an image (encoded)"),
               scalar("steps", INT_TYPES, "frames, both ends included")]  # fmt: skip
        frames = TensorSpec("frames", ("FP32",), (-1, c, h, w), "the decoded path, in order")
        return Signature(tuple(ins), (frames,), InterpolateParams, ("steps",))
    if operation == "arithmetic":
        ins = [end(f"latent_{t}", (1, k), f"term {t} as a latent") for t in "abc"]
        ins += [end(f, (1, c, h, w), f"term {t} as an image (encoded)")
                for t, f in zip("abc", ("image", "image_b", "image_c"), strict=True)]  # fmt: skip
        outs = [dataclasses.replace(out_images, shape=(1, c, h, w),
                                    description="c + scale * (a - b), decoded"),
                TensorSpec("latent", ("FP32",), (1, k), "c + scale * (a - b)"),
                TensorSpec("terms", ("FP32",), (3, c, h, w), "a, b and c as the model decodes them")]  # fmt: skip
        return Signature(tuple(ins), tuple(outs), ArithmeticParams)
    raise ProtocolError(f"{operation} has no Open Inference Protocol mapping")


def metadata(lm: LoadedModel, operation: str, v2_name: str) -> dict[str, Any]:
    sig = signature(lm, operation)
    # each parameter by the name a request uses (its alias: generate's "class"); the scalar
    # inputs are accepted here too
    fields = {f.alias or name: f.description or "" for name, f in sig.params.model_fields.items()}
    return {
        "name": v2_name,
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [t.metadata() for t in sig.inputs],
        "outputs": [t.metadata() for t in sig.outputs],
        # not part of the protocol: what parameters.<name> the operation accepts
        "parameters": {
            "model": lm.name,
            "operation": operation,
            "family": lm.model.family,
            "accepts": dict(sorted(fields.items())),
        },
    }


Inputs = dict[str, torch.Tensor]
Runner = Callable[[Operations, LoadedModel, Inputs, Any], Awaitable[dict[str, Any]]]


async def infer(
    ops: Operations, lm: LoadedModel, operation: str, request: InferRequest, max_rows: int
) -> dict[str, np.ndarray]:
    """Check the request against the operation's signature, run it, and return the outputs
    asked for (all of them by default), as arrays of the declared datatypes."""
    sig = signature(lm, operation)
    specs = {t.name: t for t in sig.inputs}
    unknown = sorted(set(request.inputs) - set(specs))
    if unknown:
        raise ProtocolError(
            f"{lm.name}.{operation} has no inputs {unknown}; its inputs: {', '.join(specs)}"
        )
    params = dict(request.parameters)
    tensors: Inputs = {}
    for name, spec in specs.items():
        array = request.inputs.get(name)
        if array is None:
            if not spec.optional:
                raise ProtocolError(f"input {name!r}: required ({spec.description})")
            continue
        _check(spec, request.datatypes[name], array, max_rows)
        if name in sig.scalars:
            if name in params:
                raise ProtocolError(f"{name}: given both as an input and in parameters; give one")
            params[name] = array.reshape(-1)[0].item()
        else:
            tensors[name] = _tensor(spec, array)
    wanted = request.outputs
    declared = [t.name for t in sig.outputs]
    if wanted is not None and not set(wanted) <= set(declared):
        raise ProtocolError(
            f"{lm.name}.{operation} has no outputs {sorted(set(wanted) - set(declared))}; "
            f"its outputs: {', '.join(declared)}"
        )
    parsed = validate(sig.params, params)
    if isinstance(parsed, ImageParams) and parsed.invert:
        tensors = {k: 1 - v if v.ndim == 4 else v for k, v in tensors.items()}
    result = await RUNNERS[operation](ops, lm, tensors, parsed)
    outputs: dict[str, np.ndarray] = {}
    for spec in sig.outputs:
        if wanted is None or spec.name in wanted:
            value = result[spec.name]
            array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            outputs[spec.name] = array.astype(_NUMPY[spec.datatypes[0]], copy=False)
    return outputs


_NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}


def _check(spec: TensorSpec, datatype: str, array: np.ndarray, max_rows: int) -> None:
    where = f"input {spec.name!r}"
    if datatype not in spec.datatypes:
        raise ProtocolError(f"{where}: datatype {datatype}; it takes {' or '.join(spec.datatypes)}")
    shape = list(array.shape)
    if spec.shape == (1,):
        if array.size != 1:
            raise ProtocolError(f"{where}: one value (shape [1]), got shape {shape}")
        return
    fits = len(shape) == len(spec.shape) and all(
        d == s for d, s in zip(shape, spec.shape, strict=True) if s != -1
    )
    if not fits:
        raise ProtocolError(f"{where}: shape {shape} does not fit {list(spec.shape)} (-1: rows)")
    if spec.shape[0] == -1 and not 1 <= shape[0] <= max_rows:
        raise ProtocolError(
            f"{where}: between 1 and {max_rows} rows (LATENTSERVE_MAX_N), got {shape[0]}"
        )


def _tensor(spec: TensorSpec, array: np.ndarray) -> torch.Tensor:
    """Check the values and make the float32 tensor the operations take."""
    where = f"input {spec.name!r}"
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255)
    x = torch.from_numpy(array.astype(np.float32))
    if len(spec.shape) == 2:  # latents: the check REST's latents get
        return check_latent_values(x, where)
    if not torch.isfinite(x).all():
        raise ProtocolError(f"{where}: values must be finite")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ProtocolError(f"{where}: FP32 images take values in [0, 1] (or send UINT8 0..255)")
    return x


async def _encode(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    return (await ops.encode(lm, x["image"], p.inversion)).tensors()


async def _decode(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    return {"image": await ops.decode(lm, x["latent"])}


async def _reconstruct(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    return {"image": await ops.reconstruct(lm, x["image"], inversion=p.inversion)}


async def _denoise(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    images = x["image"]
    if p.noise_kind is not None:
        seed = p.noise_seed if p.noise_seed is not None else new_seed()
        images = ops.corrupt(images, p.noise_kind, p.noise_level, seed)
    return {"image": await ops.reconstruct(lm, images), "input": images}


async def _generate(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    if p.n > ops.settings.max_n:
        raise ProtocolError(f"n: at most {ops.settings.max_n} (LATENTSERVE_MAX_N), got {p.n}")
    label = class_index(lm, p.class_, "class")
    seed = p.seed if p.seed is not None else new_seed()
    images = await ops.generate(
        lm, p.n, seed, p.temperature, label, sampler=p.sampler, steps=p.steps
    )
    return {"image": images, "seed": np.array([seed], dtype=np.int64)}


async def _classify(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    return {"probabilities": await ops.classify(lm, x["image"])}


async def _likelihood(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    samples = density.choose_samples(lm, p.samples, ops.settings)
    ll = await ops.log_likelihood(lm, x["image"], samples)
    return {"log_likelihood": ll, "bits_per_dim": density.bits_per_dim(lm, ll)}


async def _anomaly(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    scores = await density.anomaly_scores(ops, lm, x["image"])
    return {"score": scores.score, "percentile": scores.percentile, "anomalous": scores.anomalous}


def _loader(x: Inputs) -> composition.ImageLoader:
    async def load(fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
        missing = [f for f in fields if f not in x]
        if missing:
            raise ProtocolError(f"inputs {missing}: required with the other image inputs")
        return {f: x[f] for f in fields}

    return load


def _with_latents(params: BaseModel, x: Inputs) -> Any:
    """The parameters with the latent inputs filled in, as the REST request would carry them."""
    latents = {k: v[0].tolist() for k, v in x.items() if k.startswith("latent_")}
    return params.model_copy(update=latents)


async def _interpolate(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    if p.steps > ops.settings.max_steps:
        raise ProtocolError(
            f"steps: at most {ops.settings.max_steps} (LATENTSERVE_MAX_STEPS), got {p.steps}"
        )
    p = _with_latents(p, x)
    images: set[str] = {f for f in ("image", "image_b") if f in x}
    za, zb = await composition.interpolation_ends(ops, lm, p, images, _loader(x))
    return {"frames": await ops.interpolate(lm, za, zb, p.steps, p.method)}


async def _arithmetic(ops: Operations, lm: LoadedModel, x: Inputs, p: Any) -> dict[str, Any]:
    p = _with_latents(p, x)
    images: set[str] = {f for f in ("image", "image_b", "image_c") if f in x}
    latent, decoded = await composition.arithmetic(ops, lm, p, images, _loader(x))
    return {"image": decoded[:1], "latent": latent[None], "terms": decoded[1:]}


RUNNERS: dict[str, Runner] = {
    "encode": _encode, "decode": _decode, "reconstruct": _reconstruct, "denoise": _denoise,
    "generate": _generate, "classify": _classify, "likelihood": _likelihood,
    "anomaly": _anomaly, "interpolate": _interpolate, "arithmetic": _arithmetic,
}  # fmt: skip
