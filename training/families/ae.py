"""The plain autoencoder: trained by the base recipe (MSE or BCE), scored against PCA."""

from __future__ import annotations

from ..declaration import TrainingSpec, register_training
from ..recipes import Recipe
from ..scoring import evaluate_reconstruction

register_training(TrainingSpec(
    family="ae", recipe=Recipe, evaluate=evaluate_reconstruction,
    floors=(("psnr", ">=", 24.0),),
    headline=lambda m: f"PSNR {m['psnr']:.2f} dB (PCA-{m['pca_components']}: {m['pca_psnr']:.2f})",
))  # fmt: skip
