"""Denoising autoencoder and the corruption processes it is trained against.

Vincent, Larochelle, Bengio & Manzagol, "Extracting and Composing Robust Features with
Denoising Autoencoders", ICML 2008; Vincent et al., "Stacked Denoising Autoencoders",
JMLR 11 (2010). The network is the plain conv autoencoder; what differs is training: the
input is corrupted by q(x~ | x) and the loss compares the output with the clean x. One
"blind" model is trained over a range of kinds and levels, so at test time it needs to be
told neither.

``corrupt`` lives here (not in the trainer) because the service uses it too, to let a
front end demonstrate denoising on a clean upload.

A denoising autoencoder also generates, as a generative stochastic network: the Markov chain
corrupt, denoise, repeat (Bengio, Yao, Alain & Vincent 2013; the chain is gsn.py's). That is
its ``chain`` sampler; with a latent density fitted to its codes it also has ``latent``, the
other autoencoders' way (latent_density.py), which is then the default.
"""

from __future__ import annotations

import dataclasses

import torch

from .autoencoder import Autoencoder, AutoencoderConfig
from .base import ConfigError, check_range, register
from .gibbs import chain_uniform, shared_uniform
from .gsn import ChainRun, Corruption, gsn_chains
from .operations import Op, SearchBudget

NOISE_KINDS = ("gaussian", "salt_pepper", "mask")
CHAIN_STEPS = 100  # steps of a chain when nobody says (the service's LATENTSERVE_CHAIN_STEPS)
CHAIN_FRAMES = 40  # the states of a chain its GIF shows, evenly spaced from start to end


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


# prepared by LatentModel.chain_seeds; the request's temperature scales the corruption's levels
CHAIN = Op("sample_chain", prepare="chain_seeds", search=True, takes_steps=True,
           frames="chain_frames")  # fmt: skip


@register
class DenoisingAutoencoder(Autoencoder):
    family = "dae"
    config_class = DenoisingConfig
    operations = {**Autoencoder.operations, "generate": CHAIN}
    samplers = {"chain": CHAIN}
    example_config = {"latent_dim": 4, "width": 4}
    config: DenoisingConfig

    @property
    def corruption(self) -> Corruption:
        """The chain's C(x~ | x): the training corruption (kinds, odds, largest levels)."""
        kinds = self.config.noise_kinds
        probs = self.config.noise_probs or (1.0,) * len(kinds)
        return Corruption(kinds, tuple(probs), tuple(self.config.level_max(k) for k in kinds))

    def sample_chain(self, seeds: torch.Tensor, budget: SearchBudget | None = None) -> torch.Tensor:
        """seeds [n, 2] -> each chain's state after ``budget.steps`` steps [n, C, H, W]."""
        return self._chains(seeds, budget, frames=0).images

    def chain_frames(self, seeds: torch.Tensor, budget: SearchBudget | None = None) -> torch.Tensor:
        """seeds [n, 2] -> CHAIN_FRAMES states of each chain, start to end [n, F, C, H, W]."""
        frames = self._chains(seeds, budget, frames=CHAIN_FRAMES).frames
        assert frames is not None
        return frames

    def sample_many(
        self, n: int, generator: torch.Generator, steps: int = CHAIN_STEPS
    ) -> torch.Tensor:
        """``n`` images [n, C, H, W] by the same chains, all drawing from one generator: the
        evaluator's thousands of samples, fast; a chain's image then depends on its batch."""
        temperatures = torch.ones(n)
        return gsn_chains(self.reconstruct, self.corruption, self.image_shape, temperatures,
                          steps, shared_uniform(n, generator)).images  # fmt: skip

    def _chains(self, seeds: torch.Tensor, budget: SearchBudget | None, frames: int) -> ChainRun:
        uniform, temperatures = chain_uniform(seeds)
        steps = budget.steps if budget is not None else CHAIN_STEPS
        stop = budget.stop if budget is not None else None
        return gsn_chains(self.reconstruct, self.corruption, self.image_shape, temperatures,
                          steps, uniform, stop, frames)  # fmt: skip

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
