"""The classifier: cross-entropy with light augmentation; the judge of the generative models."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from models import LatentModel

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import Metrics, in_batches


class ClassifierRecipe(Recipe):
    """Cross-entropy with light augmentation: random shifts of up to 2 pixels."""

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        dx, dy = (
            int(v) for v in torch.randint(-2, 3, (2,), generator=generator, device=generator.device)
        )
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = self.forward(lambda m, x_in: F.cross_entropy(m(x_in), y), x)
        self._step("model", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        logits = self.model(x)
        return {
            "nll": float(F.cross_entropy(logits, y, reduction="sum")),
            "accuracy": float((logits.argmax(1) == y).sum()),
        }


@torch.no_grad()
def evaluate_classifier(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    labels = data.test.labels[: len(test)]
    predicted = in_batches(model, test).argmax(1)
    per_class = {
        name: float((predicted[labels == c] == c).float().mean())
        for c, name in enumerate(data.class_names)
        if (labels == c).any()
    }
    return {
        "accuracy": float((predicted == labels).float().mean()),
        "per_class_accuracy": per_class,
    }


def classifier_picture(model: LatentModel, dataset: Dataset) -> tuple[torch.Tensor, int]:
    """One row per class: the first test images the classifier assigns to it."""
    images = dataset.test.images[:2000].float() / 255
    pred = model(images).argmax(1)
    rows = []
    for c in range(len(dataset.class_names)):
        chosen = images[pred == c][:10]
        pad = torch.ones(10 - len(chosen), *images.shape[1:])
        rows.append(torch.cat([chosen, pad]))
    return torch.cat(rows), 10


register_training(TrainingSpec(
    family="classifier", recipe=ClassifierRecipe, evaluate=evaluate_classifier,
    picture=classifier_picture, floors=(("accuracy", ">=", 0.90),),
    headline=lambda m: f"test accuracy {m['accuracy']:.2%}",
))  # fmt: skip
