"""The explicit-density families (pixelcnn, made, rbm) and the likelihood of the others:
exact distributions, causal masks, caching that changes nothing, AIS against the exact
partition function, bounds that behave like bounds, and the anomaly score's calibration."""

from __future__ import annotations

import json
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import build_model, logistic
from models.anomaly import (
    FEATURES_FILE,
    MAX_FEATURES,
    Calibration,
    combined_calibration,
    combined_method,
    complexity_bits,
    fit_feature_gaussian,
    orientation_score,
    orientations,
    read_calibration,
    read_feature_gaussian,
    reorient,
    write_calibration,
    write_feature_gaussian,
)
from models.autoregressive import pixelcnn_pixel_params, pixelcnn_row_links
from models.gibbs import (
    BernoulliMixture,
    Ladder,
    ais_betas,
    ais_log_partition,
    exact_log_partition,
    fit_bernoulli_mixture,
    gibbs_chains,
    per_chain_uniform,
    shared_uniform,
    tempered_chains,
    tempering_betas,
)
from models.rbm import RBM
from training.ood import auroc, ood_sets

from .factories import tiny_model


def test_discretized_logistic_is_a_distribution_over_256_levels() -> None:
    """Summed over every 8-bit value, the probabilities are 1 for any parameters, including
    extreme ones (a very narrow or very wide component, a mean outside [-1, 1])."""
    g = torch.Generator().manual_seed(0)
    k = 3
    params = torch.randn(5, 3 * k, generator=g) * 3
    params[0, 2 * k :] = -7.0  # narrowest scale
    params[1, k : 2 * k] = 4.0  # means beyond the right edge
    levels = torch.arange(256.0)
    lp = logistic.log_prob(params.repeat_interleave(256, 0), levels.repeat(5), k).view(5, 256)
    assert torch.allclose(lp.exp().sum(1), torch.ones(5), atol=2e-3)
    # sampling puts the values where the mass is: at temperature 0, the chosen mean
    noise = logistic.draw_noise((5,), k, g, 0.0)
    values = logistic.sample(params, noise, k)
    assert ((values >= 0) & (values <= 255)).all() and torch.equal(values, values.round())


def _seen_by(model: torch.nn.Module, out_fn, x: torch.Tensor, index: int) -> torch.Tensor:
    """Which input positions (flattened) the output at ``index`` depends on: |d out / d x| > 0."""
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(out_fn(x)[index].sum(), x)
    return grad.flatten(1)[0].abs() > 0


@pytest.mark.parametrize("position", [(0, 0), (0, 5), (3, 0), (7, 7), (4, 6), (6, 2)])
def test_pixelcnn_sees_only_the_pixels_before_it(position: tuple[int, int]) -> None:
    """No blind spot and no leak: the parameters of pixel (i, j) depend on no pixel at or
    after it in raster order, and on the pixel just left of it and the one just above."""
    torch.manual_seed(0)
    model = build_model(
        "pixelcnn", {"channels": 6, "dilations": [1, 2, 1], "image_shape": [1, 8, 8]}
    )
    i, j = position
    seen = torch.zeros(64, dtype=torch.bool)
    for _ in range(4):  # a union over inputs: one input may switch a ReLU path off
        x = torch.rand(1, 1, 8, 8) * 2 - 1
        seen |= _seen_by(model, lambda v: model(v)[0, 0, :, i, j], x, slice(None))
    flat = i * 8 + j
    assert not seen[flat:].any()
    if j > 0:
        assert seen[flat - 1]  # left neighbour
    if i > 0:
        assert seen[flat - 8]  # the pixel above (the blind spot of a plain masked conv)
        assert seen[(i - 1) * 8 + min(7, j + 1)]  # above-right: the vertical stack


def test_pixelcnn_row_caching_gives_the_full_forward_parameters() -> None:
    """The sampler's band-and-strip computation equals one pass over the whole image."""
    model = build_model("pixelcnn", {"channels": 8, "dilations": [1, 2, 1, 4]}).eval()
    xu = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        full = model(xu)
        for row, col in [(0, 0), (0, 27), (5, 0), (27, 27), (20, 13), (13, 20), (27, 0)]:
            links = pixelcnn_row_links(model, xu, row)
            got = pixelcnn_pixel_params(model, xu, links, row, col)
            assert torch.allclose(got, full[:, :, :, row, col], atol=1e-5)


def test_made_output_d_depends_on_inputs_before_d_only() -> None:
    torch.manual_seed(0)
    model = build_model("made", {"hidden_sizes": [32, 32], "image_shape": [1, 8, 8]})
    x = torch.rand(1, 64) * 2 - 1
    for d in (0, 1, 17, 63):
        seen = _seen_by(model, lambda v, d=d: model.pixel_params(v)[0, :, d], x, slice(None))
        assert not seen[d:].any()
    seen_last = _seen_by(model, lambda v: model.pixel_params(v)[0, :, 63], x, slice(None))
    assert seen_last[:63].sum() > 32  # the last pixel sees most of the image


@pytest.mark.parametrize("family", ["pixelcnn", "made"])
def test_autoregressive_samples_are_seeded_and_independent_of_batch_mates(family: str) -> None:
    shape = (1, 8, 8)
    model = tiny_model(family, image_shape=shape)
    noise = model.sample_noise(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        together = model.sample_pixels(noise)
        alone = model.sample_pixels(noise[2:3])
    assert together.shape == (4, *shape)
    assert torch.allclose(together[2:3], alone, atol=1 / 255)
    levels = together * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8-bit values
    # temperature 0 is deterministic whatever the seed
    cold = [
        model.sample_pixels(model.sample_noise(1, torch.Generator().manual_seed(s), 0.0))
        for s in (1, 2)
    ]
    assert torch.equal(cold[0], cold[1])


def test_sampling_stops_when_nobody_waits() -> None:
    from models import SearchBudget

    model = tiny_model("pixelcnn", image_shape=(1, 8, 8))
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with torch.no_grad():
        out = model.sample_pixels(model.sample_noise(1), SearchBudget(stop=stop))
    assert len(asked) == 2  # asked once per row, stopped after the second
    assert float(out[0, 0, 2:].abs().sum()) == 0  # rows after the stop were never drawn


def test_rbm_free_energy_sums_out_the_hidden_units() -> None:
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    with torch.no_grad():
        model.weight.mul_(40)  # weights that matter
        v = (torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
        h = torch.tensor(
            [[(i >> j) & 1 for j in range(8)] for i in range(256)], dtype=torch.float32
        )
        energy = (
            -(v @ model.visible_bias)[:, None]
            - (h @ model.hidden_bias)[None]
            - v @ model.weight @ h.T
        )
        assert torch.allclose(-model.free_energy(v), torch.logsumexp(-energy, 1), atol=1e-4)


def test_ais_estimates_the_exact_log_partition_function() -> None:
    """Annealed importance sampling lands near log Z summed exactly over 2^8 hidden states,
    and its reported standard error is honest about the distance."""
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.weight.copy_(torch.randn(64, 8, generator=g) * 0.3)
        model.visible_bias.copy_(torch.randn(64, generator=g) * 0.5)
        model.hidden_bias.copy_(torch.randn(8, generator=g) * 0.5)
    exact = exact_log_partition(model)
    base = torch.zeros(64)
    estimate, error = ais_log_partition(model, base, ais_betas(2000), runs=64, generator=g)
    assert abs(estimate - exact) < max(0.05, 5 * error), (estimate, exact, error)
    assert error < 0.05


def test_rbm_likelihood_uses_the_stored_log_partition_and_refuses_without_one() -> None:
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    v = (x > 0.5).float().flatten(1)
    expected = -model.free_energy(v) - exact_log_partition(model)
    assert torch.allclose(model.log_likelihood(x), expected, atol=1e-4)
    fresh = build_model("rbm", {"latent_dim": 8, "image_shape": [1, 8, 8]})
    assert isinstance(fresh, RBM)
    with pytest.raises(ValueError, match="partition function"):
        fresh.log_likelihood(x)


def test_gibbs_chains_do_not_depend_on_their_batch_mates() -> None:
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    temps = torch.ones(3)
    together = gibbs_chains(model, temps, 20, per_chain_uniform([5, 6, 7]))
    alone = gibbs_chains(model, temps[:1], 20, per_chain_uniform([6]))
    assert torch.allclose(together[1:2], alone, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


def two_mode_rbm(weight: float, hidden_bias: float) -> types.SimpleNamespace:
    """Six visible units, one hidden unit: the hidden unit on turns every pixel on, off turns
    them off. With large weights the two modes are far apart and Gibbs chains stay in the
    one they start in."""
    return types.SimpleNamespace(
        weight=torch.full((6, 1), weight), visible_bias=torch.full((6,), -weight / 2),
        hidden_bias=torch.full((1,), hidden_bias), dims=6, latent_dim=1,
    )  # fmt: skip


def exact_pixel_means(rbm: types.SimpleNamespace, temperature: float) -> torch.Tensor:
    """E[v] [6] under p(v) ∝ sum_h exp(-E(v, h) / T), summed over all 64 visible states."""
    v = torch.tensor([[(i >> j) & 1 for j in range(6)] for i in range(64)], dtype=torch.float64)
    w, b, c = (t.double() for t in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))
    log_p = (v @ b) / temperature + F.softplus((v @ w + c) / temperature).sum(1)
    return (torch.softmax(log_p, 0)[:, None] * v).sum(0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_parallel_tempering_samples_the_exact_distribution_where_gibbs_is_stuck(
    temperature: float,
) -> None:
    """On two far-apart modes (98% of the mass in one at T = 1) tempered chains' pixel means
    match the exact ones; plain Gibbs chains of the same length stay where they started."""
    rbm = two_mode_rbm(8.0, -12.0)
    exact = exact_pixel_means(rbm, temperature)
    n, temps = 4000, torch.full((4000,), temperature)
    g = torch.Generator().manual_seed(0)
    tempered = tempered_chains(
        rbm, torch.zeros(6), tempering_betas(8), temps, 60, shared_uniform(n, g)
    ).mean(0)
    assert torch.allclose(tempered.double(), exact, atol=0.02), (tempered, exact)
    if temperature == 1.0:
        gibbs = gibbs_chains(rbm, temps, 60, shared_uniform(n, g)).mean(0)
        assert float((gibbs.double() - exact).abs().max()) > 0.3  # the test has teeth


def test_em_recovers_a_bernoulli_mixture_and_chains_start_in_its_components() -> None:
    """Two six-pixel patterns, 3:1, each pixel flipped 5% of the time: EM finds both with
    their weights; drawn starts follow the weights and the patterns."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.float32)
    which = (torch.rand(4000, generator=g) < 0.25).long()
    flips = (torch.rand(4000, 6, generator=g) < 0.05).float()
    v = (patterns[which] + flips) % 2
    mixture, mean_ll = fit_bernoulli_mixture(v, 2, torch.Generator().manual_seed(1))
    order = mixture.log_weights.argsort(descending=True)
    weights = mixture.log_weights.exp()[order]
    assert torch.allclose(weights, torch.tensor([0.75, 0.25]), atol=0.03), weights
    on = torch.sigmoid(mixture.log_odds[order])
    assert torch.allclose(on, patterns * 0.9 + 0.05, atol=0.03), on  # 95% / 5% per pixel
    # minus the entropy of the flips and of the pattern's choice
    expected = 6 * (0.05 * math.log(0.05) + 0.95 * math.log(0.95))
    expected += 0.75 * math.log(0.75) + 0.25 * math.log(0.25)
    assert mean_ll == pytest.approx(expected, abs=0.05)

    sharp = BernoulliMixture(patterns * 60 - 30, torch.tensor([0.2, 0.8]).log())
    n = 5000
    starts = sharp.draw(shared_uniform(n, torch.Generator().manual_seed(2)), torch.ones(n))
    second = (starts == patterns[1]).all(1)
    assert bool((second | (starts == patterns[0]).all(1)).all())
    assert float(second.float().mean()) == pytest.approx(0.8, abs=0.02)
    with pytest.raises(ValueError, match="between 1 and 4000"):
        fit_bernoulli_mixture(v, 0)


def test_gibbs_chains_end_in_the_modes_their_start_puts_them_in() -> None:
    """Where Gibbs is stuck (two far-apart modes), chains from the pixels' average all fall
    into one mode, while a start fitted to data from both modes keeps both, in the data's
    proportions: why the RBM's generated chains start from a fitted mixture."""
    rbm = two_mode_rbm(8.0, -24.0)  # all on and all off both hold a Gibbs chain
    data = torch.cat([torch.ones(300, 6), torch.zeros(700, 6)])
    mixture, _ = fit_bernoulli_mixture(data, 2, torch.Generator().manual_seed(0))
    n, ones = 2000, torch.ones(2000)
    g = torch.Generator().manual_seed(1)
    started = gibbs_chains(rbm, ones, 40, shared_uniform(n, g), start=mixture)
    on = (started > 0.5).all(1).float().mean()
    assert float(on) == pytest.approx(0.3, abs=0.04)
    plain = gibbs_chains(rbm, ones, 40, shared_uniform(n, g))
    assert float((plain > 0.5).all(1).float().mean()) < 0.05  # the test has teeth


def test_an_rbm_keeps_its_chain_start_through_save_and_load(tmp_path) -> None:
    from models import load_model, save_model

    model = tiny_model("rbm", image_shape=(1, 8, 8), start_components=3)
    assert isinstance(model, RBM)
    g = torch.Generator().manual_seed(0)
    fitted = BernoulliMixture(torch.randn(3, 64, generator=g), torch.tensor([0.5, 0.3, 0.2]).log())
    model.set_chain_start(fitted)
    with pytest.raises(ValueError, match="3 components over 64 pixels"):
        model.set_chain_start(BernoulliMixture(torch.zeros(2, 64), torch.zeros(2)))
    save_model(model, tmp_path / "rbm")
    loaded = load_model(tmp_path / "rbm")
    assert isinstance(loaded, RBM) and loaded.chain_start is not None
    assert torch.equal(loaded.chain_start.log_odds, fitted.log_odds)
    seeds = loaded.chain_seeds(4, torch.Generator().manual_seed(3))
    assert torch.equal(loaded.sample_gibbs(seeds), model.sample_gibbs(seeds))
    assert tiny_model("rbm", image_shape=(1, 8, 8)).chain_start is None


def test_tempering_ladders_are_checked_and_swap() -> None:
    betas = tempering_betas(5)
    assert float(betas[0]) == 1.0 and float(betas[-1]) == 0.0
    assert bool((betas[1:] < betas[:-1]).all())
    with pytest.raises(ValueError, match="at least 2 replicas"):
        tempering_betas(1)
    rbm = two_mode_rbm(1.0, 0.0)
    with pytest.raises(ValueError, match="start at 1"):
        Ladder(rbm, torch.zeros(6), torch.tensor([0.5, 0.0]), torch.ones(2))
    ladder = Ladder(rbm, torch.zeros(6), betas, torch.ones(50))
    uniform = shared_uniform(50, torch.Generator().manual_seed(0))
    v = ladder.start(uniform)
    assert v.shape == (50, 5, 6)
    v, p_v, accepted = ladder.step(v, 0, uniform)
    assert p_v.shape == v.shape and 0.3 < accepted <= 1.0  # neighbours close: most swaps taken


def test_tempered_rbm_samples_do_not_depend_on_their_batch_mates() -> None:
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    model.config.replicas = 4
    seeds = model.chain_seeds(3, torch.Generator().manual_seed(1))
    together = model.sample_gibbs(seeds)
    alone = model.sample_gibbs(seeds[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize("family", ["vae", "cvae"])
def test_vae_bounds_are_per_image_and_tighten_with_samples(family: str) -> None:
    model = tiny_model(family)
    x = (torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    torch.manual_seed(0)
    for _ in range(40):  # a little training: the code must matter for the bounds to differ
        opt.zero_grad()
        if family == "vae":  # the training losses, with fresh noise every step
            logits, mu, log_var = model(x)
            nll, kl = model.elbo_terms(x, logits, mu, log_var)
        else:
            nll, kl, _ = model.loss_terms(x, torch.zeros(4, dtype=torch.long))
        (nll + kl).mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        elbo = model.log_likelihood(x, samples=1)
        iw = model.log_likelihood(x, samples=200)
        assert torch.allclose(model.log_likelihood(x[1:2], samples=200), iw[1:2], atol=1e-3)
    assert (iw > elbo).all()  # the importance-weighted bound is the tighter one
    assert (iw < 0).all()


def test_cvae_likelihood_mixes_the_classes() -> None:
    """log p(x) = log mean_y p(x | y): between the best class's bound minus log n and it."""
    model = tiny_model("cvae")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    n = model.num_classes
    with torch.no_grad():
        total = model.log_likelihood(x, samples=4)
        per_class = []
        for y in range(n):
            labels = torch.full((2,), y)
            mu, log_var, _ = model.encode_parts(x, labels)
            from models.vae import bound_from_posterior

            per_class.append(bound_from_posterior(
                x, mu, log_var, 4, lambda z, y=y: model.decode_logits(model.join(z, torch.full((len(z),), y)))
            ))  # fmt: skip
        best = torch.stack(per_class, 1).max(1).values
    assert (total <= best + 1e-4).all() and (total >= best - math.log(n) - 1e-4).all()


def test_complexity_is_the_compressed_length() -> None:
    blank = torch.zeros(1, 1, 28, 28)
    noise = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bits = complexity_bits(torch.cat([blank, noise]), "8-bit discrete")
    assert bits[0] < 8 * 100 < 8 * 600 < bits[1]  # a blank image is tiny, noise ~8 bits a pixel
    binarized = complexity_bits(noise, "binarized at 0.5")
    assert binarized[0] < bits[1] / 3  # one bit of information per pixel, not eight


def test_calibration_percentiles_and_its_file(tmp_path) -> None:
    cal = Calibration(
        "m", tuple(float(i) for i in range(100)), "ref", samples=1, likelihood="exact"
    )
    assert cal.percentile(-1) == 0 and cal.percentile(1000) == 100
    assert cal.percentile(49.5) == 50.0
    assert cal.percentile(10) == pytest.approx(10.5)  # ties count half
    write_calibration(tmp_path, cal)
    assert read_calibration(tmp_path) == cal
    assert read_calibration(tmp_path / "none") is None
    (tmp_path / "anomaly.json").write_text(json.dumps({"format": 1, "scores": [3, 1, 2] * 5}))
    with pytest.raises(ValueError, match=r"anomaly\.json"):
        read_calibration(tmp_path)
    with pytest.raises(ValueError, match="sorted"):
        Calibration("m", (2.0,) * 5 + (1.0,) * 5, "ref", 1, "exact")


def test_feature_gaussian_distance_its_file_and_refusals(tmp_path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0, 4.0])
    f = torch.randn(500, 6, generator=g) * scale + 3
    gaussian = fit_feature_gaussian(f)
    x = torch.randn(4, 6, generator=g)
    a = f.double().numpy()
    cov = np.cov(a.T, bias=True)
    cov += 1e-3 * np.trace(cov) / 6 * np.eye(6)  # the ridge, scaled by the mean variance
    d = x.double().numpy() - a.mean(0)
    want = np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d)
    np.testing.assert_allclose(gaussian.distance(x).numpy(), want, rtol=1e-6)
    assert float(gaussian.distance(gaussian.mean[None].float())[0]) == pytest.approx(0, abs=1e-9)
    dead = f.clone()
    dead[:, 2] = 0  # a ReLU unit that never fires: the ridge keeps the covariance invertible
    assert torch.isfinite(fit_feature_gaussian(dead).precision).all()
    with pytest.raises(ValueError, match=r"features \[B, 6\] expected"):
        gaussian.distance(torch.zeros(2, 5))
    write_feature_gaussian(tmp_path, gaussian)
    back = read_feature_gaussian(tmp_path)
    assert back is not None  # stored as float32: distances agree to float32 precision
    torch.testing.assert_close(back.distance(x), gaussian.distance(x), rtol=1e-4, atol=1e-4)
    assert read_feature_gaussian(tmp_path / "none") is None
    save_file(
        {"mean": torch.zeros(3), "precision": torch.zeros(2, 2)}, str(tmp_path / FEATURES_FILE)
    )
    with pytest.raises(ValueError, match="do not fit"):
        read_feature_gaussian(tmp_path)
    big = {"mean": torch.zeros(MAX_FEATURES + 1), "precision": torch.zeros(1, 1)}
    save_file(big, str(tmp_path / FEATURES_FILE))  # refused from the header, before reading
    with pytest.raises(ValueError, match="do not fit"):
        read_feature_gaussian(tmp_path)
    (tmp_path / FEATURES_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=FEATURES_FILE):
        read_feature_gaussian(tmp_path)


def test_a_combined_calibration_is_fishers_method_over_its_parts(tmp_path) -> None:
    base = Calibration("m", tuple(float(i) for i in range(100)), "ref", 1, "exact")
    parts = {"input_complexity": np.arange(100.0), "feature_distance": np.arange(100.0) * 2}
    cal = combined_calibration(base, parts)
    assert cal.combined and not base.combined
    assert cal.method == combined_method(("input_complexity", "feature_distance"))
    assert cal.method.startswith("input complexity (Serra et al. 2020) and the Mahalanobis")
    # 90 has 90 held-out complexities below it; 50 has 25 distances below and one tie
    got = cal.combine(
        {"input_complexity": np.array([10.0, 90.0]), "feature_distance": np.array([50.0, 50.0])}
    )
    assert got[1] == pytest.approx(-math.log(1 - 0.905) - math.log(1 - 0.255))
    assert got[0] < got[1]  # monotone in each part
    top = cal.combine({"input_complexity": np.array([1e9]), "feature_distance": np.array([1e9])})
    assert top[0] == pytest.approx(-2 * math.log(0.5 / 100))  # the most it can say: capped
    assert list(cal.scores) == sorted(cal.combine(parts).tolist())
    write_calibration(tmp_path, cal)
    assert read_calibration(tmp_path) == cal
    with pytest.raises(ValueError, match="in that order, got \\['a', 'b'\\]"):
        Calibration(
            "m", base.scores, "ref", 1, "exact", parts=(("a", base.scores), ("b", base.scores))
        )
    with pytest.raises(ValueError, match="are not"):  # a part missing: refused, not ignored
        cal.combine({"input_complexity": np.array([1.0])})


def test_a_calibration_takes_any_parts_in_order_after_input_complexity(tmp_path) -> None:
    """input complexity with the orientation part alone (a model without features), or with
    all three; out of order, alone or unknown: refused with the rule."""
    base = Calibration("m", tuple(float(i) for i in range(20)), "ref", 1, "exact")
    two = combined_calibration(
        base, {"orientation": -np.arange(20.0), "input_complexity": np.arange(20.0)}
    )
    assert two.part_names == ("input_complexity", "orientation")  # PARTS' order, not the dict's
    assert "orientation likelihood ratio" in two.method and "Mahalanobis" not in two.method
    write_calibration(tmp_path, two)
    assert read_calibration(tmp_path) == two
    scores = base.scores
    for bad in (
        (("orientation", scores), ("input_complexity", scores)),
        (("input_complexity", scores),),
        (("input_complexity", scores), ("orientation", scores), ("orientation", scores)),
    ):
        with pytest.raises(ValueError, match="in that order"):
            Calibration("m", scores, "ref", 1, "exact", parts=bad)
    with pytest.raises(ValueError, match="unknown parts"):
        combined_calibration(base, {"input_complexity": np.zeros(20), "colour": np.zeros(20)})


def test_the_orientation_score_is_the_likeliest_reorientation_against_the_image() -> None:
    """reorient stacks every turn of the whole batch; the score is, per image, the best
    reoriented log-likelihood minus its own, in bits/dim."""
    x = torch.arange(2 * 3 * 3.0).view(2, 1, 3, 3)
    turns = orientations((1, 3, 3))
    assert turns == ("rot90", "rot180", "rot270", "vflip")
    assert orientations((3, 4, 6)) == ("rot180", "vflip")  # no quarter turns off the square
    stacked = reorient(x, turns)
    assert stacked.shape == (8, 1, 3, 3)
    assert torch.equal(stacked[2], torch.rot90(x[0], 2, (1, 2)))  # rot180 of the first image
    assert torch.equal(stacked[7], x[1].flip(1))  # the second image upside down
    assert stacked[6, 0, 0].tolist() == [6.0, 7.0, 8.0]  # its last row first
    with pytest.raises(ValueError, match="unknown reorientation"):
        reorient(x, ("rot45",))
    ll = torch.tensor([-10.0, -20.0])
    reoriented = torch.tensor([-30.0, -15.0, -12.0, -25.0, -40.0, -19.0, -50.0, -21.0])
    got = orientation_score(ll, reoriented, dims=2)
    # image 0: best -12 against -10; image 1: best -15 against -20; nats -> bits, per dim
    expected = torch.tensor([-2.0, 5.0], dtype=torch.float64) / (2 * math.log(2))
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="multiple of 2"):
        orientation_score(ll, reoriented[:3], dims=2)


def test_auroc_and_the_out_of_distribution_sets() -> None:
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5
    test = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    sets = ood_sets(test, 6)
    assert len(sets) == 6
    for name, x in sets.items():
        assert x.shape == (6, 1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1, name
        assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)
    digits = sets["digits (fonts, MNIST layout)"]
    assert float(digits[:, :, :4].max()) < 0.2  # MNIST's empty border around a 20x20 glyph
    ys, _ = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = digits[:, 0].sum((1, 2))
    cy = (digits[:, 0] * ys).sum((1, 2)) / mass
    assert torch.allclose(cy, torch.full_like(cy, 14.0), atol=1.0)  # centred by its mass


def test_centred_rbm_step_is_the_centred_gradient_mapped_back() -> None:
    """--centering: one SGD step of the recipe equals gradient descent on the centred free
    energy (autograd, independent of the recipe's hand-written moments) in the centred
    parameters (W, b + W lambda, c + W^T mu), mapped back to the stored ones."""
    import argparse

    from training.families.rbm import RBMRecipe

    g = torch.Generator().manual_seed(0)
    model = tiny_model("rbm", image_shape=(1, 8, 8))
    with torch.no_grad():
        model.weight.copy_(torch.randn(64, 8, generator=g) * 0.3)
        model.hidden_bias.copy_(torch.randn(8, generator=g) * 0.5)
        model.base_rate.copy_(torch.randn(64, generator=g))
    args = argparse.Namespace(lr=0.1, optimizer="sgd", weight_decay=0.0, centering=True)
    recipe = RBMRecipe(model, args)
    data = (torch.rand(16, 64, generator=g) > 0.5).float()
    negative = (torch.rand(32, 64, generator=g) > 0.6).float()
    w0, b0, c0 = (t.detach().clone() for t in (model.weight, model.visible_bias, model.hidden_bias))
    mu = torch.sigmoid(model.base_rate)
    lam = torch.sigmoid(data @ w0 + c0).mean(0)  # the first step's running mean is the batch's

    # the centred parameters of the same model, and their free energy by autograd
    w_c = w0.clone().requires_grad_(True)
    b_c = (b0 + w0 @ lam).requires_grad_(True)
    c_c = (c0 + w0.T @ mu).requires_grad_(True)

    def centred_free_energy(v: torch.Tensor) -> torch.Tensor:
        field = c_c + (v - mu) @ w_c  # [N, H]
        return -(v - mu) @ b_c + field @ lam - F.softplus(field).sum(1)

    loss = centred_free_energy(data).mean() - centred_free_energy(negative).mean()
    gw, gb, gc = torch.autograd.grad(loss, (w_c, b_c, c_c))
    w1, b1, c1 = w_c - 0.1 * gw, b_c - 0.1 * gb, c_c - 0.1 * gc
    want = (w1, b1 - w1 @ lam, c1 - w1.T @ mu)  # mapped back

    recipe._centred_step(data, negative)
    got = (model.weight, model.visible_bias, model.hidden_bias)
    for g_, w_ in zip(got, want, strict=True):
        torch.testing.assert_close(g_.detach(), w_.detach(), rtol=1e-4, atol=1e-5)
    # and the step differs from the plain one (the test would not notice a no-op mapping)
    assert float((model.weight - w0).abs().max()) > 1e-3
