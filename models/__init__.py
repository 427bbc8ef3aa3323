"""latentserve's model zoo: one file per family, one small shared API.

model = load_model("weights/vae-fashion")  # eval mode, weights checked
z = model.encode(x)                         # x: float [B, C, H, W] in [0, 1]
x_hat = model.decode(z)
save_model(model, "somewhere/")             # config.json + model.safetensors
"""

from . import (
    autoencoder,
    cgan,
    classifier,
    cvae,
    denoising,
    gan,
    made,
    pixelcnn,
    rbm,
    sparse,
    stacked,
    vae,
)
from .base import (
    FAMILIES,
    ConfigError,
    LatentModel,
    ModelConfig,
    build_model,
)
from .checkpoint import CheckpointError, load_model, read_config, save_model
from .denoising import NOISE_KINDS, corrupt
from .operations import (
    OPERATIONS,
    ClassifyOutput,
    DeclarationError,
    Density,
    EncodeOutput,
    ImageOutput,
    LikelihoodOutput,
    ModelOutput,
    Op,
    SearchBudget,
)

__all__ = [
    "FAMILIES",
    "NOISE_KINDS",
    "OPERATIONS",
    "CheckpointError",
    "ClassifyOutput",
    "ConfigError",
    "DeclarationError",
    "Density",
    "EncodeOutput",
    "ImageOutput",
    "LatentModel",
    "LikelihoodOutput",
    "ModelConfig",
    "ModelOutput",
    "Op",
    "SearchBudget",
    "autoencoder",
    "build_model",
    "cgan",
    "classifier",
    "corrupt",
    "cvae",
    "denoising",
    "gan",
    "load_model",
    "made",
    "pixelcnn",
    "rbm",
    "read_config",
    "save_model",
    "sparse",
    "stacked",
    "vae",
]
