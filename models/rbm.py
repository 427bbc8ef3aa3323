"""Restricted Boltzmann machine with binary visible and hidden units, on binarized images.

- Smolensky 1986; Hinton, "Training Products of Experts by Minimizing Contrastive Divergence",
  Neural Computation 2002; Tieleman, "Training RBMs using Approximations to the Likelihood
  Gradient", ICML 2008 (persistent CD, the trainer's choice: training/families/rbm.py).
- Energy E(v, h) = -b.v - c.h - v^T W h with v in {0,1}^D, h in {0,1}^H; p(h_j = 1 | v) =
  sigmoid(c_j + v.W_:j), p(v_i = 1 | h) = sigmoid(b_i + W_i:.h). The free energy
  F(v) = -b.v - sum_j softplus(c_j + v.W_:j) gives log p(v) = -F(v) - log Z exactly but for
  the partition function Z, estimated by annealed importance sampling (Salakhutdinov & Murray,
  "On the Quantitative Analysis of Deep Belief Networks", ICML 2008; gibbs.py) when the model
  is trained and stored with its weights (``log_partition``: the estimate and its standard
  error). ``log_likelihood`` is therefore an estimate, "AIS estimate".
- Images are binarized at 0.5 (pixel > 0.5 -> 1): the convention of every number it reports.

Operations: ``encode`` gives the hidden units' probabilities p(h = 1 | v) [B, H]; ``decode``
the visible probabilities p(v = 1 | h) for hidden probabilities h (the mean-field step);
``reconstruct`` the two in turn; ``generate`` runs ``gibbs_steps`` steps per chain at a
temperature (energies divided by T) and shows the last step's visible probabilities: block
Gibbs sampling from a state drawn from ``start_components`` Bernoulli mixture components
fitted to the training images (or, with none, from the visible biases' independent pixels),
or with ``replicas`` > 1 parallel tempering from the base rate (gibbs.py), whose chains cross
between modes that a Gibbs chain stays in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import LatentModel, ModelConfig, check_code_shape, check_images, check_positive, register
from .gibbs import (
    BernoulliMixture,
    Uniform,
    chain_uniform,
    gibbs_chains,
    shared_uniform,
    tempered_chains,
    tempering_betas,
)
from .operations import Density, Op, SearchBudget


@dataclasses.dataclass
class RBMConfig(ModelConfig):
    latent_dim: int = 500  # hidden units
    gibbs_steps: int = 1000  # steps of each generated chain
    # replicas of a generated chain: 1 = plain block Gibbs sampling; more = parallel
    # tempering (gibbs.Ladder) between the base-rate model and this one
    replicas: int = 1
    # components of the Bernoulli mixture generated Gibbs chains start from (gibbs.py,
    # fitted to the training images after training); 0: start at the visible biases' pixels
    start_components: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "gibbs_steps")
        check_positive(self, "replicas")
        if self.start_components < 0:
            raise ValueError(f"start_components must be 0 or more, got {self.start_components}")


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Grey levels in [0, 1] -> {0, 1} at 0.5: [B, ...]."""
    return (x > 0.5).to(x.dtype)


@register
class RBM(LatentModel):
    family = "rbm"
    config_class = RBMConfig
    operations = {
        "encode": Op("hidden_probabilities"),
        "decode": Op("decode"),
        "reconstruct": Op("reconstruct"),
        "generate": Op("sample_gibbs", prepare="chain_seeds", search=True),
        "likelihood": Op("log_likelihood", returns=("log_likelihood",)),
    }
    density = Density(
        kind="AIS estimate", convention="binarized at 0.5", features="hidden_probabilities"
    )
    example_config = {"latent_dim": 8, "gibbs_steps": 5, "image_shape": [1, 8, 8]}
    config: RBMConfig
    log_partition: torch.Tensor
    base_rate: torch.Tensor
    start_log_odds: torch.Tensor  # only with config.start_components
    start_log_weights: torch.Tensor

    def __init__(self, config: RBMConfig) -> None:
        super().__init__(config)
        self.dims = math.prod(config.image_shape)
        self.weight = nn.Parameter(torch.randn(self.dims, config.latent_dim) * 0.01)  # W [D, H]
        self.visible_bias = nn.Parameter(torch.zeros(self.dims))  # b [D]
        self.hidden_bias = nn.Parameter(torch.zeros(config.latent_dim))  # c [H]
        # (log Z estimate, its standard error), set by AIS after training; until then a
        # standard error of -1 marks "not estimated" (not NaN: checkpoints refuse non-finite
        # tensors, and a training checkpoint is written before AIS runs)
        self.register_buffer("log_partition", torch.tensor([0.0, -1.0]))
        # log-odds of each pixel in the binarized training images [D], set by the trainer:
        # AIS's and parallel tempering's base-rate model
        self.register_buffer("base_rate", torch.zeros(self.dims))
        if config.start_components:  # where generated Gibbs chains start (gibbs.BernoulliMixture)
            k = config.start_components
            self.register_buffer("start_log_odds", torch.zeros(k, self.dims))  # [K, D]
            self.register_buffer("start_log_weights", torch.full((k,), -math.log(k)))  # [K]

    @property
    def chain_start(self) -> BernoulliMixture | None:
        """The mixture generated Gibbs chains start from, if the model has one."""
        if not self.config.start_components:
            return None
        return BernoulliMixture(self.start_log_odds, self.start_log_weights)

    def with_start_components(self, components: int) -> RBM:
        """A copy of this RBM (weights, log Z, base rate) whose config holds ``components``
        chain-start components, their tensors still unfitted: the count sizes the stored
        tensors, so a trained RBM gains a start by being rebuilt."""
        copy = RBM(dataclasses.replace(self.config, start_components=components))
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("start_")}
        missing, unexpected = copy.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"start_log_odds", "start_log_weights"}:
            raise RuntimeError(f"rebuilding the RBM: unexpected {unexpected}, missing {missing}")
        return copy.train(self.training)

    def set_chain_start(self, mixture: BernoulliMixture) -> None:
        """Store a fitted start; its component count must be the config's."""
        k = self.config.start_components
        if mixture.log_odds.shape != (k, self.dims) or mixture.log_weights.shape != (k,):
            raise ValueError(
                f"expected a start of {k} components over {self.dims} pixels, got log-odds "
                f"{list(mixture.log_odds.shape)} and weights {list(mixture.log_weights.shape)}"
            )
        self.start_log_odds.copy_(mixture.log_odds)
        self.start_log_weights.copy_(mixture.log_weights)

    def visible(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [0, 1] -> binary visible units v [B, D]."""
        check_images(self, x)
        return binarize(x).flatten(1)

    def hidden_given(self, v: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """p(h = 1 | v) [B, H] for visible states (or probabilities) v [B, D]."""
        return torch.sigmoid((v @ self.weight + self.hidden_bias) / temperature)

    def visible_given(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """p(v = 1 | h) [B, D] for hidden states (or probabilities) h [B, H]."""
        return torch.sigmoid((h @ self.weight.T + self.visible_bias) / temperature)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -b.v - sum_j softplus(c_j + v.W_:j): [B] (nats)."""
        return -(v @ self.visible_bias) - F.softplus(v @ self.weight + self.hidden_bias).sum(1)

    def hidden_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """encode: x [B, C, H, W] -> p(h = 1 | binarized x) [B, H]."""
        return self.hidden_given(self.visible(x))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, H] (probabilities in [0, 1]) -> p(v = 1 | h) as images [B, C, H, W]."""
        check_code_shape(self, h)
        return self.visible_given(h.clamp(0, 1)).view(-1, *self.image_shape)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x -> p(v = 1 | p(h = 1 | binarized x)): one mean-field up-down pass [B, C, H, W]."""
        return self.decode(self.hidden_probabilities(x))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """log p(binarized x) = -F(v) - log Z, with the stored AIS estimate of log Z: [B].
        Raises ValueError if the model has none (it was never estimated)."""
        log_z, error = (float(v) for v in self.log_partition)
        if error < 0:
            raise ValueError(
                "this RBM has no estimate of its partition function; run "
                "python -m training evaluate on it to estimate one by AIS"
            )
        return -self.free_energy(self.visible(x)) - log_z

    def sample_gibbs(self, seeds: torch.Tensor, budget: SearchBudget | None = None) -> torch.Tensor:
        """seeds [n, 2] (chain_seeds) -> the last step's p(v = 1 | h) as images [n, C, H, W]."""
        uniform, temperatures = chain_uniform(seeds)
        return self.run_chains(temperatures, uniform, budget.stop if budget else None)

    def sample_many(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images [n, C, H, W] by the same chains as ``generate``, all drawing from one
        generator: much faster for the thousands of samples an evaluation needs, but a
        chain's image then depends on its batch-mates (the service never uses it)."""
        return self.run_chains(torch.ones(n), shared_uniform(n, generator))

    def run_chains(
        self, temperatures: torch.Tensor, uniform: Uniform, stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """One chain per temperature [n], ``gibbs_steps`` steps: Gibbs or tempered (config)."""
        steps = self.config.gibbs_steps
        if self.config.replicas > 1:
            betas = tempering_betas(self.config.replicas)
            probs = tempered_chains(self, self.base_rate, betas, temperatures, steps, uniform, stop)
        else:
            probs = gibbs_chains(self, temperatures, steps, uniform, stop, self.chain_start)
        return probs.view(-1, *self.image_shape)
