"""Every family: shapes, gradients, the shared API, and the paper formulas."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import FAMILIES, ConfigError, build_model, corrupt, load_model, save_model
from models.blocks import ImageConvTranspose2d
from models.sparse import SparseAutoencoder
from models.stacked import StackedAutoencoder
from models.vae import VAE

from .factories import TINY, tiny_model

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]
GENERATIVE = [f for f in TINY if f != "classifier"]


@pytest.mark.parametrize("family", GENERATIVE)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_every_family_and_shape(family: str, shape: tuple[int, int, int]) -> None:
    model = tiny_model(family, image_shape=shape).train()
    x = torch.rand(3, *shape)
    labels = torch.tensor([0, 2, 1])
    if family == "gan":
        out = model.decode(model.sample_latent(3))
        loss = model.criticize(out).mean() + model.criticize(x).mean()
    elif family == "cgan":
        out = model.decode(model.sample_latent(3, labels=labels))
        score, logits = model.criticize_and_classify(x, labels)
        loss = model.criticize(out, labels).mean() + score.mean()
        loss = loss + model.aux_class_loss(logits, labels)  # the AC-GAN head
    elif family == "cvae":
        nll, kl, ce = model.loss_terms(x, labels)
        out = model(x, labels)[0]
        loss = (nll + kl + ce).mean()
    elif model.density is not None and "generate" in model.operations and family != "vae":
        loss = -model.log_likelihood(x).mean()  # pixelcnn, made, rbm: their likelihood
        out = model.sample(3) if family == "rbm" else x
    else:
        out = model(x)[0] if family == "vae" else model(x)
        loss = out.pow(2).mean()
    assert out.shape == (3, *shape)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


def test_unsupported_operation_names_what_is_supported() -> None:
    gan = tiny_model("gan")
    with pytest.raises(
        NotImplementedError,
        match="gan models do not support classify; they support: decode, encode, generate",
    ):
        gan.run("classify", torch.rand(1, 1, 28, 28))
    with pytest.raises(
        NotImplementedError, match=r"its encode operation is find_latent: use run\('encode', x\)"
    ):
        gan.encode(torch.rand(1, 1, 28, 28))


def test_wrong_input_shape_is_refused() -> None:
    model = tiny_model("ae")
    with pytest.raises(
        ValueError, match=r"expected images of shape \[B, 1, 28, 28\], got \[2, 3, 28, 28\]"
    ):
        model.encode(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected latents of shape \[B, 4\]"):
        model.decode(torch.rand(2, 5))


def test_sampling_is_seeded_and_temperature_scales_the_prior() -> None:
    vae = tiny_model("vae")
    a = vae.sample(4, torch.Generator().manual_seed(7))
    b = vae.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    z1 = vae.sample_latent(2000, torch.Generator().manual_seed(1), temperature=1.0)
    z2 = vae.sample_latent(2000, torch.Generator().manual_seed(1), temperature=0.5)
    assert torch.allclose(z2, z1 * 0.5)
    assert abs(float(z1.std()) - 1.0) < 0.05


def test_vae_kl_matches_closed_form_and_reparameterization_moments() -> None:
    vae: VAE = tiny_model("vae")  # type: ignore[assignment]
    mu = torch.tensor([[0.5, -1.0, 0.0]])
    log_var = torch.tensor([[0.0, math.log(4.0), math.log(0.25)]])
    x = torch.full((1, 1, 28, 28), 0.5)
    _, kl = vae.elbo_terms(x, torch.zeros(1, 1, 28, 28), mu, log_var)
    expected = 0.5 * sum(v + m * m - 1 - math.log(v) for m, v in [(0.5, 1), (-1, 4), (0, 0.25)])
    assert float(kl) == pytest.approx(expected, rel=1e-6)
    z = VAE.reparameterize(
        mu.expand(20000, 3), log_var.expand(20000, 3), torch.Generator().manual_seed(0)
    )
    assert torch.allclose(z.mean(0), mu[0], atol=0.05)
    assert torch.allclose(z.std(0), torch.tensor([1.0, 2.0, 0.5]), atol=0.05)


def test_vae_nll_of_all_half_logits_is_784_log2() -> None:
    vae: VAE = tiny_model("vae")  # type: ignore[assignment]
    x = torch.rand(2, 1, 28, 28).round()
    nll, _ = vae.elbo_terms(x, torch.zeros_like(x), torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.allclose(nll, torch.full((2,), 784 * math.log(2)))


def test_importance_weights_bound_is_at_least_the_elbo() -> None:
    vae: VAE = tiny_model("vae")  # type: ignore[assignment]
    x = torch.rand(4, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    log_w = vae.log_importance_weights(x, 256, g)  # [4, 256]
    iwae = torch.logsumexp(log_w, 1) - math.log(256)
    elbo = log_w.mean(1)
    assert (iwae >= elbo).all()


def test_sparse_kl_penalty_is_zero_at_target_and_grows_away_from_it() -> None:
    sparse: SparseAutoencoder = tiny_model("sparse-ae", sparsity_target=0.1)  # type: ignore[assignment]
    at_target = torch.full((8, 6), 0.1)
    assert float(sparse.sparsity_penalty(at_target)) == pytest.approx(0.0, abs=1e-6)
    # KL(0.1 || 0.5) per unit = 0.1 ln 0.2 + 0.9 ln 1.8
    expected = 6 * (0.1 * math.log(0.2) + 0.9 * math.log(1.8))
    assert float(sparse.sparsity_penalty(torch.full((8, 6), 0.5))) == pytest.approx(
        expected, rel=1e-5
    )
    z = sparse.encode(torch.rand(4, 1, 28, 28))
    assert float(z.min()) > 0 and float(z.max()) < 1


def test_stacked_tied_weights_share_the_encoder_matrix() -> None:
    tied: StackedAutoencoder = tiny_model("stacked-ae")  # type: ignore[assignment]
    untied: StackedAutoencoder = tiny_model("stacked-ae", tied_weights=False)  # type: ignore[assignment]
    assert tied.decoders[0].weight is None
    assert untied.parameter_count() - tied.parameter_count() == sum(
        e.weight.numel() for e in untied.encoders
    )
    h = torch.rand(2, 16)
    expected = h @ tied.encoders[0].weight + tied.decoders[0].bias
    assert torch.allclose(tied.decode_layer(0, h), expected)


@pytest.mark.parametrize(
    ("kind", "level"), [("gaussian", 0.1), ("salt_pepper", 0.2), ("mask", 0.4)]
)
def test_corruption_levels(kind: str, level: float) -> None:
    x = torch.full((4, 1, 64, 64), 0.5)
    noisy = corrupt(x, kind, level, torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1
    changed = float((noisy != x).float().mean())
    if kind == "gaussian":  # 0.5 +- 0.1 is 5 sigma from the clamp, so the std survives
        assert float((noisy - x).std()) == pytest.approx(level, rel=0.05)
    else:  # every hit pixel becomes 0 or 1, so it differs from 0.5
        assert changed == pytest.approx(level, abs=0.02)


def test_unknown_noise_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown noise kind 'speckle'"):
        corrupt(torch.rand(1, 1, 8, 8), "speckle", 0.1)


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("ae", {"latent_dim": 0}, "latent_dim must be a positive integer"),
        ("ae", {"image_shape": [2, 28, 28]}, "channels must be 1 or 3"),
        ("ae", {"image_shape": [1, 28, 32]}, "must be square"),
        ("ae", {"colour": True}, "unknown config keys \\['colour'\\]"),
        ("sparse-ae", {"sparsity_penalty": "l2"}, "must be 'kl' or 'l1'"),
        ("dae", {"noise_kinds": ["blur"]}, "noise_kinds must be a non-empty subset"),
        ("nope", {}, "unknown family 'nope'"),
    ],
)
def test_bad_configs_are_refused(family: str, config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(family, config)


def test_every_family_is_registered() -> None:
    assert set(FAMILIES) == {
        "ae", "stacked-ae", "dae", "sparse-ae", "vae", "gan", "cvae", "cgan", "classifier",
        "pixelcnn", "made", "rbm",
    }  # fmt: skip


def test_spatial_code_keeps_the_map_layout() -> None:
    model = tiny_model("dae", latent_dim=2 * 49, spatial_code=True)
    z = model.encode(torch.rand(3, 1, 28, 28))
    assert z.shape == (3, 98)
    assert model.decode(z).shape == (3, 1, 28, 28)
    with pytest.raises(
        ConfigError,
        match="latent_dim: a spatial code on a 7x7 map needs latent_dim divisible by 49, got 50",
    ):
        build_model("ae", {"latent_dim": 50, "spatial_code": True})


def test_gan_inversion_recovers_a_latent_without_touching_the_weights() -> None:
    from models.inversion import invert

    gan = tiny_model("gan")
    z_true = torch.randn(3, gan.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = gan.decode(z_true)
    with torch.inference_mode():  # as the service calls it
        z, err = invert(gan, x, steps=150, restarts=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (3, gan.latent_dim) and err.shape == (3,)
    assert float(err.max()) < 1e-4
    with torch.no_grad():
        assert torch.allclose(gan.decode(z), x, atol=0.02)
    assert all(p.grad is None for p in gan.parameters())
    with pytest.raises(ValueError, match="steps and restarts must be at least 1"):
        invert(gan, x, steps=0)


def test_gan_inversion_respects_its_time_budget() -> None:
    import time

    from models.inversion import invert

    gan = tiny_model("gan")
    x = torch.rand(2, 1, 28, 28)
    # The bound comes from this machine: the budget is checked after every step, so a run
    # overshoots it by at most one step and the final decode, i.e. by less than one whole
    # call of a single step (timed here, best of 3); 100,000 steps would take minutes.
    one_step = []
    for _ in range(3):
        started = time.perf_counter()
        invert(gan, x, steps=1, restarts=2)
        one_step.append(time.perf_counter() - started)
    started = time.perf_counter()
    invert(gan, x, steps=100_000, restarts=2, time_budget_s=0.3)
    assert time.perf_counter() - started < 0.3 + 5 * min(one_step) + 0.5


def test_dae_noise_probs_choose_the_kinds() -> None:
    from models.denoising import DenoisingAutoencoder, DenoisingConfig

    with pytest.raises(ConfigError, match="one non-negative weight per noise kind"):
        DenoisingConfig(image_shape=(1, 28, 28), noise_probs=(1.0, 0.0))
    only_mask = DenoisingAutoencoder(
        DenoisingConfig(image_shape=(1, 8, 8), width=4, latent_dim=4, noise_probs=(0, 0, 1))
    )
    x = torch.full((64, 1, 8, 8), 0.5)
    out = only_mask.corrupt_for_training(x, torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) <= {0.0, 0.5}  # masking only: no Gaussian, no salt
    assert (out == 0).any()


@pytest.mark.parametrize("family", ["cvae", "cgan"])
def test_conditional_code_is_noise_then_one_hot_class(family: str) -> None:
    model = tiny_model(family)
    k, classes = model.noise_dim, model.num_classes
    assert model.latent_dim == k + classes
    codes = model.sample_latent(
        4, torch.Generator().manual_seed(0), labels=torch.tensor([0, 1, 2, 1])
    )
    assert codes.shape == (4, k + classes)
    assert torch.equal(codes[:, k:], torch.eye(classes)[[0, 1, 2, 1]])
    with pytest.raises(ValueError, match="class indices in \\[0, 3\\)"):
        model.sample_latent(1, labels=torch.tensor([3]))
    if family == "cvae":  # encode gives a complete code: mean, then class probabilities
        code = model.encode(torch.rand(2, 1, 28, 28))
        assert torch.allclose(code[:, k:].sum(1), torch.ones(2))


def test_cvae_decoder_depends_on_the_class() -> None:
    model = tiny_model("cvae")
    z = torch.zeros(1, model.noise_dim)
    a = model.decode(model.join(z, torch.tensor([0])))
    b = model.decode(model.join(z, torch.tensor([2])))
    assert (a - b).abs().max() > 1e-4


def test_acgan_head_classifies_and_its_loss_is_weighted_cross_entropy() -> None:
    """Odena et al. 2017: with aux_class_weight > 0 the projection critic also predicts the
    class from the same features, and aux_class_loss is weight * cross-entropy."""
    plain = tiny_model("cgan", aux_class_weight=0)
    assert plain.critic.classify is None
    x, labels = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 1])
    score, logits = plain.criticize_and_classify(x, labels)
    assert score.shape == (4,) and logits is None
    assert float(plain.aux_class_loss(logits, labels)) == 0.0

    model = tiny_model("cgan", aux_class_weight=0.5)
    score, logits = model.criticize_and_classify(x, labels)
    assert score.shape == (4,) and logits is not None and logits.shape == (4, 3)
    assert torch.equal(score, model.criticize(x, labels))  # one pass gives both
    expected = 0.5 * torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(model.aux_class_loss(logits, labels), expected)
    model.aux_class_loss(logits, labels).backward()
    assert model.critic.classify.weight.grad is not None
    assert model.critic.body.score.parametrizations.weight.original.grad is None  # head only


def test_acgan_weight_out_of_range_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"aux_class_weight must be a number in \[0\.0, 100\.0\], got -1"
    ):
        tiny_model("cgan", aux_class_weight=-1)
    with pytest.raises(ConfigError, match="aux_class_weight must be a number"):
        tiny_model("cgan", aux_class_weight="heavy")


def test_cvae_consistency_term_trains_the_decoder_only() -> None:
    """Prior samples for class y, judged by the model's own (frozen) class head."""
    model = tiny_model("cvae", consistency_weight=2.0).train()
    labels = torch.tensor([0, 1, 2, 2])
    ce = model.consistency_terms(labels, torch.Generator().manual_seed(0))
    z = torch.randn(4, model.noise_dim, generator=torch.Generator().manual_seed(0))
    logits = model.encoder(torch.sigmoid(model.decode_logits(model.join(z, labels))))[:, 6:]
    assert ce.shape == (4,)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    model.zero_grad()
    ce.mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # the head stays frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())


@pytest.mark.parametrize(
    ("batch", "c_in", "c_out", "side", "channels_last"),
    [(8, 32, 1, 14, True), (8, 32, 1, 14, False), (4, 16, 3, 16, True), (1, 32, 1, 14, True)],
)
def test_image_conv_transpose_matches_torch_without_gradients(
    batch: int,
    c_in: int,
    c_out: int,
    side: int,
    channels_last: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    layer = ImageConvTranspose2d(c_in, c_out)
    x = torch.randn(batch, c_in, side, side)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.conv_transpose2d(
        x, layer.weight, layer.bias, stride=2, padding=1
    )
    torch_forward = torch.nn.ConvTranspose2d.forward
    own_path = batch * side * side >= ImageConvTranspose2d.MIN_PIXELS
    if own_path:  # prove the matrix-product path ran, not torch's layer
        monkeypatch.setattr(torch.nn.ConvTranspose2d, "forward", None)
    with torch.inference_mode():
        served = layer(x)
    monkeypatch.setattr(torch.nn.ConvTranspose2d, "forward", torch_forward)
    assert served.shape == (batch, c_out, 2 * side, 2 * side)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-5)
    trained = layer(x)  # with gradients: torch's own layer
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), expected, atol=0, rtol=0)


def test_gan_class_guidance_is_catgan_entropies_on_a_critic_head() -> None:
    """Springenberg 2016's generator terms: mean per-fake class entropy minus the entropy of
    the batch's mean class distribution, weighted; the head reads the critic's features."""
    plain = tiny_model("gan")
    assert plain.class_head is None
    with pytest.raises(ValueError, match="no class head"):
        plain.criticize_with_head(torch.rand(2, 1, 28, 28))
    model = tiny_model("gan", class_guidance=0.5, label_classes=4)
    x = torch.rand(3, 1, 28, 28)
    score, logits = model.criticize_with_head(x)
    assert logits.shape == (3, 4) and torch.allclose(score, model.criticize(x))
    sure_and_balanced = torch.eye(4) * 1000  # each fake certain, the batch spread evenly
    assert math.isclose(float(model.guidance_loss(sure_and_balanced)), -0.5 * math.log(4),
                        rel_tol=1e-5)  # fmt: skip
    one_class = torch.zeros(4, 4)
    one_class[:, 0] = 1000  # certain, but all of one class: nothing to reward
    assert abs(float(model.guidance_loss(one_class))) < 1e-5
    undecided = torch.zeros(4, 4)  # balanced on average, but no fake is of any class
    assert abs(float(model.guidance_loss(undecided))) < 1e-5


def test_gan_mixture_prior_draws_each_code_near_its_components_mean(tmp_path: Path) -> None:
    """mixture_prior: z = prior_means[k] + temperature * eps with k ~ prior_weights; the
    means and weights travel with the weights (buffers), and the critic judges each image
    against a class (the projection critic), which it refuses to do without one."""
    model = tiny_model("gan", mixture_prior=True, label_classes=3, class_guidance=1.0)
    assert model.prior_means is not None and model.prior_weights is not None
    assert model.prior_means.shape == (3, model.latent_dim)
    assert "mixture of 3" in str(model.latent_prior)
    model.prior_weights.copy_(torch.tensor([0.0, 1.0, 0.0]))  # every draw from component 1
    g = torch.Generator().manual_seed(0)
    z = model.sample_latent(4000, g, temperature=0.5)
    torch.testing.assert_close(z.mean(0), model.prior_means[1], atol=0.05, rtol=0)
    assert math.isclose(float(z.std(0).mean()), 0.5, rel_tol=0.05)
    again = model.sample_latent(4000, torch.Generator().manual_seed(0), temperature=0.5)
    assert torch.equal(z, again)  # seeded
    start = model.initial_latents(8, torch.Generator().manual_seed(1))
    assert float((start - model.prior_means[1]).norm(dim=1).max()) < 3 * model.latent_dim**0.5
    x = torch.rand(2, 1, 28, 28)
    score, logits = model.criticize_and_classify(x, torch.tensor([0, 2]))
    assert score.shape == (2,) and logits is not None and logits.shape == (2, 3)
    with pytest.raises(ValueError, match="against their classes"):
        model.criticize(x)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.prior_means, model.prior_means)
    assert torch.equal(loaded.prior_weights, model.prior_weights)
    plain = tiny_model("gan")
    assert plain.prior_means is None and "prior_means" not in plain.state_dict()
    with pytest.raises(ValueError, match="no mixture prior"):
        plain.component_latents(torch.tensor([0]))


def test_gan_one_hot_components_put_each_class_in_a_code_dimension_of_its_own(
    tmp_path: Path,
) -> None:
    """one_hot_components: the code is [eps [K], one_hot(k)], the spread only in eps; the
    generator takes K + classes numbers, and the whole code round-trips through the artifact."""
    model = tiny_model(
        "gan", mixture_prior=True, one_hot_components=True, label_classes=3, class_guidance=1.0
    )
    k = model.config.latent_dim
    assert model.latent_dim == k + 3 and "one-hot code of one of 3" in str(model.latent_prior)
    assert model.prior_means is not None and model.prior_weights is not None
    torch.testing.assert_close(model.prior_means[:, k:], torch.eye(3))
    assert float(model.prior_means[:, :k].abs().max()) == 0.0
    model.prior_weights.copy_(torch.tensor([0.2, 0.0, 0.8]))
    z = model.sample_latent(4000, torch.Generator().manual_seed(0), temperature=0.5)
    assert z.shape == (4000, k + 3)
    tail = z[:, k:]
    assert torch.equal(tail.sum(1), torch.ones(4000)) and float(tail[:, 1].sum()) == 0.0
    assert abs(float(tail[:, 2].mean()) - 0.8) < 0.03  # drawn by the prior's weights
    assert math.isclose(float(z[:, :k].std(0).mean()), 0.5, rel_tol=0.05)
    assert model.decode(z[:4]).shape == (4, 1, 28, 28)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.latent_dim == k + 3 and torch.equal(loaded.prior_means, model.prior_means)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().decode(z[:4]), model.eval().decode(z[:4]))


@pytest.mark.parametrize(
    ("family", "config", "message"),
    [
        ("gan", {"one_hot_components": True, "label_classes": 3}, "needs mixture_prior"),
        ("gan", {"class_guidance": 1.0}, "label_classes >= 2\\), got 0"),
        ("gan", {"class_guidance": -1.0, "label_classes": 3}, "class_guidance must be a number"),
        ("cgan", {"class_guidance": 1.0, "label_classes": 3}, "for the unconditional GAN"),
        ("gan", {"mixture_prior": True}, "one component per class"),
    ],
)
def test_class_guidance_configs_are_checked(family: str, config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(family, {**TINY[family], **config})
