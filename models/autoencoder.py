"""Plain convolutional autoencoder.

Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural Networks",
Science 313 (2006): an encoder maps an image to a low-dimensional code z and a decoder maps
z back; both are trained to minimise the reconstruction error. Here both halves are the
DCGAN-style conv stacks from ``blocks.py`` and the code is a dense vector.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import (
    ConfigError,
    LatentModel,
    ModelConfig,
    check_code_shape,
    check_images,
    check_positive,
    register,
)
from .blocks import ConvDecoder, ConvEncoder, spatial_code_channels
from .operations import Op


@dataclasses.dataclass
class AutoencoderConfig(ModelConfig):
    width: int = 32  # channels of the first conv layer; doubles at every stride-2 stage
    spatial_code: bool = False  # code keeps the smallest map's layout (see blocks.ConvEncoder)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "width")
        if not isinstance(self.spatial_code, bool):
            raise ConfigError(f"spatial_code must be true or false, got {self.spatial_code!r}")
        if self.spatial_code:
            try:
                spatial_code_channels(self.image_shape[1], self.latent_dim)
            except ValueError as exc:
                raise ConfigError(f"latent_dim: {exc}") from None


@register
class Autoencoder(LatentModel):
    family = "ae"
    config_class = AutoencoderConfig
    fits_latent_density = True
    operations = {
        "encode": Op("encode"),  # x [B, C, H, W] -> z [B, K]
        "decode": Op("decode"),  # z [B, K] -> x [B, C, H, W]
        "reconstruct": Op("reconstruct"),
    }
    example_config = {"latent_dim": 4, "width": 4}
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c, side, _ = config.image_shape
        spatial = config.spatial_code
        self.encoder = ConvEncoder(c, side, config.width, self.code_features(), spatial)
        self.decoder = ConvDecoder(config.latent_dim, c, side, config.width, spatial)

    def code_features(self) -> int:
        """Width of the encoder's output; the VAE doubles it for mean and log-variance."""
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> z [B, latent_dim]."""
        check_images(self, x)
        return self.encoder(x)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> logits [B, C, H, W]; the loss works on these."""
        check_code_shape(self, z)
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, latent_dim] -> x [B, C, H, W] in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> x_hat [B, C, H, W], both in [0, 1]."""
        return self.decode(self.encode(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training entry point: x [B, C, H, W] -> logits [B, C, H, W]."""
        return self.decode_logits(self.encode(x))
