"""Metrics and honest baselines for the evaluator.

- PSNR per image, averaged: 10 log10(1 / MSE) for pixels in [0, 1].
- PCA with k components (the linear autoencoder with the same code size).
- Classical denoisers from scikit-image (non-local means, total variation) and scipy
  (Gaussian blur), each with its strength tuned on validation images.
- The Frechet distance between Gaussians fitted to classifier features (FID's formula,
  Heusel et al. 2017, with our classifier in place of Inception).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import linalg, ndimage


def psnr(x_hat: np.ndarray | torch.Tensor, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of arrays [N, ...] in [0, 1]."""
    a = np.asarray(x_hat, dtype=np.float64).reshape(len(x_hat), -1)
    b = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    mse = np.maximum(((a - b) ** 2).mean(1), 1e-10)
    return -10 * np.log10(mse)


class PCA:
    """PCA fitted by SVD on flattened training images."""

    def __init__(self, train: np.ndarray, components: int) -> None:
        flat = train.reshape(len(train), -1).astype(np.float64)
        self.mean = flat.mean(0)
        _, _, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
        self.basis = vt[:components]  # [k, D]

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1) - self.mean
        out = flat @ self.basis.T @ self.basis + self.mean
        return np.clip(out, 0, 1).reshape(x.shape)


def _nl_means(img: np.ndarray, h: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # channels last and back: with channel_axis=0 skimage drops a single channel axis
    out = denoise_nl_means(
        np.moveaxis(img, 0, -1),
        h=h * sigma,
        sigma=sigma,
        patch_size=3,
        patch_distance=5,
        channel_axis=-1,
    )
    return np.moveaxis(out.reshape(*img.shape[1:], img.shape[0]), -1, 0)


def _tv(img: np.ndarray, weight: float, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(img, weight=weight, channel_axis=0)


def _blur(img: np.ndarray, s: float, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=(0, s, s))


#: name -> (denoise(image [C, H, W], parameter, noise sigma), parameter grid to tune over)
CLASSICAL_DENOISERS: dict[
    str, tuple[Callable[[np.ndarray, float, float], np.ndarray], list[float]]
] = {
    "non-local means": (_nl_means, [0.4, 0.6, 0.8, 1.0, 1.2, 1.5]),
    "total variation": (_tv, [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]),
    "gaussian blur": (_blur, [0.4, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0]),
}


def denoise_all(
    fn: Callable[[np.ndarray, float, float], np.ndarray],
    noisy: np.ndarray,
    param: float,
    sigma: float,
) -> np.ndarray:
    return np.clip(np.stack([fn(img, param, max(sigma, 1e-3)) for img in noisy]), 0, 1)


def tune_denoiser(
    name: str, val_noisy: np.ndarray, val_clean: np.ndarray, sigma: float
) -> tuple[float, float]:
    """Best parameter on the validation images -> (parameter, validation PSNR)."""
    fn, grid = CLASSICAL_DENOISERS[name]
    scores = [float(psnr(denoise_all(fn, val_noisy, p, sigma), val_clean).mean()) for p in grid]
    best = int(np.argmax(scores))
    return grid[best], scores[best]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between feature sets [N, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise from sqrtm on nearly singular products
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def active_units(means: np.ndarray, threshold: float = 0.01) -> int:
    """Units whose posterior mean varies across the data: Cov_x(E_q[z_j]) > threshold
    (Burda, Grosse & Salakhutdinov 2016)."""
    return int((means.var(0) > threshold).sum())
