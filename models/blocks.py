"""Convolutional encoder and decoder stacks shared by the conv families.

The layout follows DCGAN (Radford et al., 2016, arXiv:1511.06434): stride-2 convolutions
halve the resolution, stride-2 transposed convolutions double it, and the channel count
doubles at every halving. The number of stages follows from the image side: halve while
the side is even and above 8, so 28 -> 14 -> 7, 32 -> 16 -> 8, 64 -> 32 -> 16 -> 8.
"""

from __future__ import annotations

import torch
from torch import nn


def stage_plan(side: int) -> tuple[int, int]:
    """Return (number of stride-2 stages, side of the smallest feature map)."""
    stages = 0
    while side % 2 == 0 and side > 8:
        side //= 2
        stages += 1
    return stages, side


def spatial_code_channels(side: int, features: int) -> int:
    """Channels of a spatial code of ``features`` numbers on the smallest feature map."""
    _, small = stage_plan(side)
    if features % (small * small):
        raise ValueError(
            f"a spatial code on a {small}x{small} map needs latent_dim divisible by "
            f"{small * small}, got {features}"
        )
    return features // (small * small)


class ConvEncoder(nn.Module):
    """Image [B, C, H, W] -> features [B, out_features].

    With ``spatial`` the code keeps its layout: a 1x1 conv maps the smallest feature map to
    out_features / (s * s) channels, which are then flattened. A dense code (the default)
    is a linear layer over the whole flattened map.

    No layer runs at full resolution: on 2 CPU cores a 3x3 conv at 28x28 costs more than
    the rest of the network, and dropping it made training about 5x faster.
    """

    def __init__(
        self, channels: int, side: int, width: int, out_features: int, spatial: bool = False
    ) -> None:
        super().__init__()
        stages, small = stage_plan(side)
        layers: list[nn.Module] = []
        c_in, c = channels, width
        for _ in range(stages):
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.SiLU()]  # halve H, W
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            c_in, c = c, 2 * c
        self.features = nn.Sequential(*layers)  # [B, c_in, small, small]
        self.head: nn.Module
        if spatial:
            self.head = nn.Conv2d(c_in, spatial_code_channels(side, out_features), 1)
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * small * small, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # [B, c, s, s]
        return self.head(h).flatten(1)  # [B, out_features]


class ConvDecoder(nn.Module):
    """Code [B, in_features] -> logits [B, C, H, W] (apply a sigmoid for pixels)."""

    def __init__(
        self, in_features: int, channels: int, side: int, width: int, spatial: bool = False
    ) -> None:
        super().__init__()
        stages, small = stage_plan(side)
        c = width * 2 ** max(stages - 1, 0)
        self.code_shape: tuple[int, ...] = (in_features,)
        self.head: nn.Module
        if spatial:
            k = spatial_code_channels(side, in_features)
            self.code_shape = (k, small, small)
            self.head = nn.Sequential(nn.Conv2d(k, c, 1), nn.SiLU())
        else:
            self.head = nn.Sequential(
                nn.Linear(in_features, c * small * small),
                nn.SiLU(),
                nn.Unflatten(1, (c, small, small)),
            )
        layers: list[nn.Module] = []
        for i in range(stages):
            c_out = channels if i == stages - 1 else c // 2
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.SiLU()]
            layers += [nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1)]  # double H, W
            if i < stages - 1:
                layers.append(nn.SiLU())
            c = c_out
        if stages == 0:
            layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z.view(-1, *self.code_shape))  # [B, c, s, s]
        return self.features(h)  # [B, C, H, W] logits
