"""How each family is trained: its optimizers, its loss for one batch, its validation metrics.

A recipe owns the optimizers of one model. ``train_step`` takes a batch of clean images in
[0, 1] and returns the numbers shown on the progress bar; ``evaluate_batch`` returns sums
over the batch so the loop can average them over a whole split.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import LatentModel
from models.cgan import ConditionalGAN
from models.cvae import ConditionalVAE
from models.denoising import DenoisingAutoencoder, corrupt
from models.gan import GAN
from models.sparse import SparseAutoencoder
from models.stacked import StackedAutoencoder
from models.vae import VAE

from .data import Split, batches
from .distributed import LossForward, World


def psnr_sum(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Sum over the batch of per-image PSNR in dB for pixels in [0, 1]."""
    mse = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).sum())


class Recipe:
    """Training of a plain autoencoder; the other families override parts of it."""

    def __init__(self, model: LatentModel, args: argparse.Namespace) -> None:
        self.model = model
        self.args = args
        self.optimizers = self.build_optimizers()
        # Every training loss is computed through this: fn(model, *args). The trainer swaps
        # in a DistributedDataParallel wrapper under torchrun (see distributed.py).
        self.forward: Callable[..., Any] = LossForward(model)
        self.world = World()  # this process's place under torchrun; the trainer sets it

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.model.parameters(), lr=self.args.lr)}

    def reconstruction_loss(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of the per-image loss (MSE directly targets PSNR)."""
        if self.args.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        return F.mse_loss(torch.sigmoid(logits), x, reduction="sum") / x.shape[0]

    def model_input(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        loss = self.forward(
            lambda m, x_in: self.reconstruction_loss(m(x_in), x), self.model_input(x, generator)
        )
        self._step("model", loss)
        return {"loss": loss.item()}

    def _step(self, name: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        x_hat = self.model.reconstruct(x)
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        return {"mse": float(mse.sum()), "psnr": psnr_sum(x_hat, x)}

    def pretrain(self, split: Split, generator: torch.Generator) -> None:
        """Hook for families with a pretraining phase; most have none."""


class DenoisingRecipe(Recipe):
    model: DenoisingAutoencoder

    def model_input(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.corrupt_for_training(x, generator)

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        g = torch.Generator().manual_seed(0)
        noisy = corrupt(x, "gaussian", 0.3, g)
        out["psnr_sigma0.3"] = psnr_sum(self.model.reconstruct(noisy), x)
        return out


class SparseRecipe(Recipe):
    model: SparseAutoencoder

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:

        def losses(m: SparseAutoencoder) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            z = m.encode(x)
            rec = self.reconstruction_loss(m.decode_logits(z), x)
            loss = rec + m.config.sparsity_weight * m.sparsity_penalty(z)
            return loss, rec.detach(), z.detach().mean()

        loss, rec, mean_act = self.forward(losses)
        self._step("model", loss)
        return {"loss": loss.item(), "rec": rec.item(), "mean_act": mean_act.item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        out["mean_activation"] = float(self.model.encode(x).mean(1).sum())
        return out


class StackedRecipe(Recipe):
    """Greedy layer-wise pretraining (Bengio et al., 2006), then end-to-end fine-tuning."""

    model: StackedAutoencoder

    def pretrain(self, split: Split, generator: torch.Generator) -> None:
        """Train each (encoder, decoder) pair in turn for ``--pretrain-epochs`` epochs."""
        for k in range(self.model.depth):
            params = [*self.model.encoders[k].parameters(), *self.model.decoders[k].parameters()]
            opt = torch.optim.Adam(params, lr=self.args.lr)
            for epoch in range(self.args.pretrain_epochs):
                bar = tqdm(
                    batches(split, self.args.batch_size, generator, True, self.world.shard),
                    total=len(split) // self.args.batch_size,
                    desc=f"pretrain layer {k + 1}/{self.model.depth} epoch {epoch + 1}",
                    leave=False,
                    disable=not self.world.is_main,
                )
                for step, (x, _) in enumerate(bar):
                    bar.set_postfix(loss=f"{self.pretrain_step(k, x, opt):.4f}")
                    if self.args.steps_per_epoch and step + 1 >= self.args.steps_per_epoch:
                        break

    def pretrain_step(self, k: int, x: torch.Tensor, opt: torch.optim.Optimizer) -> float:
        """Train pair k as a shallow autoencoder on the (fixed) codes of layers below k."""
        with torch.no_grad():
            h = x.flatten(1)
            for j in range(k):
                h = self.model.encode_layer(j, h)

        def layer_loss(m: StackedAutoencoder) -> torch.Tensor:
            out = m.decode_layer(k, m.encode_layer(k, h))
            if k == 0:
                return F.mse_loss(torch.sigmoid(out), h, reduction="sum") / x.shape[0]
            return F.mse_loss(out, h, reduction="sum") / x.shape[0]

        loss = self.forward(layer_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()


class VAERecipe(Recipe):
    model: VAE

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:

        def losses(m: VAE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            logits, mu, log_var = m(x)
            nll, kl = m.elbo_terms(x, logits, mu, log_var)
            return (nll + m.config.beta * kl).mean(), nll.detach(), kl.detach()

        loss, nll, kl = self.forward(losses)
        self._step("model", loss)
        return {"loss": loss.item(), "nll": nll.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        out = super().evaluate_batch(x, y)
        logits, mu, log_var = self.model(x)
        nll, kl = self.model.elbo_terms(x, logits, mu, log_var)
        out.update(neg_elbo=float((nll + kl).sum()), kl=float(kl.sum()))
        return out


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


class ConditionalGANRecipe(GANRecipe):
    """The GAN recipe with labels: fakes are drawn for the real batch's classes, and the
    projection critic scores each image against its class."""

    model: ConditionalGAN  # type: ignore[assignment]

    def latents(self, n: int, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.model.sample_latent(n, generator, labels=y)  # [n, K + classes]

    def score(self, m: GAN, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(m, ConditionalGAN)
        return m.criticize(images, y)

    def critic_objective(
        self, m: GAN, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hinge loss on the projection scores, plus (AC-GAN) the auxiliary head's class loss
        on the real images only, so the head learns what each class looks like."""
        assert isinstance(m, ConditionalGAN)
        real_score, real_logits = m.criticize_and_classify(real, y)
        fake_score = m.criticize(fake, y)
        aux = m.aux_class_loss(real_logits, y)
        return {"d_loss": GAN.critic_loss(real_score, fake_score) + aux, "d_class": aux.detach()}

    def generator_objective(
        self, m: GAN, fake: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hinge loss, plus (AC-GAN) the head's class loss on the fakes: the generator is
        rewarded when its fakes are recognised as the class they were drawn for."""
        assert isinstance(m, ConditionalGAN)
        fake_score, fake_logits = m.criticize_and_classify(fake, y)
        aux = m.aux_class_loss(fake_logits, y)
        return {"g_loss": GAN.generator_loss(fake_score) + aux, "g_class": aux.detach()}


class ClassifierRecipe(Recipe):
    """Cross-entropy with light augmentation: random shifts of up to 2 pixels."""

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
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


RECIPES: dict[str, type[Recipe]] = {
    "ae": Recipe,
    "dae": DenoisingRecipe,
    "sparse-ae": SparseRecipe,
    "stacked-ae": StackedRecipe,
    "vae": VAERecipe,
    "gan": GANRecipe,
    "cvae": ConditionalVAERecipe,
    "cgan": ConditionalGANRecipe,
    "classifier": ClassifierRecipe,
}


def cosine_factor(step: int, total: int, warmup: int = 100) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 5% (Loshchilov & Hutter, 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))
