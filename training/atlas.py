"""``python -m training atlas --model weights/NAME``: fit a model's latent-space atlas.

Encodes a fixed, seeded sample of test images (``--images``, 2,000 by default; the same
sample for every model of a data set), projects the codes onto a plane by PCA and, when
scikit-learn is installed (the ``train`` extra), by t-SNE, and writes ``atlas.safetensors`` and
the thumbnail sheet ``atlas.png`` beside the weights (models/atlas.py). ``evaluate`` runs the
same step for every model that encodes and decodes. A model whose encoder is a search (GAN
inversion) is encoded with a shorter budget (``--atlas-steps``, ``--atlas-restarts``): the map
shows where the search puts each image, which the source line says.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models import LatentModel, SearchBudget
from models.atlas import NEIGHBOURS, Atlas, fit_pca, has_atlas, sprite, write_atlas

from .argtypes import positive_int
from .artifacts import add_artifact_arguments, open_artifact
from .data import Dataset
from .scoring import as_float

THUMBNAIL_SIDE = 32  # larger images are shown downscaled on hover


def sample_indices(n_test: int, images: int, seed: int) -> torch.Tensor:
    """The sample: ``images`` test indices drawn without replacement by a seeded permutation,
    in increasing order (so a model's atlas and its thumbnails agree whatever the model)."""
    if images > n_test:
        raise ValueError(f"--images {images}: the test split has only {n_test} images")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_test, generator=g)[:images].sort().values


@torch.no_grad()
def encode_all(
    model: LatentModel, x: torch.Tensor, budget: SearchBudget, batch: int = 250
) -> torch.Tensor:
    """Codes of images x [N, C, H, W]: [N, latent_dim], with a progress bar."""
    search = model.operations["encode"].search
    out = []
    for i in tqdm(range(0, len(x), batch), desc="encode", leave=False, mininterval=2.0):
        kwargs: dict[str, Any] = {"budget": budget} if search else {}
        out.append(model.run("encode", x[i : i + batch], **kwargs).latent.float())
    return torch.cat(out)


def tsne_points(codes: torch.Tensor, seed: int) -> torch.Tensor | None:
    """t-SNE of codes [N, K] -> [N, 2], or None without scikit-learn."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        print("atlas: scikit-learn is not installed (pip install '.[train]'): PCA only")
        return None
    perplexity = min(30.0, (len(codes) - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=1000)
    return torch.from_numpy(tsne.fit_transform(codes.double().numpy())).float()


def fit_atlas(
    model: LatentModel,
    data: Dataset,
    images: int,
    seed: int = 0,
    budget: SearchBudget | None = None,
    projections: tuple[str, ...] = ("pca", "tsne"),
) -> tuple[Atlas, Any]:
    """The atlas of ``images`` sampled test images and its thumbnail sheet."""
    if not has_atlas(model):
        raise ValueError(f"{model.family} models have no code to map (they need encode and decode)")
    index = sample_indices(len(data.test.images), images, seed)
    x = as_float(data.test.images[index])
    labels = data.test.labels[index].long()
    budget = budget or SearchBudget()
    codes = encode_all(model, x, budget)
    mean, components, explained = fit_pca(codes)
    points = {"pca": (codes - mean) @ components.T}
    if "tsne" in projections and (t := tsne_points(codes, seed)) is not None:
        points["tsne"] = t
    thumbs = x
    if max(x.shape[2:]) > THUMBNAIL_SIDE:
        thumbs = torch.nn.functional.interpolate(
            x, size=(THUMBNAIL_SIDE, THUMBNAIL_SIDE), mode="area"
        )
    sheet, layout = sprite(thumbs)
    source = f"{images} test images of {data.name}, sampled with seed {seed}"
    if model.operations["encode"].search:
        source += f" (codes found by a search of {budget.steps} steps x {budget.restarts} restarts)"
    atlas = Atlas(
        codes=codes, labels=labels,
        points=points, mean=mean, components=components, explained=explained, source=source,
        thumbnails=layout, class_names=tuple(data.class_names),
    )  # fmt: skip
    return atlas, sheet


def make_atlas(
    folder: Path, model: LatentModel, data: Dataset, args: argparse.Namespace
) -> dict[str, Any]:
    """Fit and write the atlas of the model in ``folder``; a summary for the card."""
    started = time.perf_counter()
    budget = SearchBudget(args.atlas_steps, args.atlas_restarts)
    images = min(args.atlas_images, len(data.test), getattr(args, "limit", 0) or len(data.test))
    if images < NEIGHBOURS:
        print(f"atlas: skipped, {images} test images are too few for a map (at least {NEIGHBOURS})")
        return {"skipped": f"{images} test images"}
    if images < args.atlas_images:
        print(f"atlas: {images} images (the test split or --limit allows no more)")
    atlas, sheet = fit_atlas(model, data, images, args.atlas_seed, budget)
    write_atlas(folder, atlas, sheet)
    summary = {
        "images": len(atlas.labels),
        "projections": atlas.projections,
        "pca_explained_variance": [round(v, 4) for v in atlas.explained.tolist()],
        "source": atlas.source,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"atlas: {json.dumps(summary)}")
    return summary


def add_atlas_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--atlas-images", type=positive_int, default=2000, help="test images on the atlas"
    )
    p.add_argument("--atlas-seed", type=int, default=0, help="seed of the atlas's test sample")
    p.add_argument(
        "--atlas-steps", type=positive_int, default=50,
        help="search encoders (GAN inversion): Adam steps per image for the atlas",
    )  # fmt: skip
    p.add_argument(
        "--atlas-restarts", type=positive_int, default=1,
        help="search encoders: random starts per image for the atlas",
    )  # fmt: skip


def add_atlas_parser(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add_artifact_arguments(p, "weights/vae-fashion")
    add_atlas_options(p)
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.set_defaults(func=run_atlas)


def run_atlas(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    opened = open_artifact(args)
    opened.card["atlas"] = make_atlas(args.model, opened.model, opened.data, args)
    opened.write_card()
