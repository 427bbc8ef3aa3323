"""The conditional VAE: -ELBO given the class plus the encoder's class loss, scored by how
often a judge recognises the requested class."""

from __future__ import annotations

import argparse

import torch

from models import LatentModel
from models.cvae import ConditionalVAE

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..density import evaluate_density
from ..recipes import Recipe
from ..scoring import Metrics, conditional_accuracy, load_judge, reconstruction_metrics


class ConditionalVAERecipe(Recipe):
    """-ELBO(x | y) with the true label fed to the decoder, plus the encoder's class loss."""

    model: ConditionalVAE

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        def losses(m: ConditionalVAE) -> dict[str, torch.Tensor]:
            nll, kl, ce = m.loss_terms(x, y)
            loss = (nll + m.config.beta * kl + m.config.class_weight * ce).mean()
            terms = {"nll": nll.detach().mean(), "kl": kl.detach().mean(), "ce": ce.detach().mean()}
            if m.config.consistency_weight > 0:
                consistency = m.consistency_terms(y, generator).mean()
                loss = loss + m.config.consistency_weight * consistency
                terms["consistency"] = consistency.detach()
            return {"loss": loss, **terms}

        terms = self.forward(losses)
        self._step("model", terms["loss"])
        return {k: v.item() for k, v in terms.items()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)  # reconstruction through the predicted class
        nll, kl, _ = self.model.loss_terms(x, y)
        _, _, class_logits = self.model.encode_parts(x)
        out.update(
            neg_elbo=float((nll + kl).sum()),
            kl=float(kl.sum()),
            class_accuracy=float((class_logits.argmax(1) == y).sum()),
        )
        return out


@torch.no_grad()
def evaluate_cvae(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, ConditionalVAE)
    out = reconstruction_metrics(model, data, test)
    labels = data.test.labels[: len(test)]
    torch.manual_seed(0)
    nll_sum = kl_sum = correct = 0.0
    for i in range(0, len(test), 500):
        x, y = test[i : i + 500], labels[i : i + 500]
        nll, kl, _ = model.loss_terms(x, y)
        nll_sum, kl_sum = nll_sum + float(nll.sum()), kl_sum + float(kl.sum())
        correct += float((model.encode_parts(x)[2].argmax(1) == y).sum())
    n = len(test)
    out.update(
        neg_elbo_given_class_nats=(nll_sum + kl_sum) / n,
        kl_nats=kl_sum / n,
        encoder_class_accuracy=correct / n,
    )
    judge = load_judge(args)
    out.update(
        conditional_accuracy(model, judge, args.samples // model.num_classes, (test, labels))
    )
    out.update(evaluate_density(model, data, test, args))  # bits/dim, anomaly AUROC
    return out


register_training(TrainingSpec(
    family="cvae", recipe=ConditionalVAERecipe, evaluate=evaluate_cvae,
    floors=(("min_conditional_accuracy", ">=", 0.90), ("min_conditional_ratio", ">=", 0.90)),
    headline=lambda m: (f"judged as the requested class: {m['mean_conditional_accuracy']:.1%} on average, "
                       f"{m['min_conditional_accuracy']:.1%} for the worst class ({m['min_conditional_ratio']:.2f} of the judge's accuracy on real ones); -ELBO given the class "
                       f"{m['neg_elbo_given_class_nats']:.1f} nats, PSNR {m['psnr']:.2f} dB"),
))  # fmt: skip
