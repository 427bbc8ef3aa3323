"""The small API every latentserve model shares, and the registry of families.

A model is an ``nn.Module`` built from one config dataclass. The config is all that is
needed to rebuild it (the diffusers habit): ``save_model`` writes it as ``config.json``
beside the weights, ``load_model`` reads it back. Families register themselves with
``@register`` so the loader can find them by the ``family`` string in that file; what a family
can do is its ``operations`` declaration (operations.py), checked when it registers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from .gibbs import seed_chains
from .latent_density import GaussianMixture
from .operations import Density, ModelOutput, Op, check_declaration, wrap_output

ImageShape = tuple[int, int, int]


class ConfigError(ValueError):
    """A model config is invalid; the message says which field and why."""


@dataclasses.dataclass
class ModelConfig:
    """Fields every family has. Families subclass this and add their own."""

    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W), pixels in [0, 1]
    latent_dim: int = 32  # size of the code z
    #: False for a family without a latent code (a PixelCNN): its latent_dim is 0
    has_code: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.image_shape = _as_shape(self.image_shape)
        channels, height, width = self.image_shape
        if channels not in (1, 3):
            raise ConfigError(f"image_shape: channels must be 1 or 3, got {channels}")
        if height != width:
            raise ConfigError(f"image_shape: images must be square, got {height}x{width}")
        if not 8 <= height <= 256:
            raise ConfigError(f"image_shape: side must be between 8 and 256, got {height}")
        if self.has_code:
            check_positive(self, "latent_dim")
        elif self.latent_dim != 0:
            raise ConfigError(
                f"latent_dim: this family has no latent code, so it must be 0, got {self.latent_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config, refusing unknown keys instead of ignoring them."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None


def _as_shape(value: Any) -> ImageShape:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ConfigError(f"image_shape must be three integers (C, H, W), got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"image_shape must be three integers (C, H, W), got {value!r}")
    return (value[0], value[1], value[2])


def check_positive(config: object, *names: str) -> None:
    """Raise ConfigError unless every named field of ``config`` is a positive integer."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def check_range(name: str, value: Any, low: float, high: float) -> None:
    """Raise ConfigError unless ``low <= value <= high``."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")


class LatentModel(nn.Module):
    """Base of every family: holds the config and answers the shared questions.

    A family declares ``operations`` (API operation -> ``Op``: the method that does it), an
    ``example_config`` (the smallest config that builds, for the contract tests and docs) and,
    if its code carries a class, ``conditional = True``. ``run`` calls an operation by name.
    """

    family: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    operations: ClassVar[dict[str, Op]]
    example_config: ClassVar[dict[str, Any]] = {}
    conditional: ClassVar[bool] = False
    #: what sample_latent draws codes from, for clients that explore the code by hand
    #: ("normal": N(0, I) in every unit); None for a model without a prior
    latent_prior: ClassVar[str | None] = None
    #: what ``log_likelihood`` computes, for a family that declares it (operations.Density)
    density: ClassVar[Density | None] = None
    #: a deterministic autoencoder: it generates once a density is fitted to its training
    #: codes (models/latent_density.py; Ghosh et al. 2020), attached by load_model
    fits_latent_density: ClassVar[bool] = False
    latent_density: GaussianMixture | None = None
    #: a family with more than one way to generate: each by the name a request's ``sampler``
    #: gives, the one it declares as ``generate`` among them; a fitted latent density adds
    #: "latent" (and becomes the default). Empty: one way, nothing to choose
    samplers: ClassVar[dict[str, Op]] = {}

    @property
    def sampler_names(self) -> tuple[str, ...]:
        """The named ways this model generates, its ``generate`` first; () for a model that
        generates one way only (or not at all)."""
        names = tuple(type(self).samplers)
        if names and self.latent_density is not None:
            return ("latent", *names)
        return names

    @property
    def chain_sampler_names(self) -> tuple[str, ...]:
        """Those of ``sampler_names`` that run a chain (take ``steps``, animate as a GIF)."""
        return tuple(name for name in self.sampler_names if self.sampler(name).takes_steps)

    def sampler(self, name: str | None) -> Op:
        """The declaration of generating by sampler ``name`` (None: the model's ``generate``).
        Raises ValueError naming the samplers the model has."""
        if name is None:
            if "generate" not in self.operations:
                raise self._unsupported("generate")
            return self.operations["generate"]
        if name not in self.sampler_names:
            has = ", ".join(self.sampler_names) or "one sampler only; leave sampler out"
            raise ValueError(
                f"sampler: {self.family} models have no sampler {name!r} (they have: {has})"
            )
        return self.operations["generate"] if name == "latent" else type(self).samplers[name]

    @property
    def inversion_methods(self) -> tuple[str, ...]:
        """The ways the model's ``encode`` search can run (``SearchBudget.method``), the
        default first; empty for a model whose encode is not a search."""
        return ()

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config

    @property
    def image_shape(self) -> ImageShape:
        return self.config.image_shape

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def class_names(self) -> list[str]:
        """The classes a conditional model generates, by index; [] for the others."""
        return list(getattr(self.config, "class_names", ()) or ())

    def run(self, operation: str, x: torch.Tensor, **options: Any) -> ModelOutput:
        """Call a declared operation on a batch and wrap its result in the typed output."""
        op = self.operations.get(operation)
        if op is None:
            raise self._unsupported(operation)
        return wrap_output(operation, op, getattr(self, op.method)(x, **options))

    def _unsupported(self, operation: str) -> NotImplementedError:
        return NotImplementedError(
            f"{self.family} models do not support {operation}; "
            f"they support: {', '.join(sorted(self.operations)) or 'nothing'}"
        )

    def _no_method(self, name: str) -> NotImplementedError:
        declared = self.operations.get(name)
        hint = (
            f"; its {name} operation is {declared.method}: use run({name!r}, x)" if declared else ""
        )
        return NotImplementedError(f"{self.family} models have no {name} method{hint}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise self._no_method("encode")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise self._no_method("decode")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        raise self._no_method("reconstruct")

    def attach_latent_density(self, density: GaussianMixture) -> None:
        """Give this model the fitted density over its codes: it then declares ``generate``
        (decode codes drawn from the density) and seeds have codes for interpolation."""
        if not self.fits_latent_density:
            raise ValueError(f"{self.family} models do not take a fitted latent density")
        if density.dim != self.latent_dim:
            raise ValueError(
                f"a density over {density.dim}-unit codes; the model's code has {self.latent_dim}"
            )
        self.latent_density = density
        # this instance's declaration: the family's, plus generate through the fitted density
        # (instance attributes shadow the class's; the family's own declaration is unchanged)
        self.__dict__["operations"] = {
            **type(self).operations, "generate": Op("decode", prepare="sample_latent")
        }  # fmt: skip
        self.__dict__["latent_prior"] = f"fitted gaussian mixture ({density.components} components)"

    def check_draw(self, n: int, labels: torch.Tensor | None) -> None:
        """The checks every ``prepare`` of an unconditional family makes: n > 0, no labels."""
        if labels is not None:
            raise ValueError(f"{self.family} models are not class-conditional; give no labels")
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")

    def sample_latent(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` codes from the prior N(0, temperature^2 I), or from the fitted latent
        density (its components' spread scaled by ``temperature``): [n, latent_dim]."""
        if "generate" not in self.operations:
            raise self._unsupported("generate")
        self.check_draw(n, labels)
        if self.latent_density is not None:
            return self.latent_density.sample(n, generator, temperature)
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return z * temperature

    def chain_seeds(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ``prepare`` of a family's chain sampler (an RBM's Gibbs chain, a dae's GSN
        chain): one (seed, temperature) per chain [n, 2] (gibbs.seed_chains)."""
        self.check_draw(n, labels)
        return seed_chains(n, generator, temperature)

    def initial_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting codes for a search over the code space (GAN inversion): z ~ N(0, I)."""
        return torch.randn(n, self.latent_dim, generator=generator)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` images through the declared ``generate``: [n, C, H, W] in [0, 1]."""
        op = self.operations.get("generate")
        if op is None or op.prepare is None:
            raise self._unsupported("generate")
        drawn = getattr(self, op.prepare)(n, generator, temperature, labels)
        return getattr(self, op.method)(drawn)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


FAMILIES: dict[str, type[LatentModel]] = {}
M = TypeVar("M", bound=type[LatentModel])


def register(cls: M) -> M:
    """Class decorator adding a family to ``FAMILIES`` under its ``family`` name, after
    checking its declaration (``DeclarationError`` says what is missing)."""
    if not isinstance(getattr(cls, "family", None), str) or not cls.family:
        raise TypeError(f"{cls.__name__} needs a family name (family = '...')")
    if cls.family in FAMILIES and FAMILIES[cls.family] is not cls:
        raise RuntimeError(f"family {cls.family!r} registered twice")
    check_declaration(cls, cls.operations, cls.example_config)
    FAMILIES[cls.family] = cls
    return cls


def build_model(family: str, config: dict[str, Any] | ModelConfig) -> LatentModel:
    """Construct a fresh (untrained) model of ``family`` from a config or a dict."""
    if family not in FAMILIES:
        from .plugins import FAILED, load_plugins  # an installed package may provide it

        load_plugins()
        if family not in FAMILIES:
            broken = f"; plugins that failed to load: {', '.join(sorted(FAILED))}" if FAILED else ""
            raise ConfigError(
                f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}{broken}"
            )
    cls = FAMILIES[family]
    cfg = config if isinstance(config, ModelConfig) else cls.config_class.from_dict(config)
    return cls(cfg)


def check_images(model: LatentModel, x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a float batch [B, C, H, W] of the model's shape."""
    if x.ndim != 4 or tuple(x.shape[1:]) != model.image_shape:
        raise ValueError(
            f"expected images of shape [B, {', '.join(map(str, model.image_shape))}], "
            f"got {list(x.shape)}"
        )


def check_code_shape(model: LatentModel, z: torch.Tensor) -> None:
    """Raise ValueError unless ``z`` is [B, latent_dim]."""
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise ValueError(f"expected latents of shape [B, {model.latent_dim}], got {list(z.shape)}")
