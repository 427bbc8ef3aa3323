"""Conditional variational autoencoder.

Sohn, Lee & Yan, "Learning Structured Output Representation using Deep Conditional
Generative Models", NeurIPS 2015; Kingma et al., "Semi-Supervised Learning with Deep
Generative Models", NeurIPS 2014 (the M2 model, whose encoder also predicts the class).

- p(x | z, y): the VAE's Bernoulli decoder, fed the code [z, one_hot(y)] (conditioning.py).
- q(z | x, y) and q(y | x): a conv encoder gives features h [B, 2K] and class logits; the
  posterior's mean and log-variance are a linear map of [h, one_hot(y)]. Conditioning the
  posterior on y is what lets z drop the class (an encoder that sees only x keeps the class in
  z, and samples then ignore the requested class). At training time both halves get the true
  label; the class head (cross-entropy, weight ``class_weight``) lets ``encode`` handle an
  image whose label nobody gives: y is replaced by softmax(class logits), and the code is
  [mu(x, y_hat), y_hat].
- Loss per image: -ELBO(x | y) + class_weight * CE(y, q(y | x)),
  -ELBO(x | y) = BCE(x, decoder(z, y)) + beta * KL(q(z | x) || N(0, I)).
- Optional class consistency (``consistency_weight`` > 0), in the spirit of the auxiliary
  classifier of AC-GAN (Odena et al., ICML 2017) and the feedback of Hou et al.'s
  "Deep Feature Consistent VAE" (WACV 2017): images decoded from the *prior* for class y
  should be recognised as y by the model's own class head q(y | x). The head is frozen for
  this term (it keeps learning from real images only), so only the decoder moves: it learns
  to draw what tells the classes apart, where the ELBO alone draws a blurry average of tops.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LatentModel, check_code_shape, check_images, check_range, register
from .blocks import ConvDecoder, ConvEncoder
from .conditioning import ConditionalCode, check_class_names
from .operations import Op
from .vae import VAE, VAEConfig, bound_from_posterior


@dataclasses.dataclass
class CVAEConfig(VAEConfig):
    class_names: tuple[str, ...] = ("0", "1")  # one name per class, in label order
    class_weight: float = 1.0  # weight of the encoder's class cross-entropy
    consistency_weight: float = 0.0  # weight of the class consistency of prior samples

    def __post_init__(self) -> None:
        super().__post_init__()
        self.class_names = check_class_names(self.class_names)
        check_range("class_weight", self.class_weight, 0.0, 1e3)
        check_range("consistency_weight", self.consistency_weight, 0.0, 1e3)


@register
class ConditionalVAE(ConditionalCode, VAE):
    family = "cvae"
    config_class = CVAEConfig
    operations = {
        # the latent is the whole decodable code [mu, y_hat]; mean and log_var are of z alone
        "encode": Op("encode_posterior", returns=("latent", "mean", "log_var")),
        "decode": Op("decode"),
        "reconstruct": Op("reconstruct"),
        "generate": Op("decode", prepare="sample_latent"),
        "likelihood": Op("log_likelihood", returns=("log_likelihood",), trace=False),  # samples=
    }
    example_config = {"latent_dim": 3, "width": 4, "class_names": ["boot", "sandal", "bag"]}
    config: CVAEConfig

    def __init__(self, config: CVAEConfig) -> None:
        LatentModel.__init__(self, config)  # not Autoencoder.__init__: the halves differ
        c, side, _ = config.image_shape
        k = config.latent_dim
        n = len(config.class_names)
        self.encoder = ConvEncoder(c, side, config.width, 2 * k + n)  # h [B, 2K], logits [B, n]
        self.posterior = nn.Linear(2 * k + n, 2 * k)  # [h, y] -> [mu, log_var]
        self.decoder = ConvDecoder(k + n, c, side, config.width)

    def encode_parts(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] (and labels [B], else the predicted class) ->
        (mu [B, K], log_var [B, K], class logits [B, num_classes])."""
        check_images(self, x)
        k = self.noise_dim
        out = self.encoder(x)
        h, logits = out[:, : 2 * k], out[:, 2 * k :]
        if labels is None:
            y = torch.softmax(logits, dim=1)
        else:
            y = F.one_hot(labels, self.num_classes).to(h.dtype)
        stats = self.posterior(torch.cat([h, y], dim=1))
        return stats[:, :k], stats[:, k:].clamp(-30.0, 20.0), logits

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (mu, log_var) of q(z | x, predicted class), each [B, K]."""
        mu, log_var, _ = self.encode_parts(x)
        return mu, log_var

    def encode_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (code [B, K + num_classes] as ``encode`` gives it, mu [B, K], log_var [B, K])."""
        mu, log_var, logits = self.encode_parts(x)
        return torch.cat([mu, torch.softmax(logits, dim=1)], dim=1), mu, log_var

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> code [B, K + num_classes]: [mu(x, y_hat), y_hat = softmax(logits)]."""
        mu, _, logits = self.encode_parts(x)
        return torch.cat([mu, torch.softmax(logits, dim=1)], dim=1)

    def log_likelihood(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """A lower bound on log p(x) = log sum_y p(y) p(x | y) in nats [B], with a uniform
        p(y) over the classes: the VAE's bound of each p(x | y) (its ELBO, or its
        importance-weighted bound with K = ``samples``) for every class, log-sum-exp'ed.
        Every class is tried, so the number needs no label and no class guess."""
        check_images(self, x)
        b, n = x.shape[0], self.num_classes
        labels = torch.arange(n).repeat(b)  # [B * n]: every class for every image
        xs = x.repeat_interleave(n, 0)
        mu, log_var, _ = self.encode_parts(xs, labels)
        per_class = bound_from_posterior(
            xs,
            mu,
            log_var,
            samples,
            lambda z: self.decode_logits(self.join(z, labels.repeat_interleave(samples))),
        ).view(b, n)
        return torch.logsumexp(per_class, 1) - math.log(n)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """code [B, K + num_classes] -> logits [B, C, H, W]."""
        check_code_shape(self, z)
        return self.decoder(z)

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: x [B, C, H, W], labels [B] ->
        (image logits [B, C, H, W], mu [B, K], log_var [B, K], class logits [B, num_classes])."""
        mu, log_var, class_logits = self.encode_parts(x, labels)
        z = self.reparameterize(mu, log_var)
        return self.decode_logits(self.join(z, labels)), mu, log_var, class_logits

    def loss_terms(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image (reconstruction NLL [B], KL [B], class cross-entropy [B]) in nats."""
        logits, mu, log_var, class_logits = self(x, labels)
        nll, kl = self.elbo_terms(x, logits, mu, log_var)
        return nll, kl, F.cross_entropy(class_logits, labels, reduction="none")

    def consistency_terms(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-sample class cross-entropy [B] of the class head on images decoded from the
        prior, z ~ N(0, I), for classes ``labels`` [B]; its gradient reaches the decoder only."""
        codes = self.sample_latent(len(labels), generator, labels=labels)  # [B, K + classes]
        x = torch.sigmoid(self.decode_logits(codes))  # [B, C, H, W]
        frozen = {name: p.detach() for name, p in self.encoder.named_parameters()}
        out = torch.func.functional_call(self.encoder, frozen, (x,))  # [B, 2K + classes]
        return F.cross_entropy(out[:, 2 * self.noise_dim :], labels, reduction="none")
