"""Gated PixelCNN: an exact likelihood over 8-bit images, sampled pixel by pixel.

- van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu, "Conditional Image
  Generation with PixelCNN Decoders", NIPS 2016: gated layers tanh(a) * sigmoid(b), and two
  stacks that remove the blind spot of masked convolutions. The vertical stack at (i, j) sees
  every pixel of the rows above i within its reach; the horizontal stack sees the pixels left
  of j in row i and, through a 1x1 link, the vertical stack. Masks are written as shifts and
  one-sided padding (as in PixelCNN++'s code), so no weight is ever multiplied by zero.
- Salimans, Karpathy, Chen & Kingma, "PixelCNN++", ICLR 2017: each pixel's value is a
  discretized logistic mixture (logistic.py), so log p(x) is exact for 8-bit data; the
  channels of a colour pixel are modelled independently given the pixels before it.
- Dilated vertical convolutions (as in WaveNet, van den Oord et al. 2016) let a few layers
  reach the whole image.

p(x) = prod_{i,j} p(x_ij | x_<ij): ``log_likelihood`` sums the log-probabilities of all pixels
in one pass. Sampling is sequential (``models/autoregressive.py``): the vertical stack is run
once per row on the band of rows it can see, the horizontal stack once per pixel on one row
(the row-wise caching of Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models", without its per-layer queues).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .autoregressive import sample_pixelcnn
from .base import ConfigError, LatentModel, ModelConfig, check_images, check_positive, register
from .logistic import draw_noise, log_prob, quantize, to_unit
from .operations import Density, Op, SearchBudget


@dataclasses.dataclass
class PixelCNNConfig(ModelConfig):
    latent_dim: int = 0  # no code: a PixelCNN models the pixels directly
    channels: int = 48  # hidden feature maps of each stack
    kernel: int = 3  # width of the vertical stack's kernel (odd); its height is kernel // 2 + 1
    dilations: tuple[int, ...] = (1, 2, 1, 2, 4, 1, 2, 1)  # one gated layer each, vertical stack
    mixtures: int = 5  # logistic components per pixel channel

    has_code: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.dilations = tuple(self.dilations)
        super().__post_init__()
        check_positive(self, "channels", "kernel", "mixtures")
        if self.kernel % 2 == 0:
            raise ConfigError(f"kernel must be odd, got {self.kernel}")
        if not self.dilations or not all(isinstance(d, int) and d >= 1 for d in self.dilations):
            raise ConfigError(f"dilations must be positive integers, got {list(self.dilations)}")


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (the top row becomes zeros): [B, C, H, W]."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right (the left column becomes zeros): [B, C, H, W]."""
    return F.pad(x, (1, 0))[..., :-1]


def gate(x: torch.Tensor) -> torch.Tensor:
    """[B, 2C, ...] -> tanh(a) * sigmoid(b) [B, C, ...]."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks. The first layer reads the image and is shifted so that no
    position sees its own pixel (mask A); the others may see their own position of the
    previous layer (mask B), whose features already exclude it."""

    def __init__(self, c_in: int, c: int, kernel: int, dilation: int, first: bool) -> None:
        super().__init__()
        self.first, self.kernel, self.dilation = first, kernel, dilation
        kh = kernel // 2 + 1
        self.v_conv = nn.Conv2d(c_in, 2 * c, (kh, kernel), dilation=(dilation, 1))
        self.h_conv = nn.Conv2d(c_in, 2 * c, (1, kh))
        self.link = nn.Conv2d(2 * c, 2 * c, 1)
        self.h_out = nn.Conv2d(c, c, 1)

    def rows_seen(self) -> int:
        """How many rows above its own the vertical stack adds to the receptive field."""
        return (self.kernel // 2) * self.dilation + (1 if self.first else 0)

    def vertical(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v [B, C_in, H, W] -> (next v [B, C, H, W], link into the horizontal stack [B, 2C, H, W])."""
        top = (self.kernel // 2) * self.dilation
        pre = self.v_conv(F.pad(v, (self.kernel // 2, self.kernel // 2, top, 0)))
        if self.first:
            pre = down_shift(pre)  # row i sees rows < i only
        return gate(pre), self.link(pre)

    def horizontal(self, h: torch.Tensor, link: torch.Tensor) -> torch.Tensor:
        """h [B, C_in, H, W] with the link [B, 2C, H, W] -> next h [B, C, H, W]. Works row by
        row: the kernel is one row high, so any number of rows can be given."""
        pre = self.h_conv(F.pad(h, (self.kernel // 2, 0)))
        if self.first:
            pre = right_shift(pre)  # column j sees columns < j only
        out = self.h_out(gate(pre + link))
        return out if self.first else h + out


@register
class PixelCNN(LatentModel):
    family = "pixelcnn"
    config_class = PixelCNNConfig
    operations = {
        # sampling is a long sequential loop: marked search so it runs in the expensive lane
        # and stops between rows once nobody waits (budget.stop)
        "generate": Op("sample_pixels", prepare="sample_noise", search=True),
        "likelihood": Op("log_likelihood", returns=("log_likelihood",)),
    }
    density = Density(kind="exact", convention="8-bit discrete", features="anomaly_features")
    example_config = {"channels": 4, "dilations": [1, 2], "mixtures": 2}
    config: PixelCNNConfig

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__(config)
        c_img, c = config.image_shape[0], config.channels
        self.layers: list[GatedLayer] = nn.ModuleList(  # type: ignore[assignment]  # typed items
            GatedLayer(c_img if i == 0 else c, c, config.kernel, d, first=i == 0)
            for i, d in enumerate(config.dilations)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, c_img * 3 * config.mixtures, 1)
        )

    @property
    def mixtures(self) -> int:
        return self.config.mixtures

    @property
    def rows_seen(self) -> int:
        """Rows above a pixel that can influence it (the band the sampler recomputes)."""
        return sum(layer.rows_seen() for layer in self.layers)

    @property
    def cols_seen(self) -> int:
        """Columns left of a pixel in its row that can influence it through the horizontal stack."""
        return 1 + len(self.layers) * (self.config.kernel // 2)

    def links(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The vertical stack over x [B, C, H, W] in [-1, 1]: each layer's link [B, 2C, H, W]."""
        v, out = x, []
        for layer in self.layers:
            v, link = layer.vertical(v)
            out.append(link)
        return out

    def params_from(self, x: torch.Tensor, links: list[torch.Tensor]) -> torch.Tensor:
        """The horizontal stack and the head: x [B, C, h, W] in [-1, 1] and the links of those
        rows -> mixture parameters [B, C, 3K, h, W]."""
        out = self.head(self.horizontal_stack(x, links))
        b, _, rows, w = out.shape
        return out.view(b, self.image_shape[0], 3 * self.config.mixtures, rows, w)

    def horizontal_stack(self, x: torch.Tensor, links: list[torch.Tensor]) -> torch.Tensor:
        """x [B, C, h, W] in [-1, 1] and the links of those rows -> the last layer's
        horizontal stack [B, channels, h, W]."""
        h = x
        for layer, link in zip(self.layers, links, strict=True):
            h = layer.horizontal(h, link)
        return h

    def anomaly_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> the last layer's horizontal stack averaged over each
        quarter of the image [B, channels * 4] (the anomaly score's features:
        models/anomaly.py; the quarters keep where things are, which an upside-down image
        moves)."""
        check_images(self, x)
        u = to_unit(quantize(x))
        h = self.horizontal_stack(u, self.links(u))  # [B, channels, H, W]
        _, height, width = self.image_shape
        if height % 2 or width % 2:  # quarters that share a middle row or column
            return F.adaptive_avg_pool2d(h, 2).flatten(1)
        # even sides: the same means as a fixed pool, which ONNX can export (the adaptive
        # pool's input size is not known to the exporter, so the call stayed a trace)
        return F.avg_pool2d(h, (height // 2, width // 2)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [-1, 1] -> mixture parameters [B, C, 3K, H, W] for every pixel."""
        return self.params_from(x, self.links(x))

    def pixel_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] (quantized to 8 bits) -> log p per pixel channel, nats."""
        check_images(self, x)
        pixels = quantize(x)
        params = self(to_unit(pixels))  # [B, C, 3K, H, W]
        b, c, k3, h, w = params.shape
        lp = log_prob(
            params.reshape(b * c, k3, h, w), pixels.reshape(b * c, h, w), self.config.mixtures
        )
        return lp.view(b, c, h, w)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) in nats of x [B, C, H, W] in [0, 1] read as 8-bit values: [B]."""
        return self.pixel_log_probs(x).flatten(1).sum(1)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """-log2 p(x) / (C H W): [B]."""
        return -self.log_likelihood(x) / (math.log(2) * math.prod(self.image_shape))

    def sample_noise(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The randomness of ``n`` samples, scaled by the temperature: [n, C, K + 1, H, W]."""
        self.check_draw(n, labels)
        c, h, w = self.image_shape
        k = self.config.mixtures
        noise = draw_noise((n * c, h, w), k, generator, temperature)  # [nC, K+1, H, W]
        return noise.view(n, c, k + 1, h, w)

    def sample_pixels(
        self, noise: torch.Tensor, budget: SearchBudget | None = None
    ) -> torch.Tensor:
        """noise [n, C, K + 1, H, W] -> images [n, C, H, W] in [0, 1], pixel by pixel
        (autoregressive.py). Stops early, returning what it has, if ``budget.stop()``."""
        return sample_pixelcnn(self, noise, stop=budget.stop if budget else None)
