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


# For kernel 4, stride 2, padding 1: output row 2m + a receives (kernel tap, input row m + d)
# for these two (tap, d) pairs; the same holds for columns.
_PHASE_TAPS = (((1, 0), (3, -1)), ((2, 0), (0, 1)))


class ImageConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's last layer: a stride-2 transposed convolution (kernel 4, padding 1) to
    the image's few channels, with the parameters and results of ``nn.ConvTranspose2d``.

    Without gradients (serving, evaluation) it computes the layer from its definition
    (Dumoulin & Visin, "A guide to convolution arithmetic for deep learning",
    arXiv:1603.07285): each input pixel scales the kernel, one matrix product
    [B*H*W, C_in] @ [C_in, C_out*4*4], and the 4x4 patches are added into the output at
    stride 2. oneDNN's transposed convolution with 1 to 3 output channels runs at a small
    fraction of its usual rate: this is 5x faster for 32 -> 1 channels at 14x14 and was
    15% of the ae-fashion forward (bench/README.md). With gradients (training) it is
    exactly ``nn.ConvTranspose2d``, as it is for inputs of fewer than ``MIN_PIXELS`` pixels,
    where the 16 small additions cost more than they save (the crossover measured between
    2 and 4 images of 14x14).
    """

    MIN_PIXELS = 512  # B * H * W

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        b, c_in, h, w = x.shape
        if torch.is_grad_enabled() or output_size is not None or b * h * w < self.MIN_PIXELS:
            return super().forward(x, output_size)
        c_out, bias = self.out_channels, self.bias
        assert bias is not None  # built with one (__init__)
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c_in)  # [B*H*W, C_in]
        patches = (rows @ self.weight.reshape(c_in, c_out * 16)).view(b, h, w, c_out, 4, 4)
        out = x.new_empty(b, h, 2, w, 2, c_out)  # [B, H, row phase, W, column phase, C_out]
        for a, row_taps in enumerate(_PHASE_TAPS):
            for p, col_taps in enumerate(_PHASE_TAPS):
                phase = out[:, :, a, :, p]  # [B, H, W, C_out]: output pixels (2m + a, 2n + p)
                (ky, _), (kx, _) = row_taps[0], col_taps[0]  # the d = 0 taps cover every pixel
                torch.add(patches[..., ky, kx], bias, out=phase)
                for ky, dy in row_taps:
                    for kx, dx in col_taps:
                        if dy or dx:
                            phase[:, _dst(dy, h), _dst(dx, w)] += patches[
                                :, _src(dy, h), _src(dx, w), :, ky, kx
                            ]
        return out.view(b, 2 * h, 2 * w, c_out).permute(0, 3, 1, 2)  # [B, C_out, 2H, 2W]


def _src(d: int, n: int) -> slice:
    """Input rows m + d for the output rows ``_dst(d, n)``."""
    return slice(max(d, 0), n + min(d, 0))


def _dst(d: int, n: int) -> slice:
    return slice(max(-d, 0), n + min(-d, 0))


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
            if i < stages - 1:
                layers += [
                    nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1),
                    nn.SiLU(),
                ]  # double H, W
            else:
                layers.append(ImageConvTranspose2d(c, c_out))  # double H, W
            c = c_out
        if stages == 0:
            layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z.view(-1, *self.code_shape))  # [B, c, s, s]
        return self.features(h)  # [B, C, H, W] logits
