"""Every endpoint, with every input and output format, on every family it applies to."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models import corrupt
from service.config import Settings
from service.imaging import image_to_tensor

from .conftest import png, start

IMG = png()


def app_model(client: TestClient, name: str) -> Any:
    return client.app.state.latentserve.registry.get(name).model  # type: ignore[attr-defined]


def as_tensor(data: bytes, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    return image_to_tensor(data, shape, "image", 10**8)


def send(
    client: TestClient,
    path: str,
    style: str,
    data: bytes = IMG,
    params: dict[str, Any] | None = None,
    **kw: Any,
):
    """POST an image in one of the accepted shapes."""
    params = params or {}
    if style == "multipart":
        fields = {k: (json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in params.items()}
        return client.post(path, files={"image": ("x.png", data, "image/png")}, data=fields, **kw)
    if style == "json":
        return client.post(path, json={"image": base64.b64encode(data).decode(), **params}, **kw)
    if style == "data-url":
        return client.post(
            path,
            json={"image": "data:image/png;base64," + base64.b64encode(data).decode(), **params},
            **kw,
        )
    if style == "raw":
        return client.post(
            path,
            content=data,
            params=params or None,
            headers={"content-type": "image/png", **kw.pop("headers", {})},
            **kw,
        )
    raise AssertionError(style)


def decode_data_url(url: str) -> torch.Tensor:
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255)


STYLES = ["multipart", "json", "data-url", "raw"]


def test_list_and_describe(client: TestClient) -> None:
    listing = client.get("/v1/models").json()["models"]
    assert {m["name"] for m in listing} == {
        "ae-t",
        "dae-t",
        "vae-t",
        "gan-t",
        "cvae-t",
        "cgan-t",
        "stacked-t",
        "sparse-t",
        "classifier-t",
        "pixelcnn-t",
        "made-t",
        "rbm-t",
    }
    vae = client.get("/v1/models/vae-t").json()
    assert vae["family"] == "vae" and vae["image_shape"] == [1, 28, 28] and vae["latent_dim"] == 3
    assert vae["operations"] == [
        "arithmetic",
        "decode",
        "denoise",
        "encode",
        "generate",
        "interpolate",
        "likelihood",
        "reconstruct",
    ]
    gan = client.get("/v1/models/gan-t").json()
    assert gan["operations"] == [
        "arithmetic",
        "decode",
        "encode",
        "generate",
        "interpolate",
        "reconstruct",
    ]  # by inversion
    assert client.get("/v1/models/classifier-t").json()["class_names"] == ["a", "b", "c"]


@pytest.mark.parametrize(
    "name", ["nope", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "a..b", "a" * 300, "UPPER", "%00"]
)
def test_unknown_or_hostile_model_names_are_404(client: TestClient, name: str) -> None:
    for path in (f"/v1/models/{name}", f"/v1/models/{name}/encode"):
        r = client.request(
            "GET" if path.endswith(name) else "POST",
            path,
            files=None if path.endswith(name) else {"image": ("x.png", IMG)},
        )
        assert r.status_code == 404, (path, r.text)
        detail = r.json()["detail"]
        # either the router found no route at all ("/" in the name), or ours answered
        assert (
            detail == "Not Found"
            or "available models: ae-t, cgan-t, classifier-t, cvae-t, dae-t" in detail
        )
        assert "etc" not in detail and "passwd" not in detail


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", ["ae-t", "vae-t", "dae-t", "stacked-t", "sparse-t"])
def test_encode_matches_the_model(client: TestClient, style: str, name: str) -> None:
    r = send(client, f"/v1/models/{name}/encode", style)
    assert r.status_code == 200, r.text
    body = r.json()
    model = app_model(client, name)
    expected = model.encode(as_tensor(IMG))[0]
    assert torch.allclose(torch.tensor(body["latent"]), expected, atol=1e-5)
    assert body["latent_dim"] == model.latent_dim
    assert ("mean" in body and "log_var" in body) == (name == "vae-t")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", ["ae-t", "vae-t", "stacked-t", "sparse-t", "dae-t"])
def test_reconstruct_array_output_matches_the_model(
    client: TestClient, style: str, name: str
) -> None:
    r = send(client, f"/v1/models/{name}/reconstruct?format=array", style)
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["image"])
    expected = app_model(client, name).reconstruct(as_tensor(IMG))[0]
    assert got.shape == (1, 28, 28)
    assert torch.allclose(got, expected, atol=1e-5)


def test_reconstruct_png_and_json_outputs(client: TestClient) -> None:
    expected = app_model(client, "ae-t").reconstruct(as_tensor(IMG))[0, 0]
    r = send(client, "/v1/models/ae-t/reconstruct", "raw", headers={"accept": "image/png"})
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (28, 28) and img.mode == "L"
    got = torch.from_numpy(__import__("numpy").asarray(img, dtype="float32") / 255)
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6  # 8-bit rounding only
    body = send(client, "/v1/models/ae-t/reconstruct", "json").json()
    assert body["shape"] == [1, 28, 28] and body["count"] == 1 and body["timing_ms"] > 0
    assert (decode_data_url(body["image"]) - expected).abs().max() <= 1 / 255 + 1e-6


def test_denoise_with_server_side_noise_returns_the_noisy_input(client: TestClient) -> None:
    noise = {"kind": "salt_pepper", "level": 0.2, "seed": 5}
    r = send(
        client, "/v1/models/dae-t/denoise?format=array", "json", params={"noise": noise}
    ).json()
    x = as_tensor(IMG)
    noisy = corrupt(x, "salt_pepper", 0.2, torch.Generator().manual_seed(5))
    assert torch.allclose(torch.tensor(r["input"]), noisy[0])
    assert torch.allclose(
        torch.tensor(r["image"]), app_model(client, "dae-t").reconstruct(noisy)[0], atol=1e-5
    )
    assert r["noise_seed"] == 5 and r["noise_kind"] == "salt_pepper"


def test_denoise_multipart_and_query_noise(client: TestClient) -> None:
    a = send(
        client,
        "/v1/models/dae-t/denoise",
        "multipart",
        params={"noise_kind": "gaussian", "noise_level": "0.3", "noise_seed": "9"},
    ).json()
    b = send(
        client,
        "/v1/models/dae-t/denoise",
        "raw",
        params={"noise_kind": "gaussian", "noise_level": 0.3, "noise_seed": 9},
    ).json()
    c = send(
        client,
        "/v1/models/dae-t/denoise",
        "multipart",
        params={"noise": {"kind": "gaussian", "level": 0.3, "seed": 9}},
    ).json()
    assert a["image"] == b["image"] == c["image"] and a["input"] == b["input"]
    plain = send(client, "/v1/models/dae-t/denoise", "json", params={"include_input": False}).json()
    assert "input" not in plain and "noise_seed" not in plain


@pytest.mark.parametrize("name", ["vae-t", "gan-t", "ae-t"])
def test_decode_one_and_many(client: TestClient, name: str) -> None:
    model = app_model(client, name)
    z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(0))
    one = client.post(
        f"/v1/models/{name}/decode?format=array", json={"latent": z[0].tolist()}
    ).json()
    many = client.post(
        f"/v1/models/{name}/decode?format=array", json={"latents": z.tolist()}
    ).json()
    assert one["count"] == 1 and many["count"] == 3
    expected = model.decode(z)
    assert torch.allclose(torch.tensor(many["images"]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor(one["images"][0]), expected[0], atol=1e-5)
    grid = client.post(
        f"/v1/models/{name}/decode", json={"latents": z.tolist()}, headers={"accept": "image/png"}
    )
    assert grid.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(grid.content)).size == (
        2 + 2 * 30,
        2 + 2 * 30,
    )  # 2x2 grid of 28px + 2px pads


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"latent": [0.0, 0.0]}, 422, "vae-t takes latents of length 3, got 2"),
        ({"latents": [[0, 0, 0], [0, 0]]}, 422, r"latents\[1\]: vae-t takes latents of length 3"),
        ({}, 422, "give exactly one of 'latent'"),
        ({"latent": [0, 0, 0], "latents": [[0, 0, 0]]}, 422, "give exactly one of"),
        ({"latents": []}, 422, "'latents' is empty"),
        ({"latent": [1e9, 0, 0]}, 422, "magnitude at most 10000"),
        ({"latent": ["a", 0, 0]}, 422, "latent.0: Input should be a valid number"),
        ({"latent": [0, 0, 0], "extra": 1}, 422, "extra: unknown field; accepted: latent, latents"),
        ([1, 2], 400, "JSON body must be an object"),
    ],
)
def test_decode_bad_latents(client: TestClient, body: Any, status: int, message: str) -> None:
    r = client.post("/v1/models/vae-t/decode", json=body)
    assert r.status_code == status
    assert __import__("re").search(message, r.json()["detail"]), r.json()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"latent": [NaN, 0, 0]}',
        b'{"latent": [Infinity, 0, 0]}',
        b'{"latent": [1e999, 0, 0]}',
        b"{",
        b"[" * 100000,
    ],
)
def test_decode_hostile_json(client: TestClient, raw: bytes) -> None:
    r = client.post(
        "/v1/models/vae-t/decode", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422)
    assert r.json()["detail"]


def test_generate_is_seeded_and_respects_temperature(client: TestClient) -> None:
    a = client.post("/v1/models/vae-t/generate?format=array", json={"n": 3, "seed": 11}).json()
    b = client.post(
        "/v1/models/vae-t/generate", params={"n": 3, "seed": 11, "format": "array"}
    ).json()
    assert a["images"] == b["images"] and a["seed"] == 11
    model = app_model(client, "vae-t")
    expected = model.sample(3, torch.Generator().manual_seed(11))
    assert torch.allclose(torch.tensor(a["images"]), expected, atol=1e-5)
    cold = client.post(
        "/v1/models/vae-t/generate?format=array", json={"n": 3, "seed": 11, "temperature": 0.5}
    ).json()
    expected_cold = model.sample(3, torch.Generator().manual_seed(11), temperature=0.5)
    assert torch.allclose(torch.tensor(cold["images"]), expected_cold, atol=1e-5)
    random_seed = client.post("/v1/models/gan-t/generate", json={"n": 1}).json()["seed"]
    assert isinstance(random_seed, int) and random_seed >= 0


def test_generate_png_grid_and_seed_header(client: TestClient) -> None:
    r = client.post(
        "/v1/models/gan-t/generate", json={"n": 9, "seed": 1}, headers={"accept": "image/png"}
    )
    assert r.headers["content-type"] == "image/png" and r.headers["x-latentserve-seed"] == "1"
    assert Image.open(io.BytesIO(r.content)).size == (2 + 3 * 30, 2 + 3 * 30)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"n": 257}, "n: at most 256, got 257"),
        ({"n": "many"}, "n: Input should be a valid integer"),
        ({"temperature": 0}, "temperature: Input should be greater than 0"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ],
)
def test_generate_bad_params(client: TestClient, body: dict[str, Any], message: str) -> None:
    r = client.post("/v1/models/gan-t/generate", json=body)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_interpolate_between_seeds_latents_and_images(client: TestClient) -> None:
    gan = app_model(client, "gan-t")
    r = client.post(
        "/v1/models/gan-t/interpolate?format=array", json={"seed_a": 1, "seed_b": 2, "steps": 5}
    ).json()
    frames = torch.tensor(r["frames"])
    assert frames.shape == (5, 1, 28, 28)
    first = gan.sample(1, torch.Generator().manual_seed(1))
    last = gan.sample(1, torch.Generator().manual_seed(2))
    assert torch.allclose(frames[0], first[0], atol=1e-5) and torch.allclose(
        frames[-1], last[0], atol=1e-5
    )
    za, zb = [0.0, 0.0, 0.0], [1.0, -1.0, 2.0]
    lat = client.post(
        "/v1/models/vae-t/interpolate?format=array",
        json={"latent_a": za, "latent_b": zb, "steps": 3},
    ).json()
    mid = app_model(client, "vae-t").decode(torch.tensor([[0.5, -0.5, 1.0]]))
    assert torch.allclose(torch.tensor(lat["frames"][1]), mid[0], atol=1e-5)
    other = png(value=90)
    img = client.post("/v1/models/ae-t/interpolate?format=array",
                      files={"image": ("a.png", IMG, "image/png"), "image_b": ("b.png", other, "image/png")},
                      data={"steps": "4", "method": "slerp"}).json()  # fmt: skip
    ae = app_model(client, "ae-t")
    assert torch.allclose(
        torch.tensor(img["frames"][0]), ae.reconstruct(as_tensor(IMG))[0], atol=1e-5
    )
    assert torch.allclose(
        torch.tensor(img["frames"][-1]), ae.reconstruct(as_tensor(other))[0], atol=1e-5
    )


def test_interpolate_gif_has_a_frame_per_step(client: TestClient) -> None:
    r = client.post(
        "/v1/models/gan-t/interpolate",
        json={"seed_a": 1, "seed_b": 2, "steps": 6},
        headers={"accept": "image/gif"},
    )
    assert r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.n_frames == 6 + 4  # forward, then back without repeating the ends


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("gan-t", {"seed_a": 1}, 422, "give both seed_a and seed_b"),
        ("gan-t", {"seed_a": 1, "seed_b": 2, "steps": 65}, 422, "steps: at most 64, got 65"),
        (
            "gan-t",
            {"seed_a": 1, "seed_b": 2, "steps": 1},
            422,
            "steps: Input should be greater than or equal to 2",
        ),
        (
            "gan-t",
            {"seed_a": 1, "seed_b": 2, "method": "cubic"},
            422,
            "method: Input should be 'linear' or 'slerp'",
        ),
        ("classifier-t", {"seed_a": 1, "seed_b": 2}, 400, "does not support interpolate"),
        ("ae-t", {"seed_a": 1, "seed_b": 2}, 400, "draws no codes from a prior"),
        (
            "vae-t",
            {"seed_a": 1, "latent_a": [0, 0, 0], "latent_b": [0, 0, 0]},
            422,
            "give exactly one pair of ends",
        ),
        ("vae-t", {}, 422, "give exactly one pair of ends"),
    ],
)
def test_interpolate_errors(
    client: TestClient, name: str, body: dict[str, Any], status: int, message: str
) -> None:
    r = client.post(f"/v1/models/{name}/interpolate", json=body)
    assert r.status_code == status and message in r.json()["detail"], r.json()


def test_arithmetic_on_latents_is_c_plus_scale_times_a_minus_b(client: TestClient) -> None:
    za, zb, zc = [1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 2.0, 0.0]
    r = client.post(
        "/v1/models/vae-t/arithmetic?format=array",
        json={"latent_a": za, "latent_b": zb, "latent_c": zc, "scale": 2.0},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["latent"] == pytest.approx([1.0, 1.0, -3.0])
    vae = app_model(client, "vae-t")
    expected = vae.decode(torch.tensor([[1.0, 1.0, -3.0], zc]))
    assert torch.allclose(torch.tensor(body["image"]), expected[0], atol=1e-5)
    assert torch.allclose(torch.tensor(body["c"]), expected[1], atol=1e-5)


def test_arithmetic_mixes_images_and_latents(client: TestClient) -> None:
    ae = app_model(client, "ae-t")
    other = png(value=90)
    zb = ae.encode(as_tensor(other))[0]
    r = client.post("/v1/models/ae-t/arithmetic?format=array",
                    files={"image": ("a.png", IMG, "image/png"), "image_c": ("c.png", other, "image/png")},
                    data={"latent_b": json.dumps(zb.tolist())})  # fmt: skip
    assert r.status_code == 200, r.text
    # a - b + c with b = c's own code is a's code: the result is a's reconstruction
    assert torch.allclose(
        torch.tensor(r.json()["image"]), ae.reconstruct(as_tensor(IMG))[0], atol=1e-4
    )
    png_reply = client.post(
        "/v1/models/ae-t/arithmetic",
        json={"latent_a": zb.tolist(), "latent_b": zb.tolist(), "latent_c": zb.tolist()},
        headers={"accept": "image/png"},
    )
    assert png_reply.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png_reply.content)).size == (28, 28)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"latent_a": [0, 0, 0], "latent_b": [0, 0, 0]}, "term c: give exactly one of image_c"),
        ({"latent_a": [0, 0], "latent_b": [0, 0, 0], "latent_c": [0, 0, 0]}, "latent_a: vae-t takes latents of length 3, got 2"),
        ({"latent_a": [9e3] * 3, "latent_b": [-9e3] * 3, "latent_c": [0, 0, 0]}, "result latent is not finite or exceeds"),
        ({"latent_a": [0] * 3, "latent_b": [0] * 3, "latent_c": [0] * 3, "scale": 11}, "scale: Input should be less than or equal to 10"),
        ({"latent_a": [0] * 3, "latent_b": [0] * 3, "latent_c": [0] * 3, "weights": 1}, "weights: unknown field; accepted: include_terms, inversion, invert, latent_a"),
    ],
)  # fmt: skip
def test_arithmetic_errors(client: TestClient, body: dict[str, Any], message: str) -> None:
    r = client.post("/v1/models/vae-t/arithmetic", json=body)
    assert r.status_code == 422 and message in r.json()["detail"], r.json()


def test_classify(client: TestClient) -> None:
    r = send(client, "/v1/models/classifier-t/classify", "multipart").json()
    probs = r["probabilities"]
    assert set(probs) == {"a", "b", "c"} and abs(sum(probs.values()) - 1) < 1e-4
    assert r["label"] == max(probs, key=probs.get)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "/v1/models/gan-t/denoise",
            "model 'gan-t' (gan) does not support denoise; it supports: arithmetic, decode, encode, generate, interpolate, reconstruct",
        ),
        ("/v1/models/classifier-t/reconstruct", "does not support reconstruct"),
        (
            "/v1/models/ae-t/generate",
            "model 'ae-t' (ae) does not support generate; it supports: arithmetic, decode, denoise, encode, interpolate, reconstruct",
        ),
        ("/v1/models/classifier-t/decode", "it supports: classify"),
    ],
)
def test_unsupported_operation_lists_what_is_supported(
    client: TestClient, path: str, message: str
) -> None:
    r = send(client, path, "multipart")
    assert r.status_code == 400 and message in r.json()["detail"]


def test_output_negotiation(client: TestClient) -> None:
    assert (
        send(client, "/v1/models/ae-t/reconstruct", "raw", headers={"accept": "image/*"}).headers[
            "content-type"
        ]
        == "image/png"
    )
    r = send(client, "/v1/models/ae-t/reconstruct", "raw", params={"format": "gif"})
    assert r.status_code == 406 and "choose one of json, array, png" in r.json()["detail"]
    r = send(client, "/v1/models/ae-t/reconstruct", "raw", headers={"accept": "text/html"})
    assert r.status_code == 406 and "offers application/json, image/png" in r.json()["detail"]


def test_image_conversion_rule(client: TestClient) -> None:
    """A big RGB JPEG, an RGBA PNG and a 16-bit PNG are all converted, not refused."""
    for data in (
        png(300, "RGB", (200, 10, 10), "JPEG"),
        png(64, "RGBA", (255, 255, 255, 255)),
        _png16(),
    ):
        r = client.post(
            "/v1/models/ae-t/reconstruct", content=data, headers={"content-type": "image/png"}
        )
        assert r.status_code == 200, r.text
    inverted = as_tensor(IMG)
    r = client.post(
        "/v1/models/ae-t/encode", files={"image": ("x.png", IMG)}, data={"invert": "true"}
    ).json()
    expected = app_model(client, "ae-t").encode(1 - inverted)[0]
    assert torch.allclose(torch.tensor(r["latent"]), expected, atol=1e-5)


def _png16() -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_content_type_errors(client: TestClient) -> None:
    r = client.post(
        "/v1/models/ae-t/reconstruct", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415 and "unsupported Content-Type 'text/plain'" in r.json()["detail"]
    r = client.post("/v1/models/vae-t/decode", content=IMG, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "takes parameters, not an image" in r.json()["detail"]
    r = client.post("/v1/models/ae-t/reconstruct", json={"invert": True})
    assert r.status_code == 422 and "image: an image is required" in r.json()["detail"]
    r = client.post("/v1/models/ae-t/reconstruct", json={"image": "not base64!!"})
    assert r.status_code == 400 and "image: not valid base64" in r.json()["detail"]


def test_health_and_oip_paths(client: TestClient) -> None:
    for path in ("/health/live", "/v2/health/live"):
        assert client.get(path).json()["live"] is True
    for path in ("/health/ready", "/v2/health/ready"):
        r = client.get(path)
        assert r.status_code == 200 and r.json()["ready"] is True and "vae-t" in r.json()["models"]


def test_metrics(client: TestClient) -> None:
    send(client, "/v1/models/ae-t/reconstruct", "raw")
    client.get("/v1/models/definitely-not-a-model")
    text = client.get("/metrics").text
    assert (
        'latentserve_requests_total{model="ae-t",route="/v1/models/{name}/reconstruct",status="200"}'
        in text
    )
    assert 'model="(unknown)"' in text and "definitely-not-a-model" not in text
    assert 'latentserve_batch_size_count{model="ae-t",operation="reconstruct"}' in text
    assert (
        "latentserve_queue_depth" in text
        and 'latentserve_model_load_seconds{model="vae-t"}' in text
    )
    assert "latentserve_request_seconds_bucket" in text
    assert "latentserve_expensive_paused_seconds " in text  # the lanes' cooperative pauses


def test_openapi_documents_every_operation_with_examples(client: TestClient) -> None:
    """One content type per body (what generators digest), the other accepted shapes and a
    JSON example in its description, a reply schema for every JSON reply."""
    spec = client.get("/openapi.json").json()
    for op in ("decode", "generate"):
        post = spec["paths"][f"/v1/models/{{name}}/{op}"]["post"]
        assert list(post["requestBody"]["content"]) == ["application/json"], op
        assert "example" in post["requestBody"]["content"]["application/json"], op
    for op in ("encode", "reconstruct", "denoise", "interpolate", "arithmetic", "classify"):
        body = spec["paths"][f"/v1/models/{{name}}/{op}"]["post"]["requestBody"]
        assert list(body["content"]) == ["multipart/form-data"], op
        assert "image/png" in body["description"] and "JSON example" in body["description"], op
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            ok = operation["responses"]["200"]
            schemas = [c.get("schema") for c in ok.get("content", {}).values()]
            assert schemas and all(schemas), f"{method} {path}: a 200 without a schema"
            assert operation["operationId"].isidentifier(), operation["operationId"]
    assert client.get("/docs").status_code == 200


def test_security_headers_and_cors(client: TestClient) -> None:
    r = client.get("/v1/models", headers={"origin": "http://allowed.example"})
    assert (
        r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    )
    assert r.headers["access-control-allow-origin"] == "http://allowed.example"
    r = client.get("/v1/models", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/models/ae-t/reconstruct", headers={
        "origin": "http://evil.example", "access-control-request-method": "POST"})  # fmt: skip
    assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
    csp = client.get("/demo/").headers["content-security-policy"]
    assert csp.startswith("default-src 'self'") and "script-src 'self';" in csp
    assert (
        "content-security-policy" not in client.get("/docs").headers
    )  # Swagger UI loads from a CDN


def test_replicas_are_interchangeable(weights_dir) -> None:
    """Two independent app instances (replicas, or one after a restart) give the same images
    for the same seed: nothing a request depends on lives in a process."""
    from service import Settings

    from .conftest import start

    replies = []
    for _ in range(2):
        replica = start(Settings(weights_dir=weights_dir))
        try:
            replies.append(
                replica.post(
                    "/v1/models/gan-t/generate",
                    json={"n": 5, "seed": 123},
                    headers={"accept": "image/png"},
                ).content
            )
            replies.append(
                replica.post(
                    "/v1/models/vae-t/interpolate?format=array", json={"seed_a": 3, "seed_b": 4}
                ).json()["frames"]
            )
        finally:
            replica.__exit__(None, None, None)
    assert replies[0] == replies[2] and replies[1] == replies[3]


def test_gan_encode_reconstruct_and_interpolate_by_inversion(weights_dir) -> None:
    """A GAN has no encoder: the service finds the latent by optimisation (models/inversion.py).
    A generous time budget, so every call runs all its steps however loaded the machine is."""
    from service import Settings

    from .conftest import start

    client = start(Settings(weights_dir=weights_dir, inversion_time_budget_s=120))
    gan = app_model(client, "gan-t")
    z_true = torch.randn(1, gan.latent_dim, generator=torch.Generator().manual_seed(5))
    target = client.post(
        "/v1/models/gan-t/decode",
        json={"latent": z_true[0].tolist()},
        headers={"accept": "image/png"},
    ).content
    body = client.post(
        "/v1/models/gan-t/encode", content=target, headers={"content-type": "image/png"}
    ).json()
    assert len(body["latent"]) == gan.latent_dim
    assert 0 <= body["reconstruction_error"] < 1e-3  # the image is in the GAN's range: near-exact
    again = client.post(
        "/v1/models/gan-t/encode", content=target, headers={"content-type": "image/png"}
    ).json()
    assert again["latent"] == body["latent"]  # seeded restarts: same image, same latent
    rec = client.post(
        "/v1/models/gan-t/reconstruct?format=array",
        content=target,
        headers={"content-type": "image/png"},
    ).json()
    assert torch.allclose(
        torch.tensor(rec["image"]), gan.decode(torch.tensor([body["latent"]]))[0], atol=1e-5
    )
    frames = client.post("/v1/models/gan-t/interpolate", files={"image": ("a.png", target), "image_b": ("b.png", IMG)},
                         data={"steps": "3"}).json()  # fmt: skip
    assert frames.get("count") == 3, frames
    client.__exit__(None, None, None)


@pytest.mark.parametrize("name", ["cvae-t", "cgan-t"])
def test_generate_a_class_by_name_or_index(client: TestClient, name: str) -> None:
    info = client.get(f"/v1/models/{name}").json()
    assert info["conditional"] is True and info["class_names"] == ["boot", "sandal", "bag"]
    by_name = client.post(f"/v1/models/{name}/generate?format=array",
                          json={"n": 4, "seed": 9, "class": "sandal"})  # fmt: skip
    by_index = client.post(f"/v1/models/{name}/generate?format=array",
                           json={"n": 4, "seed": 9, "class": 1})  # fmt: skip
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["class"] == "sandal"
    assert by_name.json()["images"] == by_index.json()["images"]
    model = app_model(client, name)
    expected = model.decode(
        model.sample_latent(4, torch.Generator().manual_seed(9), 1.0, torch.full((4,), 1))
    )
    assert torch.allclose(torch.tensor(by_name.json()["images"]), expected, atol=1e-5)
    other = client.post(f"/v1/models/{name}/generate?format=array",
                        json={"n": 4, "seed": 9, "class": "bag"}).json()  # fmt: skip
    assert other["images"] != by_name.json()["images"]  # same noise, another class
    query = client.post(f"/v1/models/{name}/generate?n=1&seed=9&class=1")  # strings, as from a form
    assert query.status_code == 200 and query.json()["class"] == "sandal", query.text


def test_interpolate_between_classes(client: TestClient) -> None:
    r = client.post(
        "/v1/models/cgan-t/interpolate?format=array",
        json={"seed_a": 3, "seed_b": 3, "class_a": "boot", "class_b": "bag", "steps": 3},
    )
    assert r.status_code == 200, r.text
    model = app_model(client, "cgan-t")
    z = model.sample_latent(1, torch.Generator().manual_seed(3), 1.0, torch.tensor([0]))
    middle = z.clone()
    middle[0, -3:] = torch.tensor([0.5, 0.0, 0.5])  # half boot, half bag, same noise
    assert torch.allclose(torch.tensor(r.json()["frames"][1]), model.decode(middle)[0], atol=1e-5)


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("cgan-t", {"class": "sneaker"}, 422, "class: 'sneaker' is not a class of cgan-t; choose one of: boot, sandal, bag"),
        ("cgan-t", {"class": 3}, 422, "class: index 3 is out of range; cgan-t has classes 0..2"),
        ("cgan-t", {"class": -1}, 422, "class: index -1 is out of range"),
        ("cgan-t", {"class": "²"}, 422, "class: '²' is not a class of cgan-t"),
        ("gan-t", {"class": "boot"}, 400, "class: model 'gan-t' is not class-conditional"),
        ("cvae-t", {"class": [1]}, 422, "class"),
    ],
)  # fmt: skip
def test_generate_class_errors(
    client: TestClient, name: str, body: dict[str, Any], status: int, message: str
) -> None:
    r = client.post(f"/v1/models/{name}/generate", json=body)
    assert r.status_code == status and message in r.json()["detail"], r.json()


def test_class_ends_only_with_seed_ends(client: TestClient) -> None:
    r = client.post("/v1/models/cgan-t/interpolate",
                    json={"latent_a": [0.0] * 8, "latent_b": [1.0] * 8, "class_a": "boot"})  # fmt: skip
    assert r.status_code == 422 and "apply to seed ends" in r.json()["detail"]


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_looks_for_opentelemetry_only_when_asked(
    weights_dir: Path, enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    asked = []
    provider = trace.get_tracer_provider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: asked.append(1) or provider)
    client = start(Settings(weights_dir=weights_dir, opentelemetry=enabled))
    try:
        asked.clear()
        assert client.get("/v1/models").status_code == 200
        assert bool(asked) is enabled
    finally:
        client.__exit__(None, None, None)


def test_a_dae_generates_by_its_gsn_chain_seeded_with_steps(client: TestClient) -> None:
    from models import SearchBudget

    described = client.get("/v1/models/dae-t").json()
    assert described["samplers"] == ["chain"] and "generate" in described["operations"]
    assert described["chain_samplers"] == ["chain"]
    assert client.get("/v1/models/vae-t").json()["samplers"] == []
    body = {"n": 3, "seed": 4, "sampler": "chain", "steps": 5}
    r = client.post("/v1/models/dae-t/generate?format=array", json=body).json()
    assert r["sampler"] == "chain" and r["seed"] == 4
    dae = app_model(client, "dae-t")
    seeds = dae.chain_seeds(3, torch.Generator().manual_seed(4))
    expected = dae.sample_chain(seeds, SearchBudget(steps=5))
    assert torch.allclose(torch.tensor(r["images"]), expected, atol=1e-5)
    default = client.post("/v1/models/dae-t/generate?format=array", json={"n": 3, "seed": 4})
    longer = dae.sample_chain(seeds, SearchBudget(steps=Settings().chain_steps))
    assert torch.allclose(torch.tensor(default.json()["images"]), longer, atol=1e-5)


def test_a_chain_animates_as_a_gif_of_grids(client: TestClient) -> None:
    from models.denoising import CHAIN_FRAMES
    from service.gif_worker import HOLD_MS

    r = client.post("/v1/models/dae-t/generate?format=gif", json={"n": 4, "seed": 1, "steps": 60})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert gif.size == (2 * (2 + 2 * 30), 2 * (2 + 2 * 30))  # a 2x2 grid, scaled 2x
    # forward only, the samples held at the end; Pillow merges equal neighbours (a tiny model
    # settles at once), adding their durations
    assert gif_duration_ms(gif) == 80 * (CHAIN_FRAMES - 1) + HOLD_MS and gif.n_frames >= 2
    first = torch.from_numpy(__import__("numpy").asarray(gif.convert("L"), dtype="float32"))
    assert float(first[8:-8, 8:-8].std()) > 40  # the chains start from uniform noise
    short = client.post("/v1/models/dae-t/generate?format=gif", json={"n": 1, "steps": 3})
    assert gif_duration_ms(Image.open(io.BytesIO(short.content))) == 80 * (4 - 1) + HOLD_MS


def gif_duration_ms(gif: Image.Image) -> int:
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    gif.seek(0)
    return total


@pytest.mark.parametrize(
    ("name", "body", "query", "message"),
    [
        (
            "dae-t",
            {"sampler": "latent"},
            "",
            "dae models have no sampler 'latent' (they have: chain)",
        ),
        ("vae-t", {"sampler": "chain"}, "", "one sampler only; leave sampler out"),
        ("vae-t", {"steps": 10}, "", "generates by its default sampler, which is not a chain"),
        (
            "dae-t",
            {"steps": 1001},
            "",
            "steps: at most 1000 (LATENTSERVE_MAX_CHAIN_STEPS), got 1001",
        ),
        ("dae-t", {"steps": 0}, "", "steps: Input should be greater than or equal to 1"),
        ("dae-t", {"sampler": ""}, "", "sampler: String should have at least 1 character"),
        ("gan-t", {}, "?format=gif", "which has no frames to animate"),
        ("dae-t", {"n": 17}, "?format=gif", "a GIF animates at most 16 chains, got 17"),
    ],
)
def test_sampler_requests_that_cannot_be_met_are_422(
    client: TestClient, name: str, body: dict[str, Any], query: str, message: str
) -> None:
    r = client.post(f"/v1/models/{name}/generate{query}", json={"n": 2, **body})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]
