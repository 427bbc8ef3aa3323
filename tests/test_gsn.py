"""The generative stochastic network's chain on a denoising autoencoder (models/gsn.py), its
declaration as a sampler, and the declaration checks samplers pass."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from models import SearchBudget
from models.autoencoder import Autoencoder
from models.denoising import CHAIN_FRAMES, DenoisingAutoencoder
from models.gibbs import per_chain_uniform
from models.gsn import Corruption, frame_steps, gsn_chains
from models.latent_density import GaussianMixture
from models.operations import DeclarationError, Op, check_declaration

from .factories import tiny_model


def seeds_of(
    model: DenoisingAutoencoder, n: int, seed: int, temperature: float = 1.0
) -> torch.Tensor:
    return model.chain_seeds(n, torch.Generator().manual_seed(seed), temperature)


def test_corruption_follows_its_kinds_odds_and_levels() -> None:
    x = torch.full((4000, 100), 0.5)
    u = torch.rand(4000, 2 + 200, generator=torch.Generator().manual_seed(0))
    masked = Corruption(("mask",), (1.0,), (0.5,))(x, u, torch.ones(4000))
    # a level uniform in [0, 0.5]: a quarter of the pixels on average are masked to 0
    assert abs(float((masked == 0).float().mean()) - 0.25) < 0.01
    assert torch.equal(masked[masked != 0], x[masked != 0])  # the rest untouched
    hot = Corruption(("mask",), (1.0,), (0.5,))(x, u, torch.full((4000,), 2.0))
    assert abs(float((hot == 0).float().mean()) - 0.5) < 0.01  # temperature 2: levels to 1
    mixed = Corruption(("gaussian", "salt_pepper"), (3.0, 1.0), (0.2, 0.3))(x, u, torch.ones(4000))
    sp_rows = (mixed == 0.5).sum(1) > 50  # salt-and-pepper rows keep most pixels as they were
    assert abs(float(sp_rows.float().mean()) - 0.25) < 0.03  # odds 3:1
    gauss = mixed[~sp_rows]
    assert 0.0 < float((gauss - 0.5).std()) < 0.2  # noise of levels up to 0.2


def test_frame_steps_are_evenly_spaced_from_start_to_end() -> None:
    assert frame_steps(100, 5) == {0, 25, 50, 75, 100}
    assert frame_steps(3, 40) == {0, 1, 2, 3}  # never more frames than states
    assert frame_steps(7, 0) == {7}


def test_a_chain_gives_the_same_image_whatever_its_batch_mates() -> None:
    model = tiny_model("dae")
    budget = SearchBudget(steps=6)
    pair = model.sample_chain(seeds_of(model, 2, 5), budget)
    alone = model.sample_chain(seeds_of(model, 2, 5)[1:], budget)
    assert pair.shape == (2, 1, 28, 28) and float(pair.min()) >= 0 and float(pair.max()) <= 1
    assert torch.allclose(pair[1:], alone, atol=1e-6)
    other = model.sample_chain(seeds_of(model, 2, 6), budget)
    assert not torch.equal(pair, other)  # another seed, other chains (a tiny model: barely)


def test_a_chain_is_the_denoiser_applied_to_its_corruptions() -> None:
    """One step from X_0 ~ U(0, 1): the denoiser's output on C(X_0), nothing else."""
    model = tiny_model("dae")
    seeds = seeds_of(model, 3, 2)
    uniform = per_chain_uniform([int(s) for s in seeds[:, 0]])
    d = 28 * 28
    x0 = uniform(d)
    corrupted = model.corruption(x0, uniform(2 + 2 * d), torch.ones(3))
    with torch.no_grad():
        expected = model.reconstruct(corrupted.view(3, 1, 28, 28))
    assert torch.allclose(model.sample_chain(seeds, SearchBudget(steps=1)), expected, atol=1e-6)


def test_frames_start_at_noise_and_end_at_the_sample() -> None:
    model = tiny_model("dae")
    seeds = seeds_of(model, 2, 3)
    budget = SearchBudget(steps=50)
    frames = model.chain_frames(seeds, budget)
    assert frames.shape == (2, CHAIN_FRAMES, 1, 28, 28)
    assert torch.allclose(frames[:, -1], model.sample_chain(seeds, budget), atol=1e-6)
    start = frames[:, 0].flatten()
    assert abs(float(start.mean()) - 0.5) < 0.05 and float(start.std()) > 0.25  # uniform noise


def test_stop_ends_a_chain_early() -> None:
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 3

    calls = []

    def denoise(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x

    run = gsn_chains(denoise, Corruption(("mask",), (1.0,), (0.1,)), (1, 4, 4), torch.ones(2),
                     1000, per_chain_uniform([1, 2]), stop, frames=5)  # fmt: skip
    assert len(calls) == 3 and run.frames is not None and run.frames.shape == (2, 5, 1, 4, 4)


def test_chain_arguments_are_checked() -> None:
    model = tiny_model("dae")
    with pytest.raises(ValueError, match=r"temperature in \(0, 10\], got 0"):
        model.chain_seeds(2, None, 0.0)
    with pytest.raises(ValueError, match="expected chain seeds of shape \\[n, 2\\], got \\[2\\]"):
        model.sample_chain(torch.zeros(2))
    with pytest.raises(ValueError, match="at least one step, got 0"):
        model.sample_chain(seeds_of(model, 1, 0), SearchBudget(steps=0))


def test_sampler_names_put_a_fitted_density_first() -> None:
    model = tiny_model("dae")
    assert model.sampler_names == ("chain",)
    assert model.sampler(None) is model.sampler("chain")
    with pytest.raises(ValueError, match="no sampler 'latent' \\(they have: chain\\)"):
        model.sampler("latent")
    k = model.latent_dim
    model.attach_latent_density(
        GaussianMixture(torch.ones(2) / 2, torch.zeros(2, k), torch.ones(2, k))
    )
    assert model.sampler_names == ("latent", "chain")
    assert model.sampler(None).prepare == "sample_latent" == model.sampler("latent").prepare
    assert model.sampler("chain").takes_steps
    vae = tiny_model("vae")
    assert vae.sampler_names == ()
    with pytest.raises(ValueError, match="one sampler only; leave sampler out"):
        vae.sampler("chain")


def test_sample_many_draws_chains_from_one_generator() -> None:
    model = tiny_model("dae")
    a = model.sample_many(4, torch.Generator().manual_seed(0), steps=3)
    b = model.sample_many(4, torch.Generator().manual_seed(0), steps=3)
    assert a.shape == (4, 1, 28, 28) and torch.equal(a, b)


class _Chains(Autoencoder):
    family = "test-chains"
    example_config: ClassVar[dict] = {"latent_dim": 2, "width": 2}


@pytest.mark.parametrize(
    ("samplers", "generate", "message"),
    [
        (
            {"latent": Op("decode", prepare="x", search=True)},
            None,
            "sampler 'latent' is the fitted",
        ),
        (
            {"a": Op("sample_a", prepare="seeds", search=True)},
            Op("decode"),
            "generate must be one of",
        ),
        ({"a": Op("nope", prepare="seeds", search=True)}, "same", "names _Chains.nope, which"),
        ({"a": Op("sample_a", prepare="seeds", takes_steps=True)}, "same", "runs as a search"),
        ({"a": Op("plain", prepare="seeds", search=True)}, "same", "plain must take budget="),
        ({"a": Op("plain", prepare="seeds", objective="plain")}, "same", "only a search has an"),
        (
            {"a": Op("sample_a", prepare="seeds", search=True, objective="nope")},
            "same",
            "names _Chains.nope, which",
        ),
    ],
)
def test_sampler_declarations_are_checked(samplers: dict, generate: object, message: str) -> None:
    class Declared(_Chains):
        def seeds(self, n: int) -> torch.Tensor:
            return torch.zeros(n, 2)

        def sample_a(self, seeds: torch.Tensor, budget: SearchBudget | None = None) -> torch.Tensor:
            return seeds

        def plain(self, seeds: torch.Tensor) -> torch.Tensor:
            return seeds

    Declared.__name__ = "_Chains"
    Declared.samplers = samplers
    op = next(iter(samplers.values())) if generate == "same" else generate
    ops = {**Autoencoder.operations, **({"generate": op} if op is not None else {})}
    with pytest.raises(DeclarationError, match=message):
        check_declaration(Declared, ops, Declared.example_config)
