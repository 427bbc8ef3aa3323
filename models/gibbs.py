"""Markov chains on an RBM (rbm.py), kept out of ``nn.Module``: block Gibbs sampling, and
annealed importance sampling of the log partition function.

AIS: Neal, "Annealed Importance Sampling", Statistics and Computing 2001; for RBMs,
Salakhutdinov & Murray, "On the Quantitative Analysis of Deep Belief Networks", ICML 2008,
section 3. The chain anneals from a base-rate RBM A (no weights, visible biases b_A, so
log Z_A = sum_i softplus(b_A,i) + H log 2 exactly) to the model B through
p*_beta(v) = exp((1 - beta) b_A.v + beta b.v) prod_j (1 + exp(beta (c_j + v.W_:j))),
each step a Gibbs transition that leaves p_beta invariant, and accumulates the log importance
weight sum_k log p*_beta_k(v_k-1) - log p*_beta_k-1(v_k-1). Then
Z_B / Z_A ~ mean(w) over the runs: unbiased for Z, so log of it is a stochastic lower bound
in expectation; more intermediate betas give a tighter estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F


class BoltzmannMachine(Protocol):
    """What the chains need of an RBM (models/rbm.py): W [D, H], b [D], c [H]."""

    @property
    def weight(self) -> torch.Tensor: ...
    @property
    def visible_bias(self) -> torch.Tensor: ...
    @property
    def hidden_bias(self) -> torch.Tensor: ...
    @property
    def dims(self) -> int: ...
    @property
    def latent_dim(self) -> int: ...


def _bernoulli(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (u < p).to(p.dtype)


Uniform = Callable[[int], torch.Tensor]  # size -> uniforms [n chains, size]


def per_chain_uniform(seeds: list[int]) -> Uniform:
    """Each chain draws from its own generator: a chain's result does not depend on the other
    chains in its batch (what the service needs for seeded requests)."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return lambda size: torch.stack([torch.rand(size, generator=g) for g in gens])


def shared_uniform(n: int, generator: torch.Generator | None = None) -> Uniform:
    """All ``n`` chains draw from one generator: the same distribution, much faster for
    thousands of chains (the evaluator's samples)."""
    device = None if generator is None else generator.device  # the draws live with it
    return lambda size: torch.rand(n, size, generator=generator, device=device)


def seed_chains(n: int, generator: torch.Generator | None, temperature: float) -> torch.Tensor:
    """One (seed, temperature) per chain [n, 2] (float64: a seed below 2^31 is exact), drawn
    from a request's ``generator``: each chain then draws its own randomness
    (``per_chain_uniform``), so it gives the same image whatever it is batched with."""
    if not 0 < temperature <= 10:
        raise ValueError(f"a chain samples at a temperature in (0, 10], got {temperature}")
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator, dtype=torch.int64)
    return torch.stack(
        [seeds.to(torch.float64), torch.full((n,), float(temperature), dtype=torch.float64)], 1
    )


def chain_uniform(seeds: torch.Tensor) -> tuple[Uniform, torch.Tensor]:
    """Chain seeds [n, 2] (``seed_chains``) -> (each chain's own uniforms, temperatures [n])."""
    if seeds.ndim != 2 or seeds.shape[1] != 2:
        raise ValueError(f"expected chain seeds of shape [n, 2], got {list(seeds.shape)}")
    return per_chain_uniform([int(s) for s in seeds[:, 0]]), seeds[:, 1].to(torch.float32)


class BernoulliMixture(NamedTuple):
    """A mixture of K products of independent Bernoullis over the visible units: where
    generated chains start (``gibbs_chains``), fitted to the binarized training images
    (``fit_bernoulli_mixture``). Each component is roughly one kind of image, so chains start
    in every part of the data rather than at the pixels' average, and the RBM's own Gibbs
    steps take them from there."""

    log_odds: torch.Tensor  # [K, D] each component's pixel log-odds
    log_weights: torch.Tensor  # [K] log mixing proportions

    def draw(self, uniform: Uniform, temperatures: torch.Tensor) -> torch.Tensor:
        """One state per chain [n, D]: a component by its weight, then its pixels at the
        chain's temperature (log-odds / T), from the chains' own uniforms."""
        cumulative = self.log_weights.softmax(0).cumsum(0)
        pick = torch.searchsorted(cumulative, uniform(1).contiguous()).clamp_max(
            len(cumulative) - 1
        )
        log_odds = self.log_odds[pick.view(-1)] / temperatures.view(-1, 1)
        return _bernoulli(torch.sigmoid(log_odds), uniform(self.log_odds.shape[1]))


def fit_bernoulli_mixture(
    v: torch.Tensor,
    components: int,
    generator: torch.Generator | None = None,
    iterations: int = 50,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[BernoulliMixture, float]:
    """EM for a mixture of independent Bernoullis (Bishop, "Pattern Recognition and Machine
    Learning", 2006, section 9.3.3) on binary states v [N, D]: (the mixture, the mean log
    likelihood per state in nats, under the parameters of the last E step). Components start at
    states spread as k-means++ spreads its centres; each M step adds one pseudo-count of 0
    and of 1 per pixel (a Beta(2, 2) prior), so no pixel is ever certain."""
    if v.ndim != 2 or not len(v):
        raise ValueError(f"expected binary states [N, D], got shape {list(v.shape)}")
    if not 1 <= components <= len(v):
        raise ValueError(
            f"components must be between 1 and {len(v)} (the states), got {components}"
        )
    v = v.double()
    means = _spread_starts(v, components, generator) * 0.9 + 0.05  # [K, D]
    log_weights = torch.full((components,), -math.log(components), dtype=torch.float64)
    mean_ll = -math.inf
    for step in range(iterations):
        joint = v @ means.log().T + (1 - v) @ (1 - means).log().T + log_weights  # [N, K]
        total = torch.logsumexp(joint, 1)
        mean_ll = float(total.mean())
        responsibility = (joint - total[:, None]).exp()
        counts = responsibility.sum(0)  # [K]
        means = (responsibility.T @ v + 1) / (counts[:, None] + 2)
        log_weights = (counts / len(v)).clamp_min(1e-12).log()
        if progress is not None:
            progress(step, mean_ll)
    mixture = BernoulliMixture((means.log() - (1 - means).log()).float(), log_weights.float())
    return mixture, mean_ll


def _spread_starts(v: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k of the states v [N, D] chosen as k-means++ chooses its centres (Arthur &
    Vassilvitskii 2007): each next one with probability proportional to its squared Hamming
    distance to the nearest one chosen, so no two components start on the same state."""
    chosen = [int(torch.randint(len(v), (1,), generator=generator))]
    nearest = (v - v[chosen[0]]).abs().sum(1).pow(2)  # [N]
    for _ in range(k - 1):
        total = float(nearest.sum())
        if total == 0:  # fewer distinct states than components: repeat at random
            index = int(torch.randint(len(v), (1,), generator=generator))
        else:
            index = int(torch.multinomial(nearest / total, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, (v - v[index]).abs().sum(1).pow(2))
    return v[chosen]


@torch.no_grad()
def gibbs_chains(
    rbm: BoltzmannMachine,
    temperatures: torch.Tensor,
    steps: int,
    uniform: Uniform,
    stop: Callable[[], bool] | None = None,
    start: BernoulliMixture | None = None,
) -> torch.Tensor:
    """Run one block Gibbs chain per temperature [n], drawing from ``uniform``, from
    ``start`` (or without one from the visible biases' independent pixels); return the last
    step's p(v = 1 | h) [n, D]."""
    t = temperatures.view(-1, 1)
    if start is None:
        v = _bernoulli(torch.sigmoid(rbm.visible_bias / t), uniform(rbm.dims))
    else:
        v = start.draw(uniform, temperatures)
    p_v = v
    for step in range(steps):
        h_prob = torch.sigmoid((v @ rbm.weight + rbm.hidden_bias) / t)
        h = _bernoulli(h_prob, uniform(rbm.latent_dim))
        p_v = torch.sigmoid((h @ rbm.weight.T + rbm.visible_bias) / t)
        v = _bernoulli(p_v, uniform(rbm.dims))
        if stop is not None and step % 50 == 49 and stop():
            break
    return p_v


def ais_betas(count: int = 14_500) -> torch.Tensor:
    """The inverse temperatures 0 = beta_0 < ... < beta_K = 1, denser near 1, in the
    proportions of Salakhutdinov & Murray: 500 up to 0.5, 4,000 up to 0.9, 10,000 up to 1."""
    a, b = max(1, round(count * 500 / 14_500)), max(1, round(count * 4_000 / 14_500))
    c = max(1, count - a - b)
    return torch.cat([
        torch.linspace(0, 0.5, a + 1)[:-1], torch.linspace(0.5, 0.9, b + 1)[:-1],
        torch.linspace(0.9, 1.0, c + 1),
    ]).double()  # fmt: skip


def _log_unnormalised(
    rbm: BoltzmannMachine, v: torch.Tensor, beta: float, base_bias: torch.Tensor
) -> torch.Tensor:
    """log p*_beta(v) [M] (hidden units summed out), float64."""
    w, b, c = rbm.weight.double(), rbm.visible_bias.double(), rbm.hidden_bias.double()
    return _path_log_p(v, beta, 1 - beta, base_bias, w, b, c)


def _path_log_p(
    v: torch.Tensor, model_share: torch.Tensor | float, base_share: torch.Tensor | float,
    base_bias: torch.Tensor, w: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """log of exp(base_share a.v) p*(v)^model_share on AIS's path for states v [..., D],
    the hidden units summed out: [...]. The shares broadcast against v's leading dims."""
    fields = model_share * (v @ w + c)
    return ((base_share * base_bias + model_share * b) * v).sum(-1) + F.softplus(fields).sum(-1)


def tempering_betas(replicas: int) -> torch.Tensor:
    """The inverse temperatures 1 = beta_0 > ... > beta_R-1 = 0 of parallel tempering's
    replicas [R], spaced evenly in beta^2 so that they crowd near 1, as AIS's schedule does
    (``ais_betas``): near the model the distributions change fastest with beta."""
    if replicas < 2:
        raise ValueError(f"parallel tempering needs at least 2 replicas, got {replicas}")
    return torch.linspace(1.0, 0.0, replicas).sqrt()


class Ladder:
    """Parallel tempering's replicas (Swendsen & Wang 1986; for RBMs Desjardins et al.,
    "Tempered Markov Chain Monte Carlo for Training of Restricted Boltzmann Machines",
    AISTATS 2010): replica r of a chain samples p_r(v) ∝ exp((1 - beta_r) a.v) p*(v)^(beta_r / T),
    on AIS's path from the base-rate model (visible biases ``base_bias`` a [D], beta 0:
    independent pixels) to the model at temperature T (beta 1). A step is a block Gibbs sweep
    of every replica, then a Metropolis swap of neighbouring replicas (even pairs on even
    steps, odd pairs on odd ones): states found where mixing is easy travel down to beta 1, so
    a chain visits modes that a plain Gibbs chain never leaves for."""

    def __init__(
        self,
        rbm: BoltzmannMachine,
        base_bias: torch.Tensor,
        betas: torch.Tensor,
        temperatures: torch.Tensor,
    ) -> None:
        if betas.ndim != 1 or len(betas) < 2 or float(betas[0]) != 1.0:
            raise ValueError("betas must start at 1 and have at least 2 replicas")
        dtype, device = rbm.weight.dtype, rbm.weight.device
        self.rbm, self.base = rbm, base_bias.to(device, dtype)
        self.replicas = len(betas)
        beta = betas.to(device, dtype)
        # [n, R, 1]: the share of the model's energy each replica sees, and of the base rate's
        self.scale = beta.view(1, -1, 1) / temperatures.to(device, dtype).view(-1, 1, 1)
        self.rest = (1 - beta).view(1, -1, 1)

    def start(self, uniform: Uniform) -> torch.Tensor:
        """Every replica of every chain drawn from the base rate: v [n, R, D]."""
        n, r, d = self.scale.shape[0], self.replicas, self.rbm.dims
        return _bernoulli(torch.sigmoid(self.base).expand(n, r, d), uniform(r * d).view(n, r, d))

    def log_p(self, v: torch.Tensor, replicas: torch.Tensor) -> torch.Tensor:
        """log p*_r(v) [n, P] for states v [n, P, D] under the replicas [P] (h summed out)."""
        rbm = self.rbm
        return _path_log_p(v, self.scale[:, replicas], self.rest[:, replicas], self.base,
                           rbm.weight, rbm.visible_bias, rbm.hidden_bias)  # fmt: skip

    def step(
        self, v: torch.Tensor, parity: int, uniform: Uniform
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One sweep and one round of swaps of states v [n, R, D] -> (new v [n, R, D], its
        p(v = 1 | h) [n, R, D], the share of proposed swaps accepted)."""
        rbm, n, r = self.rbm, v.shape[0], self.replicas
        h_prob = torch.sigmoid(self.scale * (v @ rbm.weight + rbm.hidden_bias))
        h = _bernoulli(h_prob, uniform(r * rbm.latent_dim).view(n, r, -1))
        p_v = torch.sigmoid(
            self.rest * self.base + self.scale * (h @ rbm.weight.T + rbm.visible_bias)
        )
        v = _bernoulli(p_v, uniform(r * rbm.dims).view(n, r, -1))
        pairs = torch.arange(parity % 2, r - 1, 2)  # swap i with i + 1
        u = uniform(r - 1)[:, : len(pairs)]  # [n, P]
        a, b = v[:, pairs], v[:, pairs + 1]
        log_accept = (
            self.log_p(b, pairs) + self.log_p(a, pairs + 1)
            - self.log_p(a, pairs) - self.log_p(b, pairs + 1)
        )  # fmt: skip
        swap = (u.log() < log_accept).unsqueeze(-1)  # [n, P, 1]
        v[:, pairs], v[:, pairs + 1] = torch.where(swap, b, a), torch.where(swap, a, b)
        pa, pb = p_v[:, pairs], p_v[:, pairs + 1]
        p_v[:, pairs], p_v[:, pairs + 1] = torch.where(swap, pb, pa), torch.where(swap, pa, pb)
        return v, p_v, float(swap.float().mean()) if len(pairs) else 0.0


@torch.no_grad()
def tempered_chains(
    rbm: BoltzmannMachine,
    base_bias: torch.Tensor,
    betas: torch.Tensor,
    temperatures: torch.Tensor,
    steps: int,
    uniform: Uniform,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """One parallel-tempering chain (``Ladder``) per temperature [n], ``steps`` steps from the
    base rate; returns the beta-1 replica's last p(v = 1 | h) [n, D]."""
    ladder = Ladder(rbm, base_bias, betas, temperatures)
    v = ladder.start(uniform)
    p_v = v
    for step in range(steps):
        v, p_v, _ = ladder.step(v, step, uniform)
        if stop is not None and step % 50 == 49 and stop():
            break
    return p_v[:, 0]


@torch.no_grad()
def anneal(
    rbm: BoltzmannMachine,
    base_bias: torch.Tensor,
    betas: torch.Tensor,
    runs: int,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``runs`` annealing runs (Neal 2001) from the base-rate RBM (visible bias ``base_bias``
    [D]) to ``rbm`` over ``betas`` [K + 1], one Gibbs transition per beta, in float64:
    (each run's log importance weight [runs], its last p(v = 1 | h) [runs, D]). The weights
    give AIS's estimate of log Z; weighted, the final states stand for the model's own
    distribution."""
    if betas.ndim != 1 or float(betas[0]) != 0.0 or float(betas[-1]) != 1.0:
        raise ValueError("betas must run from 0 to 1")
    w, b, c = rbm.weight.double(), rbm.visible_bias.double(), rbm.hidden_bias.double()
    base = base_bias.double()
    v = (
        torch.rand(runs, rbm.dims, generator=generator, dtype=torch.float64) < torch.sigmoid(base)
    ).double()
    p_v = v
    log_w = torch.zeros(runs, dtype=torch.float64)
    previous = 0.0
    for k, beta_t in enumerate(betas[1:].tolist()):
        log_w += _log_unnormalised(rbm, v, beta_t, base) - _log_unnormalised(rbm, v, previous, base)
        # a Gibbs transition that leaves p_beta invariant
        h = (torch.rand(runs, rbm.latent_dim, generator=generator, dtype=torch.float64)
             < torch.sigmoid(beta_t * (v @ w + c))).double()  # fmt: skip
        p_v = torch.sigmoid((1 - beta_t) * base + beta_t * (h @ w.T + b))
        v = (torch.rand(runs, rbm.dims, generator=generator, dtype=torch.float64) < p_v).double()
        previous = beta_t
        if progress is not None and k % 500 == 0:
            progress(k)
    return log_w, p_v


@torch.no_grad()
def ais_log_partition(
    rbm: BoltzmannMachine,
    base_bias: torch.Tensor,
    betas: torch.Tensor,
    runs: int = 100,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, float]:
    """(estimate of log Z, its standard error by the delta method) with ``runs`` parallel
    annealing runs over ``betas`` [K + 1]; ``base_bias`` [D] is the base rate RBM's visible
    bias (log-odds of the training pixels' means). Computed in float64."""
    log_w, _ = anneal(rbm, base_bias, betas, runs, generator, progress)
    log_z_base = float(F.softplus(base_bias.double()).sum()) + rbm.latent_dim * math.log(2)
    log_mean_w = float(torch.logsumexp(log_w, 0)) - math.log(runs)
    ratio = torch.exp(log_w - log_w.max())  # w / max(w)
    rel = float(ratio.std() / ratio.mean()) / math.sqrt(runs) if runs > 1 else float("inf")
    return (
        log_z_base + log_mean_w,
        rel,
    )  # the standard error of log(mean w) ~ std(w)/(mean(w) sqrt(M))


@torch.no_grad()
def exact_log_partition(rbm: BoltzmannMachine) -> float:
    """log Z by summing over every hidden state: only for tiny RBMs (H <= 20), e.g. tests."""
    hidden = rbm.latent_dim
    if hidden > 20:
        raise ValueError(f"exact log Z sums 2^H terms; H = {hidden} is too many")
    states = torch.tensor(
        [[(i >> j) & 1 for j in range(hidden)] for i in range(2**hidden)], dtype=torch.float64
    )
    w, b, c = rbm.weight.double(), rbm.visible_bias.double(), rbm.hidden_bias.double()
    terms = states @ c + F.softplus(states @ w.T + b).sum(1)  # log sum_v exp(-E(v, h)) per h
    return float(torch.logsumexp(terms, 0))
