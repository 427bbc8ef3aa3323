"""Denoising autoencoder and the corruption processes it is trained against.

Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with
Denoising Autoencoders", ICML 2008; Vincent et al., "Stacked Denoising Autoencoders",
JMLR 11 (2010). The network is the plain conv autoencoder; what differs is training: the
input is corrupted by q(x~ | x) and the loss compares the output with the clean x. One
"blind" model is trained over a range of kinds and levels, so at test time it needs to be
told neither.

``corrupt`` lives here (not in the trainer) because the service uses it too, to let a
front end demonstrate denoising on a clean upload.
"""

from __future__ import annotations

import dataclasses

import torch

from .autoencoder import Autoencoder, AutoencoderConfig
from .base import ConfigError, check_range, register

NOISE_KINDS = ("gaussian", "salt_pepper", "mask")


def corrupt(
    x: torch.Tensor,
    kind: str,
    level: float | torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Corrupt images x [B, C, H, W] in [0, 1]; the result is clamped to [0, 1].

    - ``gaussian``: add N(0, level^2) to every pixel (level is the standard deviation).
    - ``salt_pepper``: set a fraction ``level`` of pixels to 0 or 1 with equal odds.
    - ``mask``: set a fraction ``level`` of pixels to 0 (the masking noise of Vincent 2010).

    ``level`` is a float or a tensor [B] giving each image its own level.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    lv = torch.as_tensor(level, dtype=x.dtype, device=x.device)
    if lv.ndim == 1:
        lv = lv.view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (x + lv * noise).clamp(0.0, 1.0)
    hit = torch.rand(x.shape, generator=generator, device=x.device) < lv  # [B, C, H, W]
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


@dataclasses.dataclass
class DenoisingConfig(AutoencoderConfig):
    noise_kinds: tuple[str, ...] = NOISE_KINDS  # kinds drawn per training image
    noise_probs: tuple[float, ...] | None = None  # chance of each kind (None: uniform)
    gaussian_max: float = 0.5  # Gaussian sigma drawn from U(0, gaussian_max)
    salt_pepper_max: float = 0.3  # salt-and-pepper fraction drawn from U(0, salt_pepper_max)
    mask_max: float = 0.5  # masked fraction drawn from U(0, mask_max)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.noise_kinds = tuple(self.noise_kinds)
        unknown = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if not self.noise_kinds or unknown:
            raise ConfigError(
                f"noise_kinds must be a non-empty subset of {list(NOISE_KINDS)}, "
                f"got {list(self.noise_kinds)}"
            )
        if self.noise_probs is not None:
            self.noise_probs = tuple(self.noise_probs)
            if len(self.noise_probs) != len(self.noise_kinds) or any(
                not isinstance(p, int | float) or isinstance(p, bool) or p < 0
                for p in self.noise_probs
            ):
                raise ConfigError(
                    f"noise_probs must give one non-negative weight per noise kind "
                    f"({len(self.noise_kinds)}), got {list(self.noise_probs)}"
                )
            if sum(self.noise_probs) <= 0:
                raise ConfigError("noise_probs must not all be zero")
        for name in ("gaussian_max", "salt_pepper_max", "mask_max"):
            check_range(name, getattr(self, name), 0.0, 1.0)

    def level_max(self, kind: str) -> float:
        return {"gaussian": self.gaussian_max, "salt_pepper": self.salt_pepper_max}.get(
            kind, self.mask_max
        )


@register
class DenoisingAutoencoder(Autoencoder):
    family = "dae"
    config_class = DenoisingConfig
    example_config = {"latent_dim": 4, "width": 4}
    config: DenoisingConfig

    def corrupt_for_training(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Blind training corruption: each image gets a random kind and level from the config."""
        kinds, probs = self.config.noise_kinds, self.config.noise_probs
        if probs is None:
            which = torch.randint(len(kinds), (x.shape[0],), generator=generator, device=x.device)
        else:
            weights = torch.tensor(probs, dtype=torch.float32, device=x.device)
            which = torch.multinomial(weights, x.shape[0], replacement=True, generator=generator)
        out = x.clone()
        for i, kind in enumerate(kinds):
            rows = which == i
            if rows.any():
                levels = torch.rand(int(rows.sum()), generator=generator, device=x.device)
                out[rows] = corrupt(x[rows], kind, levels * self.config.level_max(kind), generator)
        return out
