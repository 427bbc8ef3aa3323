"""The RBM: persistent contrastive divergence (Tieleman 2008) on binarized images, then
annealed importance sampling of log Z (models/gibbs.py) so the artifact reports and serves
a log-likelihood."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from models import ConfigError, LatentModel, save_model
from models.gibbs import (
    Ladder,
    ais_betas,
    ais_log_partition,
    fit_bernoulli_mixture,
    shared_uniform,
    tempering_betas,
)
from models.rbm import RBM, binarize

from ..checkpoints import ResumeError
from ..data import Dataset, Split
from ..declaration import TrainingSpec, register_training
from ..density import density_headline, evaluate_density
from ..recipes import Recipe
from ..scoring import Metrics, class_share_metrics, load_judge

if TYPE_CHECKING:
    from ..artifacts import OpenedArtifact  # artifacts imports the families


def binary_states(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> the RBM's binary visible states [N, D]."""
    return binarize(images.float() / 255).flatten(1)


def base_rate_bias(train: Split) -> torch.Tensor:
    """Log-odds of each pixel being on in the binarized training images [D]: the AIS base
    model (and a good start for the visible biases, Hinton's "practical guide", 2010)."""
    on = binary_states(train.images).mean(0)
    p = (on * len(train.images) + 0.5) / (len(train.images) + 1)  # never exactly 0 or 1
    return torch.log(p) - torch.log1p(-p)


def fit_chain_start(model: RBM, train: Split, seed: int = 0) -> dict[str, float | int | str]:
    """Fit the Bernoulli mixture generated chains start from (``config.start_components``
    components) to the binarized training images and store it in the model; a summary for
    the card."""
    k = model.config.start_components
    if not k:
        raise ValueError("the model's config has start_components 0: no chain start to fit")
    v = binary_states(train.images)
    bar = tqdm(desc="chain start EM", leave=False, mininterval=1.0)

    def progress(step: int, ll: float) -> None:
        bar.update(1)
        bar.set_postfix(log_likelihood=f"{ll:.2f}")

    mixture, mean_ll = fit_bernoulli_mixture(
        v, k, torch.Generator().manual_seed(seed), progress=progress
    )
    bar.close()
    model.set_chain_start(mixture)
    return {
        "kind": "Bernoulli mixture fitted by EM to the binarized training images",
        "components": k,
        "training_images": len(v),
        "log_likelihood_per_image": round(mean_ll, 2),
    }


def fit_prior(opened: OpenedArtifact, components: int, seed: int) -> None:
    """``fit-prior`` on an RBM: its way to generate is where its Gibbs chains start, so the
    model is rebuilt with ``components`` chain-start components, fitted, and written back
    whole (weights and config); the card gains the summary as ``chain_start``."""
    assert isinstance(opened.model, RBM)
    model = opened.model.with_start_components(components)
    summary = fit_chain_start(model, opened.data.train, seed)
    save_model(model.eval(), opened.folder)
    print(f"chain start: {json.dumps(summary)}")
    opened.card["chain_start"] = summary
    opened.write_card()


class RBMRecipe(Recipe):
    """PCD-k: the positive phase on the data, the negative phase on ``--chains`` persistent
    chains (default: one per image of the batch) that take ``--cd-steps`` steps per update
    and are never reset. The gradient of
    mean F(v_data) - mean F(v_chain) is the log-likelihood gradient's CD estimate. With
    ``--replicas`` R > 1 each persistent chain is a parallel-tempering ladder (gibbs.Ladder;
    Desjardins et al. 2010) and the beta-1 replica is the negative sample: PCD-1's chains stay
    in the modes they are in, so the model learns too little about the classes they never
    visit (measured: Gibbs chains started at sneakers or dresses leave them within 1,000 steps)."""

    model: RBM

    def __init__(self, model: LatentModel, args: argparse.Namespace) -> None:
        super().__init__(model, args)
        self.chains: torch.Tensor | None = None  # [B, R, D]
        self.steps = 0
        self.replicas = int(getattr(args, "replicas", None) or 1)
        self.start: torch.Tensor | None = None  # training images the chains begin at [N, D]
        self.hidden_offset: torch.Tensor | None = None  # --centering's lambda [H]

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """``--optimizer``: Adam, or SGD with momentum 0.9 (Tieleman 2008; Hinton's guide). The
        ``--weight-decay`` L2 cost applies to W only, as the guide says (not to the biases)."""
        m, args = self.model, self.args
        decay = float(getattr(args, "weight_decay", 0.0) or 0.0)
        groups = [
            {"params": [m.weight], "weight_decay": decay},
            {"params": [m.visible_bias, m.hidden_bias], "weight_decay": 0.0},
        ]
        if getattr(args, "optimizer", "adam") == "sgd":
            return {"model": torch.optim.SGD(groups, lr=args.lr, momentum=0.9)}
        return {"model": torch.optim.Adam(groups, lr=args.lr)}

    def begin(self, train: Split, resumed: bool) -> None:
        """Visible biases start at the base rate (Hinton, "A Practical Guide to Training
        RBMs", 2010), which is also stored as the tempering and AIS base model; the persistent
        chains start at ``--chains`` training images (after ``--resume`` they continue from the
        checkpoint: ``state``)."""
        if self.world.size > 1:
            raise ConfigError(
                "the rbm family trains in one process: its contrastive-divergence steps "
                "compute their gradients outside DistributedDataParallel, so the replicas "
                "would drift apart; run python -m training train without torchrun"
            )
        components = self.model.config.start_components
        if len(train) < 2 * components:
            raise ConfigError(
                f"--start-components {components} needs at least {2 * components} training "
                f"images, got {len(train)} (0 turns the fitted chain start off)"
            )
        if not resumed:
            rate = base_rate_bias(train)
            with torch.no_grad():
                if getattr(self.args, "init_from", None) is None:  # not when fine-tuning
                    self.model.visible_bias.copy_(rate)
                self.model.base_rate.copy_(rate)
        count = getattr(self.args, "chains", None) or self.args.batch_size
        pick = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))
        self.start = binary_states(train.images[pick[:count]]).to(self.device)

    def state(self) -> dict[str, torch.Tensor]:
        """The persistent chains, the centred step's running hidden mean and the step count
        (the tempering swaps alternate with it): so ``--resume`` continues the same chains."""
        state = {"steps": torch.tensor(self.steps)}
        if self.chains is not None:
            state["chains"] = self.chains
        if self.hidden_offset is not None:
            state["hidden_offset"] = self.hidden_offset
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if "steps" in state:
            self.steps = int(state["steps"])
        chains = state.get("chains")
        if chains is not None:
            count = getattr(self.args, "chains", None) or self.args.batch_size
            if chains.shape != (count, self.replicas, self.model.dims):
                raise ResumeError(
                    f"the checkpoint's chains have shape {list(chains.shape)}; this run's "
                    f"need {[count, self.replicas, self.model.dims]} (--chains or --replicas "
                    "changed?)"
                )
            self.chains = chains.to(self.device)
        offset = state.get("hidden_offset")
        if offset is not None:
            self.hidden_offset = offset.to(self.device)

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        m = self.model
        v = binarize(x).flatten(1)
        if self.chains is None:
            # start the chains at data (PCD's usual start), every replica alike
            assert self.start is not None, "the trainer calls begin() before the first step"
            self.chains = self.start.unsqueeze(1).repeat(1, self.replicas, 1)
        n = len(self.chains)
        stats: dict[str, float] = {}
        with torch.no_grad():
            chain = self.chains
            if self.replicas > 1:
                ones = torch.ones(n, device=self.device)
                ladder = Ladder(m, m.base_rate, tempering_betas(self.replicas), ones)
                uniform = shared_uniform(n, generator)
                accepted = 0.0
                for k in range(self.args.cd_steps):
                    chain, _, share = ladder.step(chain, self.steps + k, uniform)
                    accepted += share / self.args.cd_steps
                stats["swap_acceptance"] = accepted
            else:
                for _ in range(self.args.cd_steps):
                    h = torch.bernoulli(m.hidden_given(chain[:, 0]), generator=generator)
                    chain = torch.bernoulli(m.visible_given(h), generator=generator).unsqueeze(1)
            self.chains = chain
            self.steps += self.args.cd_steps
        if getattr(self.args, "centering", False):
            loss = self._centred_step(v, self.chains[:, 0])
        else:
            loss = m.free_energy(v).mean() - m.free_energy(self.chains[:, 0]).mean()
            self._step("model", loss)
        with torch.no_grad():
            error = (m.visible_given(m.hidden_given(v)) - v).pow(2).mean()
        return {"free_energy_gap": loss.item(), "reconstruction_mse": error.item(), **stats}

    @torch.no_grad()
    def _centred_step(self, data: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """One update of the centred RBM (Montavon & Mueller 2012, "Deep Boltzmann Machines
        and the Centering Trick"; Melchior, Fischer & Wiskott 2016, "How to Center Deep
        Boltzmann Machines", JMLR): the energy in terms of v - mu and h - lambda, mu the
        training pixels' mean, lambda a running mean (rate 0.01) of the data's hidden
        probabilities. Its weight gradient is the difference of the centred second moments,
        better conditioned than the plain one; the step is mapped back to the stored
        parameters (W, b - W lambda, c - W^T mu), so the model is the same family as ever.
        Data v [B, D], chains [N, D] -> the free-energy gap (what the plain step's loss is)."""
        m = self.model
        mu = torch.sigmoid(m.base_rate)  # [D]
        h_data, h_model = m.hidden_given(data), m.hidden_given(negative)  # [B, H], [N, H]
        if self.hidden_offset is None:
            self.hidden_offset = h_data.mean(0)
        else:
            self.hidden_offset.lerp_(h_data.mean(0), 0.01)
        lam = self.hidden_offset  # [H]
        grad_w = (data - mu).T @ (h_data - lam) / len(data) - (negative - mu).T @ (
            h_model - lam
        ) / len(negative)  # [D, H]: the centred log-likelihood gradient's estimate
        grad_b = data.mean(0) - negative.mean(0)  # [D]
        grad_c = h_data.mean(0) - h_model.mean(0)  # [H]
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        m.weight.grad = -grad_w  # descent on the negative log-likelihood
        m.visible_bias.grad = -(grad_b - grad_w @ lam)
        m.hidden_bias.grad = -(grad_c - grad_w.T @ mu)
        opt.step()
        return m.free_energy(data).mean() - m.free_energy(negative).mean()

    @torch.no_grad()
    def evaluate_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        v = binarize(x).flatten(1)
        m = self.model
        error = (m.visible_given(m.hidden_given(v)) - v).pow(2).mean(1)
        return {
            "reconstruction_mse": float(error.sum()),
            "free_energy": float(m.free_energy(v).sum()),
        }

    def finish(self, train: Split) -> None:
        """Estimate log Z by AIS and store it with the weights; fit the generated chains'
        start (``--start-components``)."""
        betas = ais_betas(self.args.ais_betas)
        bar = tqdm(total=len(betas) - 1, desc="AIS log Z", leave=False, mininterval=1.0)

        def progress(k: int) -> None:
            bar.n = k
            bar.refresh()

        log_z, error = ais_log_partition(
            self.model, self.model.base_rate, betas, self.args.ais_runs,
            torch.Generator().manual_seed(self.args.seed), progress,
        )  # fmt: skip
        bar.close()
        self.model.log_partition.copy_(torch.tensor([log_z, error]))
        tqdm.write(
            f"AIS: log Z = {log_z:.2f} +- {error:.2f} ({len(betas) - 1} betas, {self.args.ais_runs} runs)"
        )
        if self.model.config.start_components:
            summary = fit_chain_start(self.model, train, self.args.seed)
            tqdm.write(f"chain start: {summary}")


@torch.no_grad()
def evaluate_rbm(
    model: LatentModel, data: Dataset, test: torch.Tensor, args: argparse.Namespace
) -> Metrics:
    """The density evaluation, the stored AIS estimate of log Z it rests on, and which
    classes ``--samples`` generated images fall in by the judge (``classifier-fashion``)."""
    assert isinstance(model, RBM)
    log_z, error = (float(v) for v in model.log_partition)
    out: Metrics = {
        **evaluate_density(model, data, test, args),
        "ais_log_partition": log_z,
        "ais_log_partition_std_error": error,
    }
    if data.class_names:
        out.update(sample_class_shares(model, data, args))
    return out


def sample_class_shares(model: RBM, data: Dataset, args: argparse.Namespace) -> Metrics:
    judge = load_judge(args)
    g = torch.Generator().manual_seed(0)
    n, batch = args.samples, 1000
    sampler = "parallel tempering" if model.config.replicas > 1 else "block Gibbs"
    bar = tqdm(total=n, desc=f"samples ({sampler})", leave=False, mininterval=2.0)
    predicted = []
    for i in range(0, n, batch):
        images = model.sample_many(min(batch, n - i), g)
        predicted.append(judge(images).argmax(1))
        bar.update(len(images))
    bar.close()
    steps = f"{model.config.replicas} replicas, " if model.config.replicas > 1 else ""
    return {
        **class_share_metrics(torch.cat(predicted), data.class_names),
        "sampler": f"{sampler}, {steps}{model.config.gibbs_steps} steps",
    }


register_training(TrainingSpec(
    family="rbm", recipe=RBMRecipe, evaluate=evaluate_rbm, headline=density_headline,
    lr=1e-3, floors=(("min_class_share", ">=", 0.03),), fit_prior=fit_prior,
))  # fmt: skip
