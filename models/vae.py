"""Variational autoencoder.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014 (arXiv:1312.6114);
beta weighting from Higgins et al., "beta-VAE", ICLR 2017.

- Prior p(z) = N(0, I); encoder q(z|x) = N(mu(x), diag(exp(log_var(x)))).
- Reparameterization trick: z = mu + exp(log_var / 2) * eps, eps ~ N(0, I), so the
  sample is a differentiable function of the encoder's outputs.
- Likelihood p(x|z): Bernoulli with mean sigmoid(decoder(z)) per pixel, read with grey
  levels in [0, 1] as probabilities (the convention of Kingma & Welling and of most
  Fashion-MNIST VAE numbers). Its log-likelihood is minus the binary cross-entropy; nats
  reported under it are comparable only with numbers under the same convention.
- ELBO = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), with the closed-form Gaussian KL
  (Kingma & Welling, appendix B): KL = -1/2 sum_j (1 + log_var_j - mu_j^2 - exp(log_var_j)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .autoencoder import Autoencoder, AutoencoderConfig
from .base import check_images, check_range, register
from .operations import Density, Op


@dataclasses.dataclass
class VAEConfig(AutoencoderConfig):
    latent_dim: int = 16
    beta: float = 1.0  # weight of the KL term; 1 gives the true ELBO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("beta", self.beta, 0.0, 1e3)


@register
class VAE(Autoencoder):
    family = "vae"
    config_class = VAEConfig
    operations = {
        "encode": Op("encode_distribution", returns=("mean", "log_var")),  # latent = mean
        "decode": Op("decode"),
        "reconstruct": Op("reconstruct"),
        "generate": Op("decode", prepare="sample_latent"),  # codes from the prior, decoded
        "likelihood": Op("log_likelihood", returns=("log_likelihood",), trace=False),  # samples=
    }
    density = Density(
        kind="lower bound (ELBO)", convention="Bernoulli on grey levels", takes_samples=True
    )
    example_config = {"latent_dim": 3, "width": 4}
    latent_prior = "normal"
    fits_latent_density = False  # it has its own prior
    config: VAEConfig

    def code_features(self) -> int:
        return 2 * self.config.latent_dim  # mean and log-variance

    def encode_distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] -> (mu [B, K], log_var [B, K]) of q(z|x)."""
        check_images(self, x)
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var.clamp(-30.0, 20.0)  # keep exp(log_var) finite

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean: x [B, C, H, W] -> mu [B, K]."""
        return self.encode_distribution(x)[0]

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps with eps ~ N(0, I): [B, K]."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * log_var) * eps

    def forward(  # type: ignore[override]  # training needs mu and log_var too
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: x -> (logits [B, C, H, W], mu [B, K], log_var [B, K])."""
        mu, log_var = self.encode_distribution(x)
        z = self.reparameterize(mu, log_var)
        return self.decode_logits(z), mu, log_var

    def elbo_terms(
        self, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image (reconstruction NLL [B], KL [B]) in nats."""
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(dim=1)
        return nll, kl

    def log_importance_weights(
        self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for k samples: [B, samples].

        log-mean-exp over the samples gives the importance-weighted bound of Burda, Grosse &
        Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
        """
        mu, log_var = self.encode_distribution(x)  # [B, K]
        b = x.shape[0]
        z = self.reparameterize(
            mu.repeat_interleave(samples, 0), log_var.repeat_interleave(samples, 0), generator
        )  # [B * samples, K]
        logits = self.decode_logits(z)  # [B * samples, C, H, W]
        target = x.repeat_interleave(samples, 0)
        log_px = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        log_px = log_px.flatten(1).sum(1)  # [B * samples]
        log_2pi = math.log(2 * math.pi)
        log_pz = -0.5 * (z.pow(2) + log_2pi).sum(1)
        mu_r, lv_r = mu.repeat_interleave(samples, 0), log_var.repeat_interleave(samples, 0)
        log_qz = -0.5 * ((z - mu_r).pow(2) / lv_r.exp() + lv_r + log_2pi).sum(1)
        return (log_px + log_pz - log_qz).view(b, samples)

    def log_likelihood(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """A lower bound on log p(x) in nats [B]: the ELBO (analytic KL) with ``samples`` = 1,
        the importance-weighted bound with K = ``samples`` above (Burda et al. 2016).

        The noise is the same K draws for every row (common random numbers from a fixed
        seed), so an image's number does not depend on what it is batched with."""
        mu, log_var = self.encode_distribution(x)
        return bound_from_posterior(x, mu, log_var, samples, self.decode_logits)


@functools.lru_cache(maxsize=16)
def fixed_noise(samples: int, dim: int) -> torch.Tensor:
    """The K standard normal draws every row shares [K, dim]: the same tensor every call (a
    trace records it as a constant instead of replaying a generator)."""
    return torch.randn(samples, dim, generator=torch.Generator().manual_seed(0))


def bound_from_posterior(
    x: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    samples: int,
    to_logits: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """ELBO (``samples`` = 1) or IW bound [B] of images x [B, C, H, W] for the Gaussian
    posterior (mu, log_var) [B, K] and a Bernoulli decoder ``to_logits``: codes [N, K] ->
    logits [N, C, H, W]."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    b, k = mu.shape
    eps = fixed_noise(samples, k).to(mu.dtype)  # [S, K]
    z = mu.unsqueeze(1) + torch.exp(0.5 * log_var).unsqueeze(1) * eps  # [B, S, K]
    logits = to_logits(z.reshape(b * samples, k))
    target = x.repeat_interleave(samples, 0)
    log_px = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    log_px = log_px.flatten(1).sum(1).view(b, samples)  # [B, S]
    if samples == 1:
        kl = -0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(dim=1)
        return log_px[:, 0] - kl
    log_2pi = math.log(2 * math.pi)
    log_pz = -0.5 * (z.pow(2) + log_2pi).sum(2)  # [B, S]
    log_qz = -0.5 * (eps.pow(2).unsqueeze(0) + log_var.unsqueeze(1) + log_2pi).sum(2)
    return torch.logsumexp(log_px + log_pz - log_qz, 1) - math.log(samples)
