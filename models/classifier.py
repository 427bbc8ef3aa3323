"""A small convolutional classifier, used by the evaluator to judge generated images.

It plays the role the Inception network plays in FID (Heusel et al., "GANs Trained by a Two
Time-Scale Update Rule Converge to a Local Nash Equilibrium", NIPS 2017): its penultimate
features are the space where the Frechet distance is measured, and its predictions count
how often each class is generated. The conv stack is the encoder of ``blocks.py``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .base import ConfigError, LatentModel, ModelConfig, check_images, check_positive, register
from .blocks import ConvEncoder
from .operations import Op


@dataclasses.dataclass
class ClassifierConfig(ModelConfig):
    latent_dim: int = 128  # width of the feature layer (the Frechet distance's space)
    width: int = 32
    class_names: tuple[str, ...] = ()  # one name per class, in label order
    dropout: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "width")
        self.class_names = tuple(self.class_names)
        if len(self.class_names) < 2 or not all(isinstance(n, str) for n in self.class_names):
            raise ConfigError(f"class_names must name at least 2 classes, got {self.class_names}")


@register
class Classifier(LatentModel):
    family = "classifier"
    config_class = ClassifierConfig
    operations = {"classify": Op("classify")}  # x [B, C, H, W] -> probabilities [B, classes]
    example_config = {"latent_dim": 8, "width": 4, "class_names": ["a", "b", "c"]}
    config: ClassifierConfig

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__(config)
        c, side, _ = config.image_shape
        self.encoder = ConvEncoder(c, side, config.width, config.latent_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.latent_dim, len(config.class_names))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] in [0, 1] -> features [B, latent_dim]."""
        check_images(self, x)
        return F.silu(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> class logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W] -> class probabilities [B, num_classes]."""
        return torch.softmax(self.forward(x), dim=1)
