"""The conditional GAN: a projection critic (Miyato & Koyama 2018) with an AC-GAN head."""

from __future__ import annotations

import argparse

import torch

from models import LatentModel
from models.cgan import ConditionalGAN

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..scoring import (
    Metrics,
    amortised_headline,
    conditional_accuracy,
    inversion_metrics,
    load_judge,
    sample_metrics,
)
from .gan import GANRecipe


class ConditionalGANRecipe(GANRecipe):
    """The GAN recipe with labels: fakes are drawn for the real batch's classes, and the
    projection critic scores each image against its class (with the AC-GAN head's loss,
    GANRecipe's ``projection`` objectives)."""

    model: ConditionalGAN  # type: ignore[assignment]

    @property
    def projection(self) -> bool:
        return True

    def latents(self, n: int, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.sample_latent(n, generator, labels=y)  # [n, K + classes]


@torch.no_grad()
def evaluate_cgan(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, ConditionalGAN)
    judge = load_judge(args)
    real = (test, data.test.labels[: len(test)])
    out = conditional_accuracy(model, judge, args.samples // model.num_classes, real)
    out.update(sample_metrics(model, data, test, args))  # codes of random classes
    z, inversion = inversion_metrics(model, test, args)
    # the class tail of an inverted code: does inversion find the image's class too?
    labels = data.test.labels[: len(z)]
    found = z[:, model.noise_dim :].argmax(1)
    return {**out, **inversion, "inversion_class_accuracy": float((found == labels).float().mean())}


register_training(TrainingSpec(
    family="cgan", recipe=ConditionalGANRecipe, evaluate=evaluate_cgan, lr=2e-4,
    floors=(("min_conditional_accuracy", ">=", 0.90), ("min_conditional_ratio", ">=", 0.90)),
    headline=lambda m: (f"judged as the requested class: {m['mean_conditional_accuracy']:.1%} on average, "
                       f"{m['min_conditional_accuracy']:.1%} for the worst class ({m['min_conditional_ratio']:.2f} of the judge's accuracy on real ones); Frechet distance "
                       f"{m['frechet_distance']:.2f} (train vs test: {m['frechet_train_vs_test']:.2f}); inversion PSNR "
                       f"{m['inversion_psnr']:.2f} dB at {m['inversion_seconds_per_image']:.2f} s/image" + amortised_headline(m)),
))  # fmt: skip
