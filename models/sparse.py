"""Sparse autoencoder.

Ng, "Sparse autoencoder", CS294A lecture notes (2011); Lee, Ekanadham & Ng, "Sparse deep
belief net model for visual area V2", NIPS 2007. The code units are sigmoids, and training
adds a penalty that keeps each unit's mean activation rho_hat_j (over a batch) near a small
target rho:

    KL:  sum_j  rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j))
    L1:  mean_b sum_j |z_bj|

so that each image is described by a few strongly active units.
"""

from __future__ import annotations

import dataclasses

import torch

from .autoencoder import Autoencoder, AutoencoderConfig
from .base import ConfigError, check_range, register


@dataclasses.dataclass
class SparseConfig(AutoencoderConfig):
    latent_dim: int = 64
    sparsity_penalty: str = "kl"  # "kl" (toward sparsity_target) or "l1"
    sparsity_target: float = 0.05  # rho: the mean activation each code unit should have
    sparsity_weight: float = 0.1  # beta: weight of the penalty in the loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity_penalty not in ("kl", "l1"):
            raise ConfigError(
                f"sparsity_penalty must be 'kl' or 'l1', got {self.sparsity_penalty!r}"
            )
        check_range("sparsity_target", self.sparsity_target, 1e-4, 0.5)
        check_range("sparsity_weight", self.sparsity_weight, 0.0, 1e3)


@register
class SparseAutoencoder(Autoencoder):
    family = "sparse-ae"
    config_class = SparseConfig
    example_config = {"latent_dim": 6, "width": 4}
    config: SparseConfig

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> z [B, latent_dim], each unit a sigmoid in (0, 1)."""
        return torch.sigmoid(super().encode(x))

    def sparsity_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """Penalty on a batch of codes z [B, latent_dim] -> scalar (unweighted)."""
        if self.config.sparsity_penalty == "l1":
            return z.abs().sum(dim=1).mean()
        rho = self.config.sparsity_target
        rho_hat = z.mean(dim=0).clamp(1e-6, 1 - 1e-6)  # [latent_dim]
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return kl.sum()
