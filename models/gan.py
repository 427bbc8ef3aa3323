"""Generative adversarial network: a DCGAN generator and a spectrally normalised critic.

- Goodfellow et al., "Generative Adversarial Nets", NIPS 2014: the game itself.
- Radford, Metz & Chintala, "DCGAN", ICLR 2016 (arXiv:1511.06434): the generator, a dense
  projection of z to a small feature map followed by stride-2 transposed convolutions with
  batch norm and ReLU, and a tanh output.
- Miyato et al., "Spectral Normalization for GANs", ICLR 2018, with the hinge loss of Lim &
  Ye (2017) as used there: the critic's every layer is spectrally normalised, which bounds
  its Lipschitz constant with one power iteration per step.

A GAN has no encoder; ``models/inversion.py`` finds a latent for an image by optimisation,
which gives the service encode, reconstruct and image-to-image interpolation for GANs too.
With ``inverter_width`` > 0 the artifact also holds an ``Inverter`` (a conv encoder trained
against the fixed generator by ``python -m training fit-inverter``), whose prediction a few
refinement steps finish: the amortised inversion, milliseconds instead of a second.

With ``class_guidance`` > 0 the training images' labels guide the unconditional generator,
which still takes no class: the critic carries a class head trained on real images (as the
AC-GAN's, cgan.py), and the generator is rewarded when that head is sure of each fake's class
while its fakes' classes stay balanced (the two entropy terms of Springenberg's CatGAN, ICLR
2016, "Unsupervised and Semi-supervised Learning with Categorical GANs", on the supervised
head of Odena et al. 2017). This is what made cgan-fashion's samples recognisable.

With ``mixture_prior`` the generator still takes only z, but z is drawn from a mixture of one
unit Gaussian per training class, p(z) = sum_k w_k N(mu_k, I), with fixed means stored with the
weights (a latent mixture as in Gurumurthy et al., CVPR 2017, "DeLiGAN"). In training each fake
is drawn from the component of its real batch-mate's class, and the critic is cgan.py's
projection critic, judging reals against their labels and fakes against their components, with
an AC-GAN head at weight ``class_guidance`` (Liu et al., CVPR 2020, "Diverse Image Generation
via Self-Conditioned GANs", condition an unconditional GAN on cluster labels the same way; here
the labels are the dataset's). Serving knows nothing of classes: generate draws a component and
a point, and encode, decode and interpolation work on z as for any GAN.

With ``one_hot_components`` as well, each component sits in a code dimension of its own rather
than at a random mean: the code is [eps [K], one_hot(k) [classes]], eps ~ N(0, I), a categorical
latent code beside the continuous one as in InfoGAN (Chen et al., NIPS 2016), here supervised by
the labels. The generator then learns each class's offset freely instead of through the same
weights that map eps (cgan.py's generator takes exactly this code, and its samples lie 3x
closer to real images in the judge's features than the random means' gave).

Why this recipe on 2 CPU cores: WGAN-GP needs a second backward pass through the critic for
its gradient penalty (about 1.5-2x the cost of a step), and a plain DCGAN with the
non-saturating loss is prone to collapse without careful tuning. Spectral norm + hinge costs
almost nothing extra and trains stably with the same learning rate for both players.

The generator produces pixels in [-1, 1]; ``decode`` maps them to [0, 1] like every other
family, and the critic sees images rescaled to [-1, 1].
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .adjoint import check_supported, squared_error_and_gradient
from .base import (
    ConfigError,
    LatentModel,
    ModelConfig,
    check_code_shape,
    check_images,
    check_positive,
    check_range,
    register,
)
from .blocks import stage_plan
from .inversion import Inverter, autograd_objective, invert, refine
from .operations import Op, SearchBudget


@dataclasses.dataclass
class GANConfig(ModelConfig):
    latent_dim: int = 64
    width: int = 32  # generator's last / critic's first conv width; doubles per stage
    inverter_width: int = 0  # the inverter's first conv width; 0: no inverter (inversion.py)
    inverter_preconditioned: bool = False  # the inverter carries a refinement preconditioner
    class_guidance: float = 0.0  # weight of the CatGAN class terms; 0: labels unused
    label_classes: int = 0  # classes of the training labels (the trainer sets it)
    mixture_prior: bool = False  # z from one unit Gaussian per training class (see above)
    one_hot_components: bool = False  # the mixture's component as a one-hot tail of the code

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "width")
        if self.inverter_width:
            check_positive(self, "inverter_width")
        if self.inverter_preconditioned and not self.inverter_width:
            raise ConfigError("inverter_preconditioned needs an inverter (inverter_width > 0)")
        check_range("class_guidance", self.class_guidance, 0.0, 100.0)
        if self.class_guidance and self.label_classes < 2:
            raise ConfigError(
                f"class_guidance needs the training labels' classes (label_classes >= 2), "
                f"got {self.label_classes}"
            )
        if self.mixture_prior and self.label_classes < 2:
            raise ConfigError(
                f"mixture_prior needs one component per class of the training labels "
                f"(label_classes >= 2), got {self.label_classes}"
            )
        if self.one_hot_components and not self.mixture_prior:
            raise ConfigError(
                "one_hot_components places a mixture prior's components: it needs mixture_prior"
            )


class Generator(nn.Module):
    """z [B, K] -> image [B, C, H, W] in [-1, 1]."""

    def __init__(self, latent_dim: int, channels: int, side: int, width: int) -> None:
        super().__init__()
        stages, small = stage_plan(side)
        c = width * 2**stages
        self.start_shape = (c, small, small)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, c * small * small, bias=False),
            nn.BatchNorm1d(c * small * small),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for _ in range(stages):
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=False),  # double H, W
                nn.BatchNorm2d(c // 2),
                nn.ReLU(),
            ]
            c //= 2
        layers += [nn.Conv2d(c, channels, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.unflatten = nn.Unflatten(1, self.start_shape)  # no weights: the files are unchanged

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.unflatten(self.project(z)))

    def layers(self) -> list[nn.Module]:
        """Every layer in the order forward applies them (adjoint.py walks them backwards)."""
        return [*self.project, self.unflatten, *self.body]


class Critic(nn.Module):
    """Image [B, C, H, W] in [-1, 1] -> score [B] (higher means "looks real")."""

    def __init__(self, channels: int, side: int, width: int) -> None:
        super().__init__()
        stages, small = stage_plan(side)
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(channels, width, 3, padding=1))]
        layers.append(nn.LeakyReLU(0.1))
        c = width
        for _ in range(stages):
            layers += [spectral_norm(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1))]
            layers += [nn.LeakyReLU(0.1)]
            c *= 2
        self.features = nn.Sequential(*layers)  # [B, c, small, small]
        self.feature_size = c * small * small  # F: the flattened features
        self.score = spectral_norm(nn.Linear(self.feature_size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x).flatten(1)).squeeze(1)


class ProjectionCritic(nn.Module):
    """(image [B, C, H, W] in [-1, 1], labels [B]) -> (score [B], class logits [B, N] or None)."""

    def __init__(
        self, channels: int, side: int, width: int, num_classes: int, aux_classifier: bool
    ) -> None:
        super().__init__()
        self.body = Critic(channels, side, width)  # phi = body.features, psi = body.score
        stages, small = stage_plan(side)
        features = width * 2**stages * small * small  # F: the critic's flattened features
        self.embed = spectral_norm(nn.Embedding(num_classes, features))
        self.classify = nn.Linear(features, num_classes) if aux_classifier else None

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body.features(x).flatten(1)  # [B, F]
        score = self.body.score(h).squeeze(1) + (self.embed(labels) * h).sum(1)  # [B]
        return score, None if self.classify is None else self.classify(h)  # [B, N]


@register
class GAN(LatentModel):
    family = "gan"
    config_class = GANConfig
    operations = {
        "encode": Op(
            "find_latent",
            returns=("latent", "reconstruction_error"),
            search=True,
            objective="inversion_objective",
        ),
        "decode": Op("decode"),
        "generate": Op("decode", prepare="sample_latent"),
    }
    example_config = {"latent_dim": 5, "width": 4}
    latent_prior = "normal"
    config: GANConfig
    prior_means: torch.Tensor | None  # [classes, K]: the mixture prior's (buffers)
    prior_weights: torch.Tensor | None  # [classes]

    def __init__(self, config: GANConfig) -> None:
        super().__init__(config)
        c, side, _ = config.image_shape
        self.generator = Generator(self.latent_dim, c, side, config.width)
        self.critic = Critic(c, side, config.width)
        # the class head of class guidance (training only; the generator takes no class)
        self.class_head = (
            nn.Linear(self.critic.feature_size, config.label_classes)
            if config.class_guidance and not config.mixture_prior
            else None
        )
        k = config.label_classes if config.mixture_prior else 0
        if k:
            # the critic judges each image against its class: its label, or a fake's component
            self.critic = ProjectionCritic(  # type: ignore[assignment]
                c, side, config.width, k, aux_classifier=config.class_guidance > 0
            )
            self.__dict__["latent_prior"] = (
                f"unit gaussian, then a one-hot code of one of {k} classes"
                if config.one_hot_components
                else f"mixture of {k} unit gaussians, one per class"
            )
        # fixed means drawn once (about sqrt(2 * latent_dim) apart, against a unit spread), or
        # [0, one_hot(k)] with one_hot_components, stored with the weights; the weights are the
        # training labels' frequencies (the trainer sets them). None (not in the artifact)
        # without a mixture prior.
        if config.one_hot_components:
            means = torch.cat([torch.zeros(k, config.latent_dim), torch.eye(k)], dim=1)
        else:
            means = torch.randn(k, config.latent_dim)
        self.register_buffer("prior_means", means if k else None)
        self.register_buffer("prior_weights", torch.full((k,), 1.0 / k) if k else None)
        self.inverter = make_inverter(self)

    @property
    def latent_dim(self) -> int:
        """Size of the code: z's K, then with one_hot_components one weight per component."""
        config = self.config
        return config.latent_dim + (config.label_classes if config.one_hot_components else 0)

    @property
    def inversion_methods(self) -> tuple[str, ...]:
        return ("amortised", "optimisation") if self.inverter is not None else ("optimisation",)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, K] -> x [B, C, H, W] in [0, 1]."""
        check_code_shape(self, z)
        return (self.generator(z) + 1) / 2

    def inversion_objective(
        self, z: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [B, K], target [B, C, H, W] in [0, 1]) -> (||decode(z) - target||^2 per image
        [B], its gradient in z [B, K]): what inversion evaluates at every step, written out
        (adjoint.py) so that the service's engines compile it. A generator with a layer that
        adjoint.py has no product for (or batch norm in training mode) gets autograd's, which
        no engine compiles: its calls stay eager."""
        check_code_shape(self, z)
        check_images(self, target)
        if len(z) != len(target):
            raise ValueError(f"{len(z)} latents for {len(target)} images")
        layers = self.generator.layers()
        try:
            check_supported(layers)
        except ValueError:  # a layer adjoint.py has no product for: autograd, not compiled
            return autograd_objective(self)(z, target)
        # decode = (G(z) + 1) / 2
        return squared_error_and_gradient(layers, z, target, 0.5, 0.5)

    def set_inversion_preconditioner(self, root: torch.Tensor) -> None:
        """Give the inverter the refinement's preconditioner L [K, K] (inversion.py's
        ``gauss_newton_preconditioner``); it is saved with the inverter's weights."""
        if self.inverter is None:
            raise ValueError("a preconditioner goes with an inverter: fit one first")
        if root.shape != (self.latent_dim, self.latent_dim) or not torch.isfinite(root).all():
            raise ValueError(
                f"expected a finite [{self.latent_dim}, {self.latent_dim}] preconditioner, "
                f"got {list(root.shape)}"
            )
        self.config.inverter_preconditioned = True
        self.inverter.register_buffer("preconditioner", root.detach().clone().contiguous())

    def find_latent(
        self, x: torch.Tensor, budget: SearchBudget | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A GAN has no encoder: x [B, C, H, W] -> (the z whose image matches x [B, K], the
        per-image MSE [B]), by the budget's method (inversion.py): amortised where the model
        has an inverter, else optimisation. Deterministic whenever the search runs all its
        steps within ``budget.time_s`` (the optimisation's random starts are seeded)."""
        budget = budget or SearchBudget()
        method = budget.method or self.inversion_methods[0]
        if method not in self.inversion_methods:
            raise ValueError(
                f"inversion {method!r} is not available; this model has {self.inversion_methods}"
            )
        objective = budget.objective or self.inversion_objective
        if method == "amortised":
            assert self.inverter is not None
            return refine(self, self.inverter, x, budget.refine_steps, budget.time_s, budget.stop,
                          objective)  # fmt: skip
        return invert(self, x, budget.steps, budget.restarts, time_budget_s=budget.time_s,
                      generator=torch.Generator().manual_seed(0), stop=budget.stop,
                      objective=objective)  # fmt: skip

    def sample_latent(
        self,
        n: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """n codes from the prior: N(0, temperature^2 I), or with a mixture prior a component
        k ~ prior_weights and z = prior_means[k] + temperature * eps: [n, K]."""
        if self.prior_weights is None:
            return super().sample_latent(n, generator, temperature, labels)
        self.check_draw(n, labels)
        components = torch.multinomial(self.prior_weights, n, replacement=True, generator=generator)
        return self.component_latents(components, generator, temperature)

    def component_latents(
        self,
        components: torch.Tensor,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Codes drawn from the given components of the mixture prior (training draws each
        fake from its real batch-mate's class): components [n] -> z [n, latent_dim], the
        spread only in z's first K units (a one-hot tail stays exact)."""
        if self.prior_means is None:
            raise ValueError("this GAN has no mixture prior (it was built without mixture_prior)")
        means = self.prior_means[components]  # [n, latent_dim]
        k = self.config.latent_dim
        eps = torch.randn(len(means), k, generator=generator, device=means.device)  # [n, K]
        return torch.cat([means[:, :k] + temperature * eps, means[:, k:]], dim=1)

    def initial_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Starting codes for inversion: draws of the prior (N(0, I) or the mixture)."""
        if self.prior_weights is None:
            return super().initial_latents(n, generator)
        return self.sample_latent(n, generator)

    def criticize(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] (and, with a mixture prior, each image's class [B]: a
        real image's label, a fake's component) -> critic score [B]."""
        return self.criticize_and_classify(x, labels)[0]

    def criticize_and_classify(
        self, x: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x [B, C, H, W] in [0, 1], labels [B] for a mixture prior's projection critic) ->
        (critic score [B], the AC-GAN head's class logits [B, classes] or None), one pass."""
        check_images(self, x)
        if self.prior_means is None:
            return self.critic(x * 2 - 1), None
        if labels is None:
            raise ValueError("a GAN with a mixture prior scores images against their classes")
        return self.critic(x * 2 - 1, labels)

    def aux_class_loss(self, logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The AC-GAN term (Odena et al. 2017) of a mixture prior's critic head: class_guidance
        x cross-entropy of each image's class (a fake's component), or 0 without the head."""
        if logits is None:
            return torch.zeros(())
        return self.config.class_guidance * F.cross_entropy(logits, labels)

    def criticize_with_head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] in [0, 1] -> (critic score [B], class-head logits [B, classes]), from
        one pass of the critic; only for a model trained with class guidance."""
        check_images(self, x)
        if self.class_head is None:
            raise ValueError("this GAN has no class head (it was built without class_guidance)")
        h = self.critic.features(x * 2 - 1).flatten(1)  # [B, F]
        return self.critic.score(h).squeeze(1), self.class_head(h)

    def guidance_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """The generator's CatGAN terms for fakes' class logits [B, classes]: the mean entropy
        of each fake's class (low: every fake is clearly of one class) minus the entropy of
        the batch's mean class distribution (high: the classes stay balanced), weighted."""
        p = logits.softmax(1)  # [B, classes]
        each = -(p * logits.log_softmax(1)).sum(1).mean()
        mean = p.mean(0)
        balance = -(mean * mean.clamp_min(1e-8).log()).sum()
        return self.config.class_guidance * (each - balance)

    @staticmethod
    def critic_loss(real_score: torch.Tensor, fake_score: torch.Tensor) -> torch.Tensor:
        """Hinge loss for the critic: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
        return F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()

    @staticmethod
    def generator_loss(fake_score: torch.Tensor) -> torch.Tensor:
        """Hinge loss for the generator: -E[D(G(z))]."""
        return -fake_score.mean()


def make_inverter(gan: LatentModel) -> Inverter | None:
    """The inverter the config asks for (``inverter_width`` > 0), sized to the model's code."""
    config = gan.config
    assert isinstance(config, GANConfig)
    if not config.inverter_width:
        return None
    c, side, _ = config.image_shape
    return Inverter(c, side, config.inverter_width, gan.latent_dim, config.inverter_preconditioned)
