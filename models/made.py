"""MADE: Masked Autoencoder for Distribution Estimation.

Germain, Gregor, Murray & Larochelle, ICML 2015 (arXiv:1502.03509). An MLP whose weight
matrices are masked so that output d depends only on inputs 1..d-1 (in raster order): one
pass gives every conditional p(x_d | x_<d), so log p(x) = sum_d log p(x_d | x_<d) is exact.
Each hidden unit k gets a degree m(k) in [1, D-1] and may see inputs of degree <= m(k);
output d sees units of degree < d (eq. 12-13 of the paper). The masks are drawn from
``mask_seed`` (torch's CPU generator, the same on every machine) when the model is built.

Each pixel's value is a discretized logistic mixture over its 256 levels (logistic.py,
Salimans et al. 2017) instead of the paper's Bernoulli, so the likelihood is the 8-bit
discrete one, comparable with the PixelCNN's. Sampling takes D passes (autoregressive.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .autoregressive import sample_made
from .base import ConfigError, LatentModel, ModelConfig, check_images, check_positive, register
from .logistic import draw_noise, log_prob, quantize, to_unit
from .operations import Density, Op, SearchBudget


@dataclasses.dataclass
class MADEConfig(ModelConfig):
    latent_dim: int = 0  # no code
    hidden_sizes: tuple[int, ...] = (384,)
    mixtures: int = 2
    mask_seed: int = 0

    has_code: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(self.hidden_sizes)
        super().__post_init__()
        check_positive(self, "mixtures")
        if not self.hidden_sizes or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden_sizes
        ):
            raise ConfigError(
                f"hidden_sizes must be positive integers, got {list(self.hidden_sizes)}"
            )


class MaskedLinear(nn.Linear):
    """A linear layer whose weight [out, in] is multiplied by a fixed 0/1 mask."""

    mask: torch.Tensor

    def __init__(self, d_in: int, d_out: int, mask: torch.Tensor) -> None:
        super().__init__(d_in, d_out)
        # not saved: rebuilt from the config's mask_seed (made_masks), which keeps the file
        # to the weights (the output mask alone is as large as the output layer)
        self.register_buffer("mask", mask.to(torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_masks(dims: int, hidden: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    """Masks [out, in] of each layer for inputs in raster order (degree d + 1 for pixel d)."""
    g = torch.Generator().manual_seed(seed)
    degrees = [torch.arange(1, dims + 1)]
    for h in hidden:
        low = int(degrees[-1].min().clamp(max=dims - 1))
        degrees.append(torch.randint(low, dims, (h,), generator=g))  # in [low, D - 1]
    masks = [(d_out[:, None] >= d_in[None, :]) for d_in, d_out in itertools.pairwise(degrees)]
    masks.append(degrees[0][:, None] > degrees[-1][None, :])  # output d sees degree < d
    return [m.to(torch.float32) for m in masks]


@register
class MADE(LatentModel):
    family = "made"
    config_class = MADEConfig
    operations = {
        "generate": Op("sample_pixels", prepare="sample_noise", search=True),
        "likelihood": Op("log_likelihood", returns=("log_likelihood",)),
    }
    density = Density(kind="exact", convention="8-bit discrete", features="anomaly_features")
    example_config = {"hidden_sizes": [16], "mixtures": 2, "image_shape": [1, 8, 8]}
    config: MADEConfig

    def __init__(self, config: MADEConfig) -> None:
        super().__init__(config)
        self.dims = math.prod(config.image_shape)
        k = config.mixtures
        masks = made_masks(self.dims, config.hidden_sizes, config.mask_seed)
        sizes = [self.dims, *config.hidden_sizes]
        self.hidden = nn.ModuleList(
            MaskedLinear(a, b, m) for a, b, m in zip(sizes, sizes[1:], masks, strict=False)
        )
        # one output block per parameter kind: rows [3K * D] ordered (parameter, pixel)
        self.out = MaskedLinear(sizes[-1], 3 * k * self.dims, masks[-1].repeat(3 * k, 1))

    @property
    def mixtures(self) -> int:
        return self.config.mixtures

    def pixel_params(self, xu: torch.Tensor) -> torch.Tensor:
        """xu [B, D] in [-1, 1] -> mixture parameters [B, 3K, D] of every pixel given those
        before it."""
        return self.out(self.hidden_units(xu)).view(
            xu.shape[0], 3 * self.config.mixtures, self.dims
        )

    def hidden_units(self, xu: torch.Tensor) -> torch.Tensor:
        """xu [B, D] in [-1, 1] -> the last hidden layer [B, hidden]."""
        h = xu
        for layer in self.hidden:
            h = F.relu(layer(h))
        return h

    def anomaly_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> the last hidden layer's units [B, hidden] (the anomaly
        score's features: models/anomaly.py)."""
        check_images(self, x)
        return self.hidden_units(to_unit(quantize(x).flatten(1)))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats of x [B, C, H, W] in [0, 1] read as 8-bit values: [B]."""
        check_images(self, x)
        pixels = quantize(x).flatten(1)  # [B, D]
        params = self.pixel_params(to_unit(pixels))
        return log_prob(params, pixels, self.config.mixtures).sum(1)

    def sample_noise(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The randomness of ``n`` samples, scaled by the temperature: [n, K + 1, D]."""
        self.check_draw(n, labels)
        return draw_noise((n, self.dims), self.config.mixtures, generator, temperature)

    def sample_pixels(
        self, noise: torch.Tensor, budget: SearchBudget | None = None
    ) -> torch.Tensor:
        """noise [n, K + 1, D] -> images [n, C, H, W] in [0, 1], pixel by pixel."""
        return sample_made(self, noise, stop=budget.stop if budget else None)
