"""Class-conditional GAN with a projection discriminator.

Mirza & Osindero, "Conditional Generative Adversarial Nets", arXiv:1411.1784 (2014): both
players see the class. Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018:
the critic scores D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, an inner product between a
class embedding and the image features, which conditions far more strongly than
concatenating labels to the input. Spectral norm and the hinge loss as in ``gan.py``.

Odena, Olah & Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs", ICML
2017: the critic also predicts the class of what it sees (trained on real images), and the
generator is rewarded when its fakes are predicted as the class they were drawn for. With
``aux_class_weight`` > 0 the critic carries that head beside the projection; it makes the
requested class unmistakable in every sample (Fashion-MNIST's tops are easily confused).

The generator is ``gan.py``'s, fed the code [z, one_hot(y)] (conditioning.py); a soft
class vector (an interpolation between classes, or an inverted code) works the same way.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import ConfigError, LatentModel, check_code_shape, check_images, check_range, register
from .conditioning import ConditionalCode, check_class_names
from .gan import GAN, GANConfig, Generator, ProjectionCritic, make_inverter


@dataclasses.dataclass
class CGANConfig(GANConfig):
    class_names: tuple[str, ...] = ("0", "1")  # one name per class, in label order
    aux_class_weight: float = 0.0  # weight of the AC-GAN class loss; 0: projection only

    def __post_init__(self) -> None:
        super().__post_init__()
        self.class_names = check_class_names(self.class_names)
        check_range("aux_class_weight", self.aux_class_weight, 0.0, 100.0)
        if self.class_guidance:
            raise ConfigError(
                "class_guidance is for the unconditional GAN; a cgan takes the class itself "
                "(aux_class_weight adds the AC-GAN head)"
            )


@register
class ConditionalGAN(ConditionalCode, GAN):
    family = "cgan"
    config_class = CGANConfig
    example_config = {"latent_dim": 5, "width": 4, "class_names": ["boot", "sandal", "bag"],
                      "aux_class_weight": 1.0}  # fmt: skip  # the AC-GAN head, as cgan-fashion ships
    config: CGANConfig

    def __init__(self, config: CGANConfig) -> None:
        LatentModel.__init__(self, config)  # not GAN.__init__: both players take the class
        c, side, _ = config.image_shape
        n = len(config.class_names)
        self.generator = Generator(config.latent_dim + n, c, side, config.width)
        self.critic = ProjectionCritic(  # type: ignore[assignment]
            c, side, config.width, n, aux_classifier=config.aux_class_weight > 0
        )
        self.class_head = None  # the class enters the projection instead (gan.py's guidance)
        self.register_buffer("prior_means", None)  # the class is in the code, not the prior
        self.register_buffer("prior_weights", None)
        self.inverter = make_inverter(self)  # predicts the whole code [z, class weights]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """code [B, K + num_classes] -> x [B, C, H, W] in [0, 1]."""
        check_code_shape(self, z)
        return (self.generator(z) + 1) / 2

    def criticize_and_classify(  # type: ignore[override]
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x [B, C, H, W] in [0, 1], labels [B]) -> (critic score [B], the auxiliary head's
        class logits [B, num_classes], or None without one), from one pass of the critic."""
        check_images(self, x)
        return self.critic(x * 2 - 1, labels)

    def aux_class_loss(self, logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The AC-GAN term: aux_class_weight * cross-entropy, or 0 without the head."""
        if logits is None:
            return torch.zeros(())
        return self.config.aux_class_weight * F.cross_entropy(logits, labels)
