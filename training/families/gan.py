"""The GAN: hinge loss with a spectrally normalised critic (Miyato et al. 2018), scored by
the judge's class shares, Frechet distance on its features, and inversion PSNR."""

from __future__ import annotations

import argparse

import torch

from models import LatentModel
from models.gan import GAN

from ..data import Dataset
from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import Metrics, amortised_headline, inversion_metrics, sample_metrics


class GANRecipe(Recipe):
    """One critic step and one generator step per batch, Adam(0.0, 0.9) as in Miyato et al."""

    model: GAN

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (0.0, 0.9)
        return {
            "generator": torch.optim.Adam(
                self.model.generator.parameters(), lr=self.args.lr, betas=betas
            ),
            "critic": torch.optim.Adam(
                self.model.critic.parameters(), lr=self.args.lr_critic, betas=betas
            ),
        }

    def latents(self, n: int, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Codes for a batch of fakes: [n, latent_dim]."""
        return self.model.sample_latent(n, generator)

    def score(self, m: GAN, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The critic's score of images [B, C, H, W] whose classes are y: [B]."""
        return m.criticize(images)

    def critic_objective(
        self, m: GAN, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The critic's loss ("d_loss") and any terms to show beside it."""
        return {"d_loss": GAN.critic_loss(self.score(m, real, y), self.score(m, fake, y))}

    def generator_objective(
        self, m: GAN, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The generator's loss ("g_loss") and any terms to show beside it."""
        return {"g_loss": GAN.generator_loss(self.score(m, fake, y))}

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        z = self.latents(x.shape[0], y, generator)

        def critic_terms(m: GAN) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                fake = m.decode(z)
            return self.critic_objective(m, x, fake, y)

        def generator_terms(m: GAN) -> dict[str, torch.Tensor]:
            return self.generator_objective(m, m.decode(z), y)

        # Two forwards of the generator rather than one reused graph: each loss is computed
        # entirely inside one forward call, which is what DDP needs to average its gradients.
        d_terms = self.forward(critic_terms)
        self._step("critic", d_terms["d_loss"])
        g_terms = self.forward(generator_terms)
        self._step("generator", g_terms["g_loss"])
        return {k: v.item() for k, v in (d_terms | g_terms).items()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        fake = self.model.decode(self.latents(x.shape[0], y, torch.Generator().manual_seed(0)))
        real_score, fake_score = self.score(self.model, x, y), self.score(self.model, fake, y)
        return {"critic_real": float(real_score.sum()), "critic_fake": float(fake_score.sum())}


@torch.no_grad()
def evaluate_gan(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    assert isinstance(model, GAN)
    return {**inversion_metrics(model, test, args)[1], **sample_metrics(model, data, test, args)}


register_training(TrainingSpec(
    family="gan", recipe=GANRecipe, evaluate=evaluate_gan, lr=2e-4,
    # the Frechet distance is reported beside its floor, the train-vs-test distance
    floors=(("min_class_share", ">=", 0.05),),
    headline=lambda m: (f"smallest class share {m['min_class_share']:.1%} of {m['samples']}; Frechet distance "
                      f"{m['frechet_distance']:.2f} (train vs test: {m['frechet_train_vs_test']:.2f}); inversion PSNR "
                      f"{m['inversion_psnr']:.2f} dB at {m['inversion_seconds_per_image']:.2f} s/image"
                      + amortised_headline(m)),
))  # fmt: skip
