"""Conditional variational autoencoder.

Sohn, Lee & Yan, "Learning Structured Output Representation using Deep Conditional
Generative Models", NeurIPS 2015; Kingma et al., "Semi-Supervised Learning with Deep
Generative Models", NeurIPS 2014 (the M2 model, whose encoder also predicts the class).

- p(x | z, y): the VAE's Bernoulli decoder, fed the code [z, one_hot(y)] (conditioning.py).
- q(z | x) and q(y | x): one conv encoder gives the posterior mean and log-variance of z and
  class logits. At training time the decoder gets the true label, so z need not carry the
  class; the class head (cross-entropy, weight ``class_weight``) lets ``encode`` return a
  complete code for an image whose label nobody gives: [mu, softmax(class logits)].
- Loss per image: -ELBO(x | y) + class_weight * CE(y, q(y | x)),
  -ELBO(x | y) = BCE(x, decoder(z, y)) + beta * KL(q(z | x) || N(0, I)).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import LatentModel, check_images, check_latents, check_range, register
from .blocks import ConvDecoder, ConvEncoder
from .conditioning import ConditionalCode, check_class_names
from .vae import VAE, VAEConfig


@dataclasses.dataclass
class CVAEConfig(VAEConfig):
    class_names: tuple[str, ...] = ("0", "1")  # one name per class, in label order
    class_weight: float = 1.0  # weight of the encoder's class cross-entropy

    def __post_init__(self) -> None:
        super().__post_init__()
        self.class_names = check_class_names(self.class_names)
        check_range("class_weight", self.class_weight, 0.0, 1e3)


@register
class ConditionalVAE(ConditionalCode, VAE):
    family = "cvae"
    config_class = CVAEConfig
    operations = frozenset({"encode", "decode", "reconstruct", "sample"})
    config: CVAEConfig

    def __init__(self, config: CVAEConfig) -> None:
        LatentModel.__init__(self, config)  # not Autoencoder.__init__: the halves differ
        c, side, _ = config.image_shape
        k = config.latent_dim
        self.encoder = ConvEncoder(c, side, config.width, 2 * k + len(config.class_names))
        self.decoder = ConvDecoder(k + len(config.class_names), c, side, config.width)

    def encode_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (mu [B, K], log_var [B, K], class logits [B, num_classes])."""
        check_images(self, x)
        k = self.noise_dim
        h = self.encoder(x)
        return h[:, :k], h[:, k : 2 * k].clamp(-30.0, 20.0), h[:, 2 * k :]

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (mu, log_var) of q(z|x), each [B, K] (the noise part of the code)."""
        mu, log_var, _ = self.encode_parts(x)
        return mu, log_var

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> code [B, K + num_classes]: [mu, softmax(class logits)]."""
        mu, _, logits = self.encode_parts(x)
        return torch.cat([mu, torch.softmax(logits, dim=1)], dim=1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """code [B, K + num_classes] -> logits [B, C, H, W]."""
        check_latents(self, z)
        return self.decoder(z)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: x [B, C, H, W], labels [B] ->
        (image logits [B, C, H, W], mu [B, K], log_var [B, K], class logits [B, num_classes])."""
        mu, log_var, class_logits = self.encode_parts(x)
        z = self.reparameterize(mu, log_var)
        return self.decode_logits(self.join(z, labels)), mu, log_var, class_logits

    def loss_terms(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image (reconstruction NLL [B], KL [B], class cross-entropy [B]) in nats."""
        logits, mu, log_var, class_logits = self(x, labels)
        nll, kl = self.elbo_terms(x, logits, mu, log_var)
        return nll, kl, F.cross_entropy(class_logits, labels, reduction="none")
