"""The evaluator on tiny models: metrics land in card.json and the baselines are sane."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import main
from training.metrics import (
    CLASSICAL_DENOISERS,
    PCA,
    active_units,
    denoise_all,
    frechet_distance,
    psnr,
    tune_denoiser,
)

SMALL = ["--limit", "30", "--samples", "60", "--inversion-images", "3", "--iw-samples", "8", "--iw-images", "4",
         "--baseline-images", "4", "--tune-images", "4", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    for family in ("classifier", "ae", "dae", "sparse-ae", "vae", "gan", "cvae", "cgan"):
        name = "classifier-fashion" if family == "classifier" else family
        assert main(["train", "--family", family, "--dry-run", "--width", "4", "--out", str(root / name),
                     "--checkpoint-dir", str(root / f"ck-{family}"), "--threads", "1"]) == 0  # fmt: skip
    return root


def test_evaluate_writes_a_combined_anomaly_calibration_for_a_model_with_features(
    tmp_path: Path,
) -> None:
    """made declares features: the evaluator fits their Gaussian on training images, writes it
    beside the calibration of the combined score, and reports each part's AUROC beside it."""
    from models.anomaly import FEATURES_FILE, read_calibration, read_feature_gaussian

    out = tmp_path / "made"
    assert main(["train", "--family", "made", "--dry-run", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]) == 0  # fmt: skip
    assert main(["evaluate", "--model", str(out), "--no-atlas", "--limit", "30", "--threads", "1",
                 "--ood-images", "20", "--calibration-images", "20", "--feature-images", "40"]) == 0  # fmt: skip
    metrics = json.loads((out / "card.json").read_text())["metrics"]
    assert metrics["anomaly_method"].startswith("input complexity (Serra et al. 2020), the")
    assert metrics["anomaly_feature_images"] == 40 and metrics["anomaly_features"] > 0
    assert metrics["anomaly_orientations"] == ["rot90", "rot180", "rot270", "vflip"]
    table = metrics["anomaly_auroc"]
    assert len(table) == 6
    parts = ("likelihood", "input_complexity", "feature_distance", "orientation", "combined")
    for row in table.values():
        assert set(parts) <= set(row)
        assert all(0 <= row[k] <= 1 for k in parts)
    assert metrics["anomaly_auroc_min"] == min(row["combined"] for row in table.values())
    calibration = read_calibration(out)
    gaussian = read_feature_gaussian(out)
    assert calibration is not None and len(calibration.scores) == 20
    assert calibration.part_names == ("input_complexity", "feature_distance", "orientation")
    assert gaussian is not None and (out / FEATURES_FILE).is_file()
    assert len(gaussian.mean) == metrics["anomaly_features"]


@pytest.mark.parametrize(
    "family", ["ae", "dae", "sparse-ae", "vae", "gan", "cvae", "cgan", "classifier-fashion"]
)
def test_evaluate_writes_metrics_into_the_card(artifacts: Path, family: str) -> None:
    assert main(["evaluate", "--model", str(artifacts / family), *SMALL]) == 0
    card = json.loads((artifacts / family / "card.json").read_text())
    metrics = card["metrics"]
    assert metrics["test_images"] == 30 or family in ("gan", "cgan")
    if family != "classifier-fashion":  # every model with a code gets its atlas
        assert card["atlas"]["images"] == 30 and card["atlas"]["projections"] == ["pca", "tsne"]
        assert (artifacts / family / "atlas.safetensors").is_file()
    else:
        assert "atlas" not in card and not (artifacts / family / "atlas.safetensors").exists()
    if family in ("ae", "dae", "sparse-ae", "vae"):
        assert 0 < metrics["psnr"] < 60 and 0 < metrics["pca_psnr"] < 60
    if family == "dae":
        assert set(metrics["baselines"]) >= {"non-local means sigma 0.1", "gaussian blur sigma 0.5"}
        # the corrupted input is worse at higher noise
        assert metrics["psnr_noisy_input_0.1"] > metrics["psnr_noisy_input_0.5"]
        chain = metrics["chain"]  # the GSN chain's samples, judged like every model's
        assert chain["samples"] == 60 and chain["steps"] == 100 and chain["frechet_distance"] > 0
        assert sum(chain["class_shares"].values()) == pytest.approx(1.0)
        assert 1 <= chain["inception_score"] <= 4
    if family == "vae":
        assert metrics["iwae_nats"] <= metrics["neg_elbo_nats"] + 5  # IWAE is the tighter bound
        assert metrics["iwae_samples"] == 8
    if family == "gan":
        assert sum(metrics["class_shares"].values()) == pytest.approx(1.0)
        assert metrics["frechet_distance"] >= 0
    if family in ("gan", "cgan"):  # inversion: PSNR of the generator's reconstructions, time
        assert 0 < metrics["inversion_psnr"] < 60 and metrics["inversion_seconds_per_image"] > 0
    if family == "cgan":  # the class tail of each inverted code, against the true label
        assert 0 <= metrics["inversion_class_accuracy"] <= 1
    if family in ("cvae", "cgan"):  # judged per class by the classifier (same class names)
        per_class = metrics["conditional_accuracy"]
        assert len(per_class) == 4 and all(0 <= v <= 1 for v in per_class.values())
        assert metrics["min_conditional_accuracy"] == min(per_class.values())
        assert metrics["conditional_samples_per_class"] == 15
        for name, ratio in metrics["conditional_ratio"].items():  # over the judge on real ones
            real = metrics["judge_accuracy_on_real"][name]
            assert ratio is None if not real else ratio == pytest.approx(per_class[name] / real)
    if family == "classifier-fashion":
        assert 0 <= metrics["accuracy"] <= 1
    assert card["quality_floors"] == []  # floors apply to Fashion-MNIST models only


def test_psnr_and_pca_numbers() -> None:
    x = np.zeros((2, 4))
    assert psnr(x + 0.1, x) == pytest.approx([20.0, 20.0])
    rng = np.random.default_rng(0)
    data = rng.random((50, 3)) @ np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 0]]) * 0.5
    pca = PCA(data, 2)  # the data lie on a plane: two components reconstruct it exactly
    assert np.allclose(pca.reconstruct(data), data)


def test_frechet_distance_of_shifted_gaussians() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + np.array([1.0, 2.0, 0.0])) == pytest.approx(5.0, abs=0.01)


def test_tuning_picks_a_sensible_blur() -> None:
    clean = np.zeros((4, 1, 16, 16))
    clean[:, :, 4:12, 4:12] = 1.0
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.3, clean.shape), 0, 1)
    param, score = tune_denoiser("gaussian blur", noisy, clean, 0.3)
    assert param >= 0.6 and score > float(psnr(noisy, clean).mean())


@pytest.mark.parametrize("name", ["non-local means", "total variation", "gaussian blur"])
@pytest.mark.parametrize("channels", [1, 3])
def test_classical_denoisers_keep_the_shape_and_help(name: str, channels: int) -> None:
    clean = np.zeros((3, channels, 16, 16))
    clean[:, :, 4:12, 4:12] = 0.8
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 0.2, clean.shape), 0, 1)
    param, score = tune_denoiser(name, noisy, clean, 0.2)
    fn, _ = CLASSICAL_DENOISERS[name]
    out = denoise_all(fn, noisy, param, 0.2)
    assert out.shape == noisy.shape
    assert score > float(psnr(noisy, clean).mean()) + 1


def test_active_units() -> None:
    means = torch.cat([torch.randn(100, 2), torch.zeros(100, 3)], 1).numpy()
    assert active_units(means) == 2


def test_cards_table_summarises_evaluated_models(artifacts: Path) -> None:
    from training.cards import table

    assert main(["evaluate", "--model", str(artifacts / "ae"), *SMALL]) == 0
    text = table(artifacts)
    ae_row = next(line for line in text.splitlines() if line.startswith("| `ae` |"))
    card = json.loads((artifacts / "ae" / "card.json").read_text())
    assert f"PSNR {card['metrics']['psnr']:.2f} dB" in ae_row
    assert "| quality floors |" in text.splitlines()[0]


def test_rbm_trains_with_tempered_chains_and_reports_its_samples_classes(
    artifacts: Path, tmp_path: Path
) -> None:
    """--chains and --replicas reach the trainer and the artifact; the evaluator judges the
    samples of the artifact's own sampler (parallel tempering) by the classifier."""
    out = tmp_path / "rbm"
    assert main(["train", "--family", "rbm", "--dry-run", "--latent-dim", "16", "--chains", "24",
                 "--replicas", "3", "--gibbs-steps", "4", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--threads", "1"]) == 0  # fmt: skip
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["replicas"] == 3 and config["gibbs_steps"] == 4
    history = json.loads((out / "history.json").read_text())
    assert 0 <= history[-1]["train"]["swap_acceptance"] <= 1
    judge = ["--classifier", str(artifacts / "classifier-fashion")]
    assert main(["evaluate", "--model", str(out), *SMALL, *judge, "--ood-images", "20",
                 "--calibration-images", "20"]) == 0  # fmt: skip
    metrics = json.loads((out / "card.json").read_text())["metrics"]
    assert metrics["samples"] == 60
    assert metrics["sampler"] == "parallel tempering, 3 replicas, 4 steps"
    assert sum(metrics["class_shares"].values()) == pytest.approx(1.0)
    assert metrics["min_class_share"] == min(metrics["class_shares"].values())
