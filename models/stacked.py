"""Stacked autoencoder with optional tied weights and greedy layer-wise pretraining.

Bengio, Lamblin, Popovici & Larochelle, "Greedy Layer-Wise Training of Deep Networks",
NIPS 2006; Vincent et al., JMLR 11 (2010), section 3.5. A stack of fully connected layers
D -> h_1 -> ... -> h_L = z and its mirror image back to D. With ``tied_weights`` the
decoder reuses each encoder matrix transposed (W_k^T), halving the parameters.

Greedy pretraining trains pair k (encoder layer k, decoder layer k) as a shallow
autoencoder on the codes of the layers below it; ``encode_layer`` and ``decode_layer``
expose the pairs, and the trainer runs the schedule.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    ConfigError,
    LatentModel,
    ModelConfig,
    check_code_shape,
    check_images,
    register,
)
from .operations import Op


@dataclasses.dataclass
class StackedConfig(ModelConfig):
    hidden_sizes: tuple[int, ...] = (512, 256)  # widths between the image and the code
    tied_weights: bool = True  # decoder layer k uses encoder weight k transposed

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden_sizes = tuple(self.hidden_sizes)
        if not all(isinstance(h, int) and h > 0 for h in self.hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive integers, got {self.hidden_sizes}")
        if not isinstance(self.tied_weights, bool):
            raise ConfigError(f"tied_weights must be true or false, got {self.tied_weights!r}")

    @property
    def layer_sizes(self) -> list[int]:
        """[D, h_1, ..., h_{L-1}, latent_dim]."""
        return [math.prod(self.image_shape), *self.hidden_sizes, self.latent_dim]


@register
class StackedAutoencoder(LatentModel):
    family = "stacked-ae"
    config_class = StackedConfig
    fits_latent_density = True
    operations = {
        "encode": Op("encode"),  # x [B, C, H, W] -> z [B, K]
        "decode": Op("decode"),  # z [B, K] -> x [B, C, H, W]
        "reconstruct": Op("reconstruct"),
    }
    example_config = {"latent_dim": 4, "hidden_sizes": [16, 8]}
    config: StackedConfig

    def __init__(self, config: StackedConfig) -> None:
        super().__init__(config)
        sizes = config.layer_sizes
        self.encoders = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        # decoders[k] maps layer k+1 back to layer k; with tied weights only its bias is used.
        self.decoders = nn.ModuleList(nn.Linear(b, a) for a, b in itertools.pairwise(sizes))
        if config.tied_weights:
            for dec in self.decoders:
                del dec.weight  # the transposed encoder weight stands in for it
                dec.register_parameter("weight", None)

    @property
    def depth(self) -> int:
        return len(self.encoders)

    def encode_layer(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Layer k of the encoder: [B, sizes[k]] -> [B, sizes[k+1]]; the code is linear."""
        h = self.encoders[k](h)
        return h if k == self.depth - 1 else F.silu(h)

    def decode_layer(self, k: int, h: torch.Tensor) -> torch.Tensor:
        """Mirror of ``encode_layer``: [B, sizes[k+1]] -> [B, sizes[k]]; pixels are logits."""
        enc, dec = self.encoders[k], self.decoders[k]
        assert isinstance(enc, nn.Linear) and isinstance(dec, nn.Linear)
        weight = enc.weight.t() if self.config.tied_weights else dec.weight
        h = F.linear(h, weight, dec.bias)
        return h if k == 0 else F.silu(h)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> z [B, latent_dim]."""
        check_images(self, x)
        h = x.flatten(1)  # [B, D]
        for k in range(self.depth):
            h = self.encode_layer(k, h)
        return h

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> logits [B, C, H, W]."""
        check_code_shape(self, z)
        h = z
        for k in reversed(range(self.depth)):
            h = self.decode_layer(k, h)
        return h.view(-1, *self.image_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decode_logits(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_logits(self.encode(x))
