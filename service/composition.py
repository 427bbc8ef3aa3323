"""Operations composed from a model's own: the ends of an interpolation, latent arithmetic.

The domain side of the interpolate and arithmetic routes, free of HTTP: the route parses the
request and hands over the parameters, the names of the images it carries and a loader that
decodes them on demand; failures are ``Problem``s (problems.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import torch

from .inference import Operations, class_index, parse_latents
from .problems import InvalidInput, NotSupported
from .registry import LoadedModel
from .schemas import ArithmeticParams, InterpolateParams

#: field names -> decoded images [1, C, H, W] each
ImageLoader = Callable[[tuple[str, ...]], Awaitable[dict[str, torch.Tensor]]]

#: arithmetic term -> (its image field, its latent field)
ARITHMETIC_TERMS = {"a": ("image", "latent_a"), "b": ("image_b", "latent_b"), "c": ("image_c", "latent_c")}  # fmt: skip


async def interpolation_ends(
    ops: Operations,
    lm: LoadedModel,
    params: InterpolateParams,
    image_fields: set[str],
    load: ImageLoader,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two latents [K], [K] to interpolate between: two images encoded, two latents as
    given, or two seeds drawn from the prior (of a chosen class each, for conditional models)."""
    given = {
        "images": bool(image_fields),
        "latents": params.latent_a is not None or params.latent_b is not None,
        "seeds": params.seed_a is not None or params.seed_b is not None,
    }
    if not given["seeds"] and (params.class_a is not None or params.class_b is not None):
        raise InvalidInput("class_a and class_b apply to seed ends (seed_a, seed_b) only")
    if sum(given.values()) != 1:
        raise InvalidInput(
            "give exactly one pair of ends: image + image_b, latent_a + latent_b, or seed_a + seed_b"
        )
    if given["images"]:
        if "encode" not in lm.operations:
            raise NotSupported(
                f"model {lm.name!r} cannot encode images; give latent_a and latent_b"
            )
        x = await load(("image", "image_b"))
        z = (await ops.encode(lm, torch.cat([x["image"], x["image_b"]]), params.inversion)).latent
        return z[0], z[1]
    if given["latents"]:
        if params.latent_a is None or params.latent_b is None:
            raise InvalidInput("give both latent_a and latent_b")
        z = parse_latents(lm, [params.latent_a, params.latent_b], "latent_a/latent_b")
        return z[0], z[1]
    generate = lm.model.operations.get("generate")
    if generate is None or generate.prepare != "sample_latent":
        raise NotSupported(
            f"model {lm.name!r} draws no codes from a prior, so seeds have no latents; "
            "use images or latents"
        )
    if params.seed_a is None or params.seed_b is None:
        raise InvalidInput("give both seed_a and seed_b")
    class_a = class_index(lm, params.class_a, "class_a")
    class_b = class_index(lm, params.class_b, "class_b")
    za = ops.prior_latents(lm, 1, params.seed_a, params.temperature, class_a)[0]
    zb = ops.prior_latents(lm, 1, params.seed_b, params.temperature, class_b)[0]
    return za, zb


async def arithmetic(
    ops: Operations,
    lm: LoadedModel,
    params: ArithmeticParams,
    image_fields: set[str],
    load: ImageLoader,
) -> tuple[torch.Tensor, torch.Tensor]:
    """c + scale * (a - b) -> (its latent [K], the decoded [result, a, b, c] [4, C, H, W])."""
    z = await arithmetic_terms(ops, lm, params, image_fields, load)
    result = z["c"] + params.scale * (z["a"] - z["b"])  # [K]
    if not torch.isfinite(result).all() or float(result.abs().max()) > 1e4:
        raise InvalidInput("the result latent is not finite or exceeds magnitude 10000")
    return result, await ops.decode(lm, torch.stack([result, z["a"], z["b"], z["c"]]))


async def arithmetic_terms(
    ops: Operations,
    lm: LoadedModel,
    params: ArithmeticParams,
    image_fields: set[str],
    load: ImageLoader,
) -> dict[str, torch.Tensor]:
    """Each of a, b, c as a latent [K]: its latent as given, or its image encoded."""
    latents: dict[str, torch.Tensor] = {}
    to_encode = []
    for term, (image_field, latent_field) in ARITHMETIC_TERMS.items():
        latent = getattr(params, latent_field)
        if (image_field in image_fields) == (latent is not None):
            raise InvalidInput(
                f"term {term}: give exactly one of {image_field} (an image) or {latent_field}"
            )
        if latent is not None:
            latents[term] = parse_latents(lm, [latent], latent_field)[0]
        else:
            to_encode.append(term)
    if to_encode:
        if "encode" not in lm.operations:
            raise NotSupported(
                f"model {lm.name!r} cannot encode images; give latent_a, latent_b and latent_c"
            )
        fields = tuple(ARITHMETIC_TERMS[t][0] for t in to_encode)
        x = await load(fields)
        z = (await ops.encode(lm, torch.cat([x[f] for f in fields]), params.inversion)).latent
        latents.update(zip(to_encode, z, strict=True))
    return latents
