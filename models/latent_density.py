"""An ex-post density over an autoencoder's codes, so that a deterministic autoencoder generates.

Ghosh et al., "From Variational to Deterministic Autoencoders", ICLR 2020, section 4: after
training, fit a density to the codes of the training images and decode samples of it. A
10-component full-covariance Gaussian mixture made their plain autoencoder's MNIST samples
better than a VAE's (FID 10.7 against 19.2; a single Gaussian 58.7).

The mixture is fitted by expectation-maximisation (Dempster, Laird & Rubin 1977) in float64,
started from k-means++ centres (Arthur & Vassilvitskii 2007), with ``REGULARISATION`` x the
codes' mean variance added to every covariance's diagonal so that no component collapses. Codes
of more than ``FULL_COVARIANCE_MAX_DIM`` units (a spatial code) get diagonal covariances: a full
784 x 784 matrix per component would be larger than the model.

Stored beside the weights as ``latent_density.safetensors`` (weights [M], means [M, K], and
scale [M, K, K], lower-triangular with a positive diagonal, or [M, K] for diagonal
covariances: the standard deviations); plain tensors, never unpickled, checked when read.
``python -m training fit-prior`` writes it into a trained artifact; the trainer writes it at
the end of training. ``load_model`` attaches it (``LatentModel.attach_latent_density``), and
the model then declares ``generate``: decode codes drawn from the mixture.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

DENSITY_FILE = "latent_density.safetensors"
REGULARISATION = 1e-3
FULL_COVARIANCE_MAX_DIM = 128
MAX_COMPONENTS = 64


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """sum_m weights[m] N(means[m], S_m S_m^T) over codes [K], S_m = scale[m] (lower-triangular
    [K, K]) or diag(scale[m]) ([K]: diagonal covariances)."""

    weights: torch.Tensor  # [M], positive, sums to 1
    means: torch.Tensor  # [M, K]
    scale: torch.Tensor  # [M, K, K] lower-triangular with a positive diagonal, or [M, K] > 0

    def __post_init__(self) -> None:
        w, mu, scale = self.weights, self.means, self.scale
        if w.ndim != 1 or not 1 <= len(w) <= MAX_COMPONENTS:
            raise ValueError(f"weights must be [M] with 1 <= M <= {MAX_COMPONENTS}")
        m = len(w)
        k = mu.shape[1] if mu.ndim == 2 else -1
        if mu.ndim != 2 or mu.shape[0] != m or scale.shape not in ((m, k, k), (m, k)):
            raise ValueError(
                f"means must be [M, K] and scale [M, K, K] or [M, K] for M = {m}; got "
                f"{list(mu.shape)} and {list(scale.shape)}"
            )
        for name, t in (("weights", w), ("means", mu), ("scale", scale)):
            if not t.is_floating_point() or not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite floats")
        if bool((w <= 0).any()) or abs(float(w.sum()) - 1) > 1e-4:
            raise ValueError("mixture weights must be positive and sum to 1")
        diagonal = scale if self.diagonal else scale.diagonal(dim1=1, dim2=2)
        if bool((diagonal <= 0).any()) or (not self.diagonal and bool((scale.triu(1) != 0).any())):
            raise ValueError("scale must be lower-triangular with a positive diagonal")

    @property
    def diagonal(self) -> bool:
        return self.scale.ndim == 2

    @property
    def scale_tril(self) -> torch.Tensor:
        """[M, K, K] float64."""
        s = self.scale.double()
        return torch.diag_embed(s) if self.diagonal else s

    @property
    def components(self) -> int:
        return len(self.weights)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def distribution(self) -> torch.distributions.MixtureSameFamily:
        return torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(probs=self.weights.double()),
            torch.distributions.MultivariateNormal(
                self.means.double(), scale_tril=self.scale_tril.double()
            ),
        )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log density of codes z [N, K]: [N] (float64)."""
        return self.distribution().log_prob(z.double())

    def sample(
        self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """``n`` codes [n, K] (float32): a component by its weight, then its mean plus
        ``temperature`` x its scale times N(0, I) noise (temperature 0: the component means)."""
        pick = torch.multinomial(self.weights.double(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scale = self.scale.double()[pick]
        noise = scale * eps if self.diagonal else (scale @ eps[..., None])[..., 0]
        return (self.means.double()[pick] + temperature * noise).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "scale": self.scale}


def _kmeans_pp(codes: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: m centres [m, K] from codes [N, K]."""
    first = int(torch.randint(len(codes), (1,), generator=generator))
    centres = [codes[first]]
    d2 = (codes - centres[0]).pow(2).sum(1)
    for _ in range(1, m):
        pick = int(torch.multinomial(d2 / d2.sum(), 1, generator=generator))
        centres.append(codes[pick])
        d2 = torch.minimum(d2, (codes - codes[pick]).pow(2).sum(1))
    return torch.stack(centres)


def _log_normal(x: torch.Tensor, mean: torch.Tensor, tril: torch.Tensor) -> torch.Tensor:
    """log N(x | mean, tril tril^T) for x [N, K]: [N]."""
    solved = torch.linalg.solve_triangular(tril, (x - mean).T, upper=False)  # [K, N]
    half_log_det = tril.diagonal().log().sum()
    return -0.5 * solved.pow(2).sum(0) - half_log_det - 0.5 * x.shape[1] * math.log(2 * math.pi)


def fit_gaussian_mixture(
    codes: torch.Tensor,
    components: int = 10,
    seed: int = 0,
    iterations: int = 100,
    tolerance: float = 1e-6,
    progress: Callable[[int, float], None] | None = None,
) -> GaussianMixture:
    """Fit a mixture to codes [N, K] by EM; stops when the mean log-likelihood per code
    improves by less than ``tolerance`` (relative) or after ``iterations``."""
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, K], got {list(codes.shape)}")
    if not 1 <= components <= MAX_COMPONENTS:
        raise ValueError(f"components must be in [1, {MAX_COMPONENTS}], got {components}")
    n, k = codes.shape
    if n < 2 * components:
        raise ValueError(f"{n} codes are too few for {components} components")
    x = codes.double()
    if not torch.isfinite(x).all():
        raise ValueError("codes must be finite")
    full = k <= FULL_COVARIANCE_MAX_DIM
    ridge = REGULARISATION * float(x.var(0).mean().clamp_min(1e-12))
    g = torch.Generator().manual_seed(seed)
    means = _kmeans_pp(x, components, g)
    resp = torch.nn.functional.one_hot(torch.cdist(x, means).argmin(1), components).double()
    previous = -math.inf
    weights = torch.full((components,), 1 / components, dtype=torch.float64)
    tril = torch.eye(k, dtype=torch.float64).expand(components, k, k).clone()
    eye = torch.eye(k, dtype=torch.float64)
    for step in range(iterations):
        # M-step from the responsibilities resp [N, M], one component at a time ([N, K] each)
        counts = resp.sum(0) + 1e-10  # [M]
        weights = counts / n
        means = (resp.T @ x) / counts[:, None]  # [M, K]
        trils = []
        for c in range(components):
            centred = x - means[c]  # [N, K]
            r = resp[:, c : c + 1]
            if full:
                cov = (centred * r).T @ centred / counts[c] + ridge * eye
                trils.append(torch.linalg.cholesky(cov))
            else:
                trils.append(torch.diag(((r * centred.pow(2)).sum(0) / counts[c] + ridge).sqrt()))
        tril = torch.stack(trils)  # [M, K, K]
        # E-step: log w_m + log N(x | mean_m, tril_m tril_m^T) [N, M]
        joint = torch.stack([_log_normal(x, means[c], tril[c]) for c in range(components)], 1)
        joint = joint + weights.log()[None]
        ll = float(torch.logsumexp(joint, 1).mean())
        resp = torch.softmax(joint, 1)
        if progress is not None:
            progress(step, ll)
        if ll - previous < tolerance * abs(ll):
            break
        previous = ll
    scale = tril.diagonal(dim1=1, dim2=2) if not full else tril
    return GaussianMixture((weights / weights.sum()).float(), means.float(), scale.float())


def write_latent_density(folder: str | os.PathLike[str], density: GaussianMixture) -> Path:
    file = Path(folder) / DENSITY_FILE
    tmp = file.with_name(file.name + ".tmp")
    save_file({k: v.contiguous() for k, v in density.tensors().items()}, str(tmp))
    os.replace(tmp, file)
    return file


def read_latent_density(folder: str | os.PathLike[str], latent_dim: int) -> GaussianMixture | None:
    """The fitted density beside a model's weights, None if there is none; a broken file or
    one for another code size raises ValueError naming it."""
    file = Path(folder) / DENSITY_FILE
    if not file.is_file():
        return None
    try:
        tensors = load_file(str(file))
        if set(tensors) != {"weights", "means", "scale"}:
            raise ValueError(f"expected weights, means and scale, found {sorted(tensors)}")
        density = GaussianMixture(tensors["weights"], tensors["means"], tensors["scale"])
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{file}: {exc}") from None
    if density.dim != latent_dim:
        raise ValueError(
            f"{file}: a density over {density.dim}-unit codes; the model has {latent_dim}"
        )
    return density
