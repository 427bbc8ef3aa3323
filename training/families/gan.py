"""The GAN: hinge loss with a spectrally normalised critic (Miyato et al. 2018), optionally
guided by the training labels (``--class-guidance``; ``--mixture-prior``: models/gan.py), scored by
the judge's class shares, Frechet distance on its features, and inversion PSNR."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from models import LatentModel
from models.gan import GAN

from ..data import Dataset, Split
from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import Metrics, amortised_headline, inversion_metrics, sample_metrics


class GANRecipe(Recipe):
    """One critic step and one generator step per batch, Adam(0.0, 0.9) as in Miyato et al."""

    model: GAN

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        betas = (0.0, 0.9)
        critic = list(self.model.critic.parameters())
        if getattr(self.model, "class_head", None) is not None:  # class guidance's head
            critic += list(self.model.class_head.parameters())  # type: ignore[union-attr]
        return {
            "generator": torch.optim.Adam(
                self.model.generator.parameters(), lr=self.args.lr, betas=betas
            ),
            "critic": torch.optim.Adam(critic, lr=self.args.lr_critic, betas=betas),
        }

    @property
    def projection(self) -> bool:
        """Whether the critic judges each image against its class (cgan.py's projection
        critic): a mixture prior's GAN, judging fakes against their components, and the cgan."""
        return self.model.prior_means is not None

    def begin(self, train: Split, resumed: bool) -> None:
        """A mixture prior's weights are the training labels' frequencies."""
        if self.model.prior_weights is not None and not resumed:
            counts = torch.bincount(train.labels, minlength=len(self.model.prior_weights))
            self.model.prior_weights.copy_(counts.float() / counts.sum())

    def latents(self, n: int, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Codes for a batch of fakes: [n, latent_dim]; with a mixture prior, each drawn from
        the component of its real batch-mate's class y."""
        if self.model.prior_means is not None:
            return self.model.component_latents(y, generator)
        return self.model.sample_latent(n, generator)

    def score(self, m: GAN, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The critic's score of images [B, C, H, W] whose classes are y: [B]."""
        return m.criticize(images, y if self.projection else None)

    def critic_objective(
        self, m: GAN, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The critic's loss ("d_loss") and any terms to show beside it: with a class head
        (guidance's, or the projection critic's AC-GAN head), plus its cross-entropy on the
        real images only, so that it learns what each class looks like."""
        if self.projection:
            real_score, real_logits = m.criticize_and_classify(real, y)
            aux = m.aux_class_loss(real_logits, y)
            loss = GAN.critic_loss(real_score, m.criticize(fake, y)) + aux
            return {"d_loss": loss, "d_class": aux.detach()}
        if m.class_head is None:
            return {"d_loss": GAN.critic_loss(self.score(m, real, y), self.score(m, fake, y))}
        real_score, logits = m.criticize_with_head(real)
        head = m.config.class_guidance * F.cross_entropy(logits, y)
        loss = GAN.critic_loss(real_score, self.score(m, fake, y)) + head
        return {"d_loss": loss, "d_class": head.detach()}

    def generator_objective(
        self, m: GAN, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The generator's loss ("g_loss") and any terms to show beside it: with the
        projection critic's AC-GAN head, plus its cross-entropy on the fakes (rewarded when
        they are recognised as their class); with class guidance, the CatGAN terms."""
        if self.projection:
            fake_score, fake_logits = m.criticize_and_classify(fake, y)
            aux = m.aux_class_loss(fake_logits, y)
            return {"g_loss": GAN.generator_loss(fake_score) + aux, "g_class": aux.detach()}
        if m.class_head is None:
            return {"g_loss": GAN.generator_loss(self.score(m, fake, y))}
        fake_score, logits = m.criticize_with_head(fake)
        guide = m.guidance_loss(logits)
        return {"g_loss": GAN.generator_loss(fake_score) + guide, "g_class": guide.detach()}

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
