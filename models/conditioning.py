"""The joint code of the class-conditional families: ``[z, class weights]``.

A conditional model (``cvae``, ``cgan``) decodes a code of ``latent_dim + num_classes``
numbers: the noise z, then one weight per class (a one-hot vector for one class; a mixture
of two while interpolating between classes). Keeping the class inside the code means every
operation of the API (decode, interpolate, arithmetic, the batching engine) works on
conditional models unchanged, and moving between classes is just moving in the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ConfigError, LatentModel


def check_class_names(names: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(names)
    if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"class_names must name at least 2 classes, got {list(names)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"class_names must be distinct, got {list(names)}")
    return names


class ConditionalCode(LatentModel):
    """Mixin for models whose code is ``[z [K], class weights [num_classes]]``."""

    conditional = True
    latent_prior = "normal, then one weight per class"

    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)  # type: ignore[attr-defined]

    @property
    def noise_dim(self) -> int:
        """Size of z alone (``config.latent_dim``)."""
        return self.config.latent_dim

    @property
    def latent_dim(self) -> int:
        """Size of the whole code the decoder takes: z then the class weights."""
        return self.config.latent_dim + self.num_classes

    def join(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """z [B, K] and labels [B] (class indices) -> code [B, K + num_classes]."""
        if labels.ndim != 1 or labels.shape[0] != z.shape[0]:
            raise ValueError(f"expected labels [B={z.shape[0]}], got {list(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes})")
        return torch.cat([z, F.one_hot(labels, self.num_classes).to(z.dtype)], dim=1)

    def sample_latent(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """n codes: z from N(0, temperature^2 I), the class given by ``labels`` [n] (or drawn
        uniformly): [n, K + num_classes]."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        device = next(self.parameters()).device
        z = torch.randn(n, self.noise_dim, generator=generator, device=device) * temperature
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator, device=device)
        return self.join(z, labels.to(device))

    def initial_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting codes for inversion: z ~ N(0, I) and equal weights on every class."""
        z = torch.randn(n, self.noise_dim, generator=generator)
        return torch.cat([z, torch.full((n, self.num_classes), 1.0 / self.num_classes)], dim=1)
