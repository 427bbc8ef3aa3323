"""POST /v1/models/{name}/likelihood and /anomaly, and the new families over REST."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models import load_model
from models.anomaly import (
    FEATURES_FILE,
    complexity_score,
    read_calibration,
    read_feature_gaussian,
)

from .conftest import png

IMAGE = png(value=180)


def as_tensor() -> torch.Tensor:
    """The uploaded image as the service sees it [1, 1, 28, 28]."""
    from service.imaging import image_to_tensor

    return image_to_tensor(IMAGE, (1, 28, 28), "image", 1 << 24, False)


@pytest.mark.parametrize(
    ("name", "kind", "convention", "exact"),
    [
        ("pixelcnn-t", "exact", "8-bit discrete", True),
        ("made-t", "exact", "8-bit discrete", True),
        ("rbm-t", "AIS estimate", "binarized at 0.5", False),
        ("vae-t", "lower bound (ELBO)", "Bernoulli on grey levels", False),
        ("cvae-t", "lower bound (ELBO)", "Bernoulli on grey levels", False),
    ],
)
def test_likelihood_reports_the_number_and_what_it_is(
    client: TestClient, weights_dir, name: str, kind: str, convention: str, exact: bool
) -> None:
    r = client.post(f"/v1/models/{name}/likelihood", files={"image": IMAGE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["kind"], body["convention"], body["exact"]) == (kind, convention, exact)
    model = load_model(weights_dir / name)
    x = as_tensor()
    kwargs = {"samples": 1} if model.density.takes_samples else {}
    with torch.no_grad():
        expected = float(model.log_likelihood(x, **kwargs)[0])
    assert body["log_likelihood_nats"] == pytest.approx(expected, rel=1e-4, abs=1e-3)
    assert body["bits_per_dim"] == pytest.approx(-expected / (math.log(2) * 784), rel=1e-4)


def test_importance_samples_are_bounded_and_only_for_bounds(client: TestClient) -> None:
    r = client.post("/v1/models/vae-t/likelihood", files={"image": IMAGE}, data={"samples": "50"})
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "importance-weighted bound (K=50)" and r.json()["samples"] == 50
    for bad in ("0", "1001"):
        r = client.post(
            "/v1/models/vae-t/likelihood", files={"image": IMAGE}, data={"samples": bad}
        )
        assert r.status_code == 422
        assert "between 1 and 1000" in r.json()["detail"]
    r = client.post(
        "/v1/models/pixelcnn-t/likelihood", files={"image": IMAGE}, data={"samples": "5"}
    )
    assert r.status_code == 422 and "takes no importance samples" in r.json()["detail"]


def test_likelihood_on_a_model_without_a_density_lists_what_it_does(client: TestClient) -> None:
    r = client.post("/v1/models/ae-t/likelihood", files={"image": IMAGE})
    assert r.status_code == 400
    assert (
        "does not support likelihood" in r.json()["detail"] and "reconstruct" in r.json()["detail"]
    )
    r = client.post("/v1/models/ae-t/anomaly", files={"image": IMAGE})
    assert r.status_code == 400
    r = client.post("/v1/models/pixelcnn-t/likelihood", files={"image": b"not an image"})
    assert r.status_code == 415 and "image" in r.json()["detail"]  # not an image: refused


def test_anomaly_score_percentile_and_verdict(client: TestClient, weights_dir) -> None:
    r = client.post("/v1/models/pixelcnn-t/anomaly", files={"image": IMAGE})
    assert r.status_code == 200, r.text
    body = r.json()
    model = load_model(weights_dir / "pixelcnn-t")
    x = as_tensor()
    with torch.no_grad():
        expected = float(complexity_score(model.log_likelihood(x), x, "8-bit discrete")[0])
    # the complexity part of its combined score (its features: the next test)
    assert body["parts"]["input_complexity"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    calibration = read_calibration(weights_dir / "pixelcnn-t")
    assert body["percentile"] == pytest.approx(calibration.percentile(body["score"]))
    assert body["anomalous"] == (body["percentile"] > 99.0)
    assert body["method"].startswith("input complexity") and body["likelihood"]["exact"]
    rbm = client.post("/v1/models/rbm-t/anomaly", files={"image": IMAGE}).json()
    assert rbm["likelihood"]["convention"] == "binarized at 0.5"
    # a VAE's likelihood (Bernoulli on grey levels) is no code length: no anomaly for it
    r = client.post("/v1/models/vae-t/anomaly", files={"image": IMAGE})
    assert r.status_code == 400 and "does not support anomaly" in r.json()["detail"]


def test_a_model_with_features_answers_the_combined_score_with_its_parts(
    client: TestClient, weights_dir
) -> None:
    """made declares features: its score combines input complexity with the Mahalanobis
    distance of its hidden units, each placed among the held-out images (Fisher's method)."""
    r = client.post("/v1/models/made-t/anomaly", files={"image": IMAGE})
    assert r.status_code == 200, r.text
    body = r.json()
    model = load_model(weights_dir / "made-t")
    calibration = read_calibration(weights_dir / "made-t")
    gaussian = read_feature_gaussian(weights_dir / "made-t")
    assert calibration is not None and calibration.combined and gaussian is not None
    assert calibration.part_names == ("input_complexity", "feature_distance", "orientation")
    x = as_tensor()
    turned = torch.cat([x.rot90(1, (2, 3)), x.rot90(2, (2, 3)), x.rot90(3, (2, 3)), x.flip(2)])
    with torch.no_grad():
        ll = model.log_likelihood(x)
        complexity = float(complexity_score(ll, x, "8-bit discrete")[0])
        distance = float(gaussian.distance(model.anomaly_features(x))[0])
        # the likeliest of its quarter turns and upside-down mirror against the image, bits/dim
        orientation = float((model.log_likelihood(turned).max() - ll[0]) / (math.log(2) * 784))
    parts = body["parts"]
    assert parts["input_complexity"] == pytest.approx(complexity, rel=1e-4, abs=1e-4)
    assert parts["feature_distance"] == pytest.approx(distance, rel=1e-3)
    assert parts["orientation"] == pytest.approx(orientation, rel=1e-4, abs=1e-5)
    expected = calibration.combine({
        "input_complexity": np.array([complexity]), "feature_distance": np.array([distance]),
        "orientation": np.array([orientation]),
    })[0]  # fmt: skip
    assert body["score"] == pytest.approx(expected, rel=1e-6)
    assert body["percentile"] == pytest.approx(calibration.percentile(body["score"]))
    assert body["method"].startswith("input complexity (Serra et al. 2020), the Mahalanobis")
    assert "orientation likelihood ratio" in body["method"]


def test_a_combined_calibration_without_its_features_file_serves_no_anomaly(
    tmp_path, weights_dir, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from service import Settings

    from .conftest import start

    shutil.copytree(weights_dir / "made-t", tmp_path / "made-t")
    (tmp_path / "made-t" / FEATURES_FILE).unlink()
    with caplog.at_level("WARNING", "latentserve.registry"):
        client = start(Settings(weights_dir=tmp_path))
    try:
        described = client.get("/v1/models/made-t").json()
        assert "likelihood" in described["operations"] and "anomaly" not in described["operations"]
        assert f"{FEATURES_FILE} is missing" in caplog.text
    finally:
        client.__exit__(None, None, None)


def test_the_autoregressive_and_boltzmann_families_generate_over_rest(client: TestClient) -> None:
    for name in ("pixelcnn-t", "made-t", "rbm-t"):
        a = client.post(f"/v1/models/{name}/generate?format=array", json={"n": 3, "seed": 11})
        b = client.post(f"/v1/models/{name}/generate?format=array", json={"n": 3, "seed": 11})
        assert a.status_code == 200, a.text
        assert a.json()["images"] == b.json()["images"]  # seeded
        assert torch.tensor(a.json()["images"]).shape == (3, 1, 28, 28)
    info = client.get("/v1/models/pixelcnn-t").json()
    assert "likelihood" in info["operations"] and "anomaly" in info["operations"]
    assert "interpolate" not in info["operations"] and info["latent_dim"] == 0
    assert info["density"] == {
        "kind": "exact",
        "convention": "8-bit discrete",
        "takes_samples": False,
    }
    r = client.post("/v1/models/pixelcnn-t/interpolate", json={"seed_a": 1, "seed_b": 2})
    assert r.status_code == 400
    # an RBM decodes hidden probabilities and interpolates between encoded images only
    r = client.post("/v1/models/rbm-t/interpolate", json={"seed_a": 1, "seed_b": 2})
    assert r.status_code == 400 and "use images or latents" in r.json()["detail"]
    r = client.post("/v1/models/rbm-t/decode?format=array", json={"latent": [0.5] * 8})
    assert r.status_code == 200 and torch.tensor(r.json()["images"]).shape == (1, 1, 28, 28)
