"""The discretized logistic mixture: an exact distribution over 8-bit pixel values.

Salimans, Karpathy, Chen & Kingma, "PixelCNN++", ICLR 2017, section 2.1. A pixel value
v in {0, ..., 255} is rescaled to x = 2 v / 255 - 1 in [-1, 1]; each of K logistic components
(mean mu_k, scale s_k) puts on x the mass of the bin [x - 1/255, x + 1/255], the two edge bins
take the tails (-inf and +inf). The masses of the 256 bins sum to exactly 1 for any
parameters, so ``log_prob`` is an exact log-likelihood of 8-bit data, in nats.

Parameters come as ``params [B, 3K, ...]``: K mixture logits, K means, K log-scales, over any
trailing shape (pixels). Shared by the autoregressive families (pixelcnn.py, made.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LEVELS = 256
HALF_BIN = 1.0 / (LEVELS - 1)  # half the width of a bin on [-1, 1]
MIN_LOG_SCALE = -7.0


def split(params: torch.Tensor, mixtures: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """params [B, 3K, ...] -> (logits, means, log_scales), each [B, K, ...]."""
    if params.shape[1] != 3 * mixtures:
        raise ValueError(f"expected {3 * mixtures} parameter channels, got {params.shape[1]}")
    logits, means, log_scales = params.chunk(3, dim=1)
    return logits, means, log_scales.clamp_min(MIN_LOG_SCALE)


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """8-bit values (any dtype holding 0..255) -> the model's scale [-1, 1]."""
    return pixels.float() * (2.0 / (LEVELS - 1)) - 1.0


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the nearest 8-bit value, as float 0..255."""
    return (x.clamp(0, 1) * (LEVELS - 1)).round()


def log_prob(params: torch.Tensor, pixels: torch.Tensor, mixtures: int) -> torch.Tensor:
    """log P(pixel) in nats for 8-bit ``pixels`` [B, ...] under ``params`` [B, 3K, ...]: [B, ...].

    The numerically careful form of PixelCNN++'s reference code: log-CDFs by softplus at the
    edges, and the log-density at the bin's centre where the bin's mass underflows float32.
    """
    logits, means, log_scales = split(params, mixtures)
    x = to_unit(pixels).unsqueeze(1)  # [B, 1, ...]
    centred = x - means
    inv_s = torch.exp(-log_scales)
    plus = inv_s * (centred + HALF_BIN)
    minus = inv_s * (centred - HALF_BIN)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_cdf_plus = plus - F.softplus(plus)  # log sigmoid(plus): the bin of 0
    log_one_minus_cdf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the bin of 255
    mid = inv_s * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)  # log density at the centre
    log_mid = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp_min(1e-12)),
        log_pdf_mid + math.log(2 * HALF_BIN),  # mass ~ density * bin width
    )
    log_bin = torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid)
    )
    return torch.logsumexp(log_bin + F.log_softmax(logits, dim=1), dim=1)


def sample(params: torch.Tensor, noise: torch.Tensor, mixtures: int) -> torch.Tensor:
    """Draw 8-bit values from ``params`` [B, 3K, ...] with ``noise`` [B, K + 1, ...]: [B, ...].

    ``noise`` holds K Gumbel draws (choosing the component: argmax of logits + Gumbel) and one
    standard logistic draw (the value: mu + s * noise), both already multiplied by the
    temperature: at temperature T the component is chosen from softmax(logits / T) and the
    value's spread is T s; T = 0 gives the most likely component's mean.
    """
    logits, means, log_scales = split(params, mixtures)
    if noise.shape[1] != mixtures + 1:
        raise ValueError(f"expected noise with {mixtures + 1} channels, got {noise.shape[1]}")
    gumbel, logistic = noise[:, :mixtures], noise[:, mixtures]
    choice = (logits + gumbel).argmax(dim=1, keepdim=True)  # [B, 1, ...]
    mu = means.gather(1, choice).squeeze(1)
    s = log_scales.gather(1, choice).squeeze(1).exp()
    x = (mu + s * logistic).clamp(-1, 1)
    return ((x + 1) * ((LEVELS - 1) / 2)).round()


def draw_noise(
    shape: tuple[int, ...], mixtures: int, generator: torch.Generator | None, temperature: float
) -> torch.Tensor:
    """The randomness ``sample`` consumes, for values of ``shape`` [B, ...]: [B, K + 1, ...]."""
    b, *rest = shape
    u = torch.rand(b, mixtures + 1, *rest, generator=generator).clamp(1e-6, 1 - 1e-6)
    gumbel = -torch.log(-torch.log(u[:, :mixtures]))
    logistic = torch.log(u[:, mixtures:]) - torch.log1p(-u[:, mixtures:])
    return torch.cat([gumbel, logistic], dim=1) * temperature
