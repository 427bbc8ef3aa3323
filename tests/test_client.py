"""latentserve.client against a live server: every method of Client and AsyncClient, the
numbers they return checked against the raw REST replies, typed errors carrying the server's
detail, 503 retried after Retry-After, and the command line."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from latentserve import client as lc

from .conftest import png

IMAGE = png()  # a 200-grey square on black, 28x28


def calls(anomaly_model: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """(method, args, kwargs) for every operation method, on the tiny models."""
    return [
        ("models", (), {}),
        ("model", ("vae-t",), {}),
        ("ready", (), {}),
        ("encode", ("vae-t", IMAGE), {}),
        ("decode", ("vae-t", np.zeros((2, 3))), {}),
        ("reconstruct", ("ae-t", Image.open(io.BytesIO(IMAGE))), {}),
        ("denoise", ("dae-t", np.full((28, 28), 0.5)), {"noise": "gaussian", "noise_seed": 3}),
        ("generate", ("cvae-t", 3), {"seed": 5, "class_": 1}),
        ("interpolate", ("vae-t",), {"seed_a": 1, "seed_b": 2, "steps": 4}),
        ("arithmetic", ("vae-t", IMAGE, IMAGE, IMAGE), {"scale": 0.5}),
        ("classify", ("classifier-t", IMAGE), {}),
        ("likelihood", ("vae-t", IMAGE), {"samples": 2}),
        ("anomaly", (anomaly_model, IMAGE), {}),
        ("atlas", ("vae-t",), {"projection": "tsne"}),
        ("atlas_decode", ("vae-t", [[0.0, 0.0], [0.0, 0.0]]), {}),
        ("atlas_locate", ("vae-t", IMAGE), {}),
    ]


@pytest.fixture(scope="module")
def anomaly_model(live_url: str) -> str:
    models = httpx.get(f"{live_url}/v1/models").json()["models"]
    return next(m["name"] for m in models if "anomaly" in m["operations"])


def check(method: str, result: Any) -> None:
    """What each method's result must be, whichever client made it."""
    if method == "models":
        assert {"vae-t", "gan-t"} <= {m.name for m in result}
    elif method == "model":
        assert result.family == "vae" and result.image_shape == (1, 28, 28)
    elif method == "ready":
        assert result is True
    elif method == "encode":
        assert result.latent.shape == result.mean.shape == result.log_var.shape
        assert result.meta["model"] == "vae-t"
    elif method == "classify":
        assert result.label in result.probabilities
        assert abs(sum(result.probabilities.values()) - 1) < 1e-4
    elif method == "likelihood":
        assert result.samples == 2 and result.log_likelihood_nats < 0 and result.bits_per_dim > 0
    elif method == "atlas":
        assert result.projection == "tsne" and result.points.shape == (len(result.labels), 2)
    elif method == "atlas_locate":
        assert result.point.shape == (2,) and sum(result.neighbour_classes.values()) == 8
    elif method == "anomaly":
        assert 0 <= result.percentile <= 100 and isinstance(result.anomalous, bool)
        assert result.likelihood.kind
    else:
        assert isinstance(result, lc.Images)
        assert result.array.dtype == np.float32 and result.array.shape[1:] == (1, 28, 28)
        assert 0 <= result.array.min() and result.array.max() <= 1  # noqa: SIM300
        expected_rows = {"decode": 2, "generate": 3, "interpolate": 4, "atlas_decode": 2}.get(
            method, 1
        )
        assert len(result) == expected_rows and len(result.pil()) == expected_rows
        if method == "denoise":
            assert result.extra["input"].shape == (1, 1, 28, 28) and result.meta["noise_seed"] == 3
        if method == "arithmetic":
            assert set(result.extra) == {"a", "b", "c"} and len(result.meta["latent"]) > 0
        if method == "generate":
            assert result.seed == 5 and result.meta["class"]


def test_every_method_of_the_sync_client(live_url: str, anomaly_model: str) -> None:
    with lc.Client(live_url) as ls:
        for method, args, kwargs in calls(anomaly_model):
            check(method, getattr(ls, method)(*args, **kwargs))


def test_every_method_of_the_async_client(live_url: str, anomaly_model: str) -> None:
    async def run() -> None:
        async with lc.AsyncClient(live_url) as ls:
            table = calls(anomaly_model)
            results = await asyncio.gather(*(getattr(ls, m)(*a, **k) for m, a, k in table))
            for (method, _, _), result in zip(table, results, strict=True):
                check(method, result)

    asyncio.run(run())


def test_numbers_match_the_raw_rest_replies(live_url: str) -> None:
    with lc.Client(live_url) as ls:
        got = ls.generate("gan-t", 4, seed=11, temperature=0.7)
        raw = httpx.post(f"{live_url}/v1/models/gan-t/generate?format=array",
                         json={"n": 4, "seed": 11, "temperature": 0.7}).json()  # fmt: skip
        np.testing.assert_array_equal(got.array, np.array(raw["images"], np.float32))
        chains = ls.generate("dae-t", 2, seed=3, sampler="chain", steps=4)
        raw = httpx.post(f"{live_url}/v1/models/dae-t/generate?format=array",
                         json={"n": 2, "seed": 3, "sampler": "chain", "steps": 4}).json()  # fmt: skip
        np.testing.assert_array_equal(chains.array, np.array(raw["images"], np.float32))
        assert chains.meta["sampler"] == "chain"
        z = ls.encode("ae-t", IMAGE).latent
        raw_z = httpx.post(f"{live_url}/v1/models/ae-t/encode", content=IMAGE,
                           headers={"Content-Type": "image/png"}).json()["latent"]  # fmt: skip
        np.testing.assert_allclose(z, raw_z, atol=1e-6)
        # the same image as a path, bytes, PIL and NumPy (uint8 and float): the same result
        pixels = np.asarray(Image.open(io.BytesIO(IMAGE)))
        for image in (IMAGE, Image.fromarray(pixels), pixels, pixels / 255.0, pixels[None]):
            np.testing.assert_allclose(ls.encode("ae-t", image).latent, z, atol=1e-6)
        decoded = ls.decode("ae-t", z)  # one latent [K] -> one image
        np.testing.assert_allclose(decoded.array, ls.reconstruct("ae-t", IMAGE).array, atol=1e-5)


def test_errors_are_typed_and_carry_the_detail(live_url: str) -> None:
    with lc.Client(live_url, retries=0) as ls:
        with pytest.raises(lc.NotFound) as err:
            ls.reconstruct("nosuch", IMAGE)
        assert err.value.status == 404 and "available models" in err.value.detail
        with pytest.raises(lc.BadRequest, match="does not support generate"):
            ls.generate("ae-t", 2)
        with pytest.raises(lc.BadRequest, match="takes latents of length"):
            ls.decode("ae-t", [0.0] * 999)
        with pytest.raises(lc.UnsupportedMediaType):
            ls.reconstruct("ae-t", b"not an image")
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            ls.reconstruct("ae-t", np.full((28, 28), 3.0))


def test_503_is_retried_after_retry_after() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(len(seen))
        if len(seen) < 3:
            return httpx.Response(503, json={"detail": "at capacity"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"status": "ready", "ready": True})

    with lc.Client("http://test", transport=httpx.MockTransport(handler)) as ls:
        assert ls.ready() is True and len(seen) == 3
    seen.clear()
    with lc.Client("http://test", retries=1, transport=httpx.MockTransport(handler)) as ls:
        with pytest.raises(lc.ServiceUnavailable, match="at capacity"):
            ls.run(lc.Calls.models())
        assert len(seen) == 2


def test_the_command_line(live_url: str, tmp_path, capsys) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(IMAGE)
    out = tmp_path / "grid.png"
    assert lc.main(["--url", live_url, "generate", "gan-t", "-n", "6", "--seed", "3", "-o", str(out)]) == 0  # fmt: skip
    grid = Image.open(out)
    assert grid.size[0] > 28 * 6 and "seed=3" in capsys.readouterr().out
    gif = tmp_path / "path.gif"
    assert lc.main(["--url", live_url, "interpolate", "vae-t", "--seeds", "1", "2", "--steps", "5", "-o", str(gif)]) == 0  # fmt: skip
    assert Image.open(gif).n_frames == 5
    capsys.readouterr()
    assert lc.main(["--url", live_url, "classify", "classifier-t", str(image)]) == 0
    assert "probabilities" in json.loads(capsys.readouterr().out)
    assert lc.main(["--url", live_url, "reconstruct", "nosuch", str(image), "-o", str(out)]) == 1
    assert "error 404" in capsys.readouterr().err


def test_the_client_passes_the_gan_inversion_method(live_url: str) -> None:
    with lc.Client(live_url) as ls:
        found = ls.encode("gan-t", png(), inversion="optimisation")
        assert found.meta["inversion"] == "optimisation" and found.reconstruction_error is not None
        assert len(ls.reconstruct("gan-t", png(), inversion="optimisation")) == 1
        with pytest.raises(lc.BadRequest, match="fit-inverter"):  # gan-t has no inverter
            ls.encode("gan-t", png(), inversion="amortised")
