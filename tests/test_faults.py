"""Bad weights, reloads, admin access, and hostile uploads: always a 4xx or a clean report."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app

from .conftest import API_KEY, png, start
from .factories import write_tiny


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_tiny(tmp_path / "good", "ae", seed=1)
    write_tiny(tmp_path / "other", "vae", seed=2)
    return tmp_path


def test_corrupt_model_is_reported_and_the_others_serve(folder: Path) -> None:
    weights = folder / "other" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    client = start(Settings(weights_dir=folder))
    try:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        reason = ready.json()["not_ready"]["other"]
        assert "not a valid safetensors file" in reason
        assert str(folder) not in reason  # no server paths in replies
        assert (
            client.post(
                "/v1/models/good/reconstruct", content=png(), headers={"content-type": "image/png"}
            ).status_code
            == 200
        )
        r = client.get("/v1/models/other")
        assert r.status_code == 404 and "failed to load" in r.json()["detail"]
        assert "latentserve_models_failed 1.0" in client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)


def test_missing_configured_model_is_not_ready(folder: Path) -> None:
    client = start(Settings(weights_dir=folder, models=["good", "absent"]))
    try:
        body = client.get("/health/ready").json()
        assert body["ready"] is False and "no such model folder" in body["not_ready"]["absent"]
        assert body["models"] == ["good"]
    finally:
        client.__exit__(None, None, None)


def test_empty_weights_folder_is_not_ready(tmp_path: Path) -> None:
    client = start(Settings(weights_dir=tmp_path))
    try:
        r = client.get("/health/ready")
        assert r.status_code == 503 and "no models found" in str(r.json()["not_ready"])
    finally:
        client.__exit__(None, None, None)


def test_admin_routes_do_not_exist_without_a_key(folder: Path) -> None:
    client = start(Settings(weights_dir=folder))
    try:
        assert client.post("/v1/admin/reload").status_code == 404
        assert "/v1/admin/reload" not in client.get("/openapi.json").json()["paths"]
    finally:
        client.__exit__(None, None, None)


def test_reload_swaps_new_models_in_and_keeps_old_ones_on_bad_files(folder: Path) -> None:
    client = start(Settings(weights_dir=folder, api_key=API_KEY))
    try:
        assert (
            client.post("/v1/admin/reload", headers={"x-api-key": "wrong" * 5}).status_code == 401
        )
        before = client.post("/v1/models/good/encode", files={"image": ("x.png", png())}).json()[
            "latent"
        ]
        write_tiny(folder / "newcomer", "gan")
        write_tiny(folder / "good", "ae", seed=7)  # retrained weights
        weights = folder / "other" / "model.safetensors"
        weights.write_bytes(b"garbage")  # a bad deploy of 'other'
        report = client.post("/v1/admin/reload", headers={"x-api-key": API_KEY}).json()
        assert "newcomer" in report["loaded"] and "good" in report["loaded"]
        assert (
            report["kept_old"] == ["other"]
            and "not a valid safetensors" in report["failed"]["other"]
        )
        after = client.post("/v1/models/good/encode", files={"image": ("x.png", png())}).json()[
            "latent"
        ]
        assert after != before
        assert client.post("/v1/models/other/generate", json={"n": 1, "seed": 1}).status_code == 200
        assert client.post("/v1/models/newcomer/generate", json={"n": 1}).status_code == 200
        shutil.rmtree(folder / "newcomer")
        report = client.post("/v1/admin/reload", headers={"x-api-key": API_KEY}).json()
        assert "newcomer" not in report["models"]
    finally:
        client.__exit__(None, None, None)


def test_weak_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings(api_key="changeme")


def test_a_replaced_setting_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTSERVE_TORCHSCRIPT", "false")
    with pytest.raises(ValueError, match="replaced by LATENTSERVE_ENGINE"):
        Settings()


def test_a_misspelt_setting_is_refused_with_the_nearest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LATENTSERVE_MAX_BATCH", "8")
    with pytest.raises(
        ValueError, match=r"LATENTSERVE_MAX_BATCH \(did you mean LATENTSERVE_MAX_BATCH_SIZE\?\)"
    ):
        Settings()
    monkeypatch.delenv("LATENTSERVE_MAX_BATCH")
    monkeypatch.setenv("LATENTSERVE_URL", "http://127.0.0.1:8000")  # the client's, allowed
    monkeypatch.setenv("latentserve_max_batch_size", "8")  # a setting, in any case
    assert Settings().max_batch_size == 8


def test_the_service_does_not_start_on_an_unknown_setting() -> None:
    env = {**os.environ, "LATENTSERVE_WROKERS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "unknown setting LATENTSERVE_WROKERS (did you mean LATENTSERVE_WORKERS?)" in done.stderr


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("w")
    write_tiny(root / "ae", "ae")
    client = start(Settings(weights_dir=root, max_body_bytes=200_000, max_image_pixels=1_000_000))
    yield client
    client.__exit__(None, None, None)


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def bomb() -> bytes:
    """A 20000x20000 PNG of zeros: ~400 MB decoded, a few hundred KB... compressed."""
    return _bytes(Image.new("1", (20000, 20000)), "PNG", optimize=True)


HOSTILE = {
    "zero bytes": (b"", 400, "the image is empty"),
    "truncated png": (png()[:60], 400, "truncated or corrupt"),
    "corrupt png": (png()[:40] + b"\x00" * 50 + png()[90:], 400, "truncated or corrupt"),
    "svg labelled png": (
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        415,
        "an SVG/XML document",
    ),
    "html labelled png": (b"<!DOCTYPE html><html><body>hi</body></html>", 415, "an HTML document"),
    "pdf labelled png": (b"%PDF-1.7\n1 0 obj<<>>endobj", 415, "a PDF document"),
    "random bytes": (bytes(range(256)) * 4, 415, "not a PNG, JPEG"),
    "too many pixels": (
        _bytes(Image.new("L", (1200, 1000)), "PNG"),
        413,
        "more than the limit of 1000000",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_uploads_get_a_precise_4xx(limited: TestClient, case: str) -> None:
    data, status, message = HOSTILE[case]
    r = limited.post(
        "/v1/models/ae/reconstruct", content=data, headers={"content-type": "image/png"}
    )
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(limited: TestClient) -> None:
    data = bomb()
    assert len(data) < 200_000
    r = limited.post(
        "/v1/models/ae/reconstruct", content=data, headers={"content-type": "image/png"}
    )
    assert r.status_code == 413 and "400000000 pixels" in r.json()["detail"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: _bytes(Image.new("P", (30, 30)), "PNG"),  # palette
        lambda: _bytes(Image.new("CMYK", (30, 30), (0, 50, 100, 0)), "JPEG"),
        lambda: _bytes(Image.new("LA", (30, 20), (100, 0)), "PNG"),  # alpha, not square
        lambda: _bytes(Image.fromarray(np.full((20, 20), 50000, np.uint16)), "PNG"),
        lambda: _bytes(
            Image.new("RGB", (40, 40)),
            "GIF",
            save_all=True,
            append_images=[Image.new("RGB", (40, 40), "red")],
        ),
        lambda: _bytes(Image.new("RGB", (40, 40), "blue"), "WEBP"),
        lambda: _bytes(Image.new("1", (28, 28), 1), "BMP"),
    ],
    ids=["palette", "cmyk-jpeg", "alpha-nonsquare", "16-bit", "animated-gif", "webp", "1-bit-bmp"],
)
def test_unusual_modes_are_converted(limited: TestClient, make) -> None:
    r = limited.post(
        "/v1/models/ae/reconstruct", content=make(), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text


def test_transparent_pixels_become_white(limited: TestClient) -> None:
    from service.imaging import image_to_tensor

    x = image_to_tensor(
        _bytes(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"), (1, 28, 28), "image", 10**6
    )
    assert float(x.min()) == 1.0


def test_body_over_the_limit_is_413(limited: TestClient) -> None:
    r = limited.post(
        "/v1/models/ae/reconstruct",
        content=b"\x89PNG" + b"0" * 300_000,
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 413 and "larger than the limit of 200000 bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed size is counted
        for _ in range(30):
            yield b"0" * 10_000

    r = limited.post(
        "/v1/models/ae/reconstruct", content=chunks(), headers={"content-type": "image/png"}
    )
    assert r.status_code == 413


def test_deeply_nested_and_huge_json(limited: TestClient) -> None:
    r = limited.post(
        "/v1/models/ae/decode",
        content=b"[" * 50_000 + b"]" * 50_000,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 or (
        r.status_code == 400 and "nested too deeply" in r.json()["detail"]
    )
    r = limited.post(
        "/v1/models/ae/decode",
        content=b'{"latent": [' + b"1," * 60_000 + b"1]}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code in (413, 422)


def test_unexpected_errors_are_generic_500s(
    limited: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service.engines import EngineCall

    def explode(self, x):
        raise RuntimeError("secret internal detail at /srv/weights")

    monkeypatch.setattr(EngineCall, "__call__", explode)  # the model call, traced or not
    r = limited.post(
        "/v1/models/ae/reconstruct", content=png(), headers={"content-type": "image/png"}
    )
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert "secret internal detail" in caplog.text  # logged with its traceback
    monkeypatch.undo()
    assert (
        limited.post(
            "/v1/models/ae/reconstruct", content=png(), headers={"content-type": "image/png"}
        ).status_code
        == 200
    )


def test_content_type_that_contradicts_the_body(limited: TestClient) -> None:
    """The bytes decide: a PNG sent as image/jpeg is decoded as the PNG it is, and HTML sent as
    image/png is refused by its bytes, not accepted by its label."""
    r = limited.post(
        "/v1/models/ae/reconstruct", content=png(), headers={"content-type": "image/jpeg"}
    )
    assert r.status_code == 200
    r = limited.post(
        "/v1/models/ae/reconstruct",
        content=b"<html><body>x</body></html>",
        headers={"content-type": "image/jpeg"},
    )
    assert r.status_code == 415 and "an HTML document" in r.json()["detail"]


def test_requests_before_the_models_have_loaded_get_503_and_retry_after(weights_dir: Path) -> None:
    """A worker that is still loading (with several workers, a readiness probe may already
    have seen another one ready) asks the client to retry instead of saying 404."""
    app = create_app(Settings(weights_dir=weights_dir))
    early = TestClient(app, raise_server_exceptions=False)  # no lifespan: nothing loads
    for r in (
        early.post("/v1/models/ae-t/reconstruct", json={"image": "x"}),
        early.get("/v1/models/ae-t"),
    ):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"] == "the models are still loading; retry shortly"
    with TestClient(app) as started:
        deadline = time.monotonic() + 60  # a bound for a hung start, not a speed
        while not app.state.latentserve.registry.loaded_once and time.monotonic() < deadline:
            time.sleep(0.01)
        assert started.get("/v1/models/ae-t").status_code == 200
        assert started.get("/v1/models/nope").status_code == 404  # loaded: unknown is unknown


def test_admin_reload_reaches_every_worker_through_the_signal_file(folder: Path) -> None:
    """Two workers (two app instances) share a signal file: a reload asked of one is
    followed by the other within the poll interval; the reply says so."""
    settings = Settings(weights_dir=folder, api_key=API_KEY, reload_signal_file=folder / ".sig")
    one, two = start(settings), start(settings)
    try:
        write_tiny(folder / "newcomer", "gan")
        time.sleep(1.5)  # a poll or more passes: no signal, no reload
        assert two.get("/v1/models/newcomer").status_code == 404
        reply = one.post("/v1/admin/reload", headers={"x-api-key": API_KEY}).json()
        assert "newcomer" in reply["loaded"] and reply["workers"].startswith("all")
        assert one.post("/v1/models/newcomer/generate", json={"n": 1}).status_code == 200
        deadline = time.monotonic() + 30  # one poll a second; generous for a slow host
        while two.get("/v1/models/newcomer").status_code != 200:
            assert time.monotonic() < deadline, "the other worker never reloaded"
            time.sleep(0.1)
        assert two.post("/v1/models/newcomer/generate", json={"n": 1}).status_code == 200
    finally:
        one.__exit__(None, None, None)
        two.__exit__(None, None, None)


def test_a_single_worker_reload_says_so(folder: Path) -> None:
    client = start(Settings(weights_dir=folder, api_key=API_KEY))
    try:
        reply = client.post("/v1/admin/reload", headers={"x-api-key": API_KEY}).json()
        assert reply["workers"] == "this one"
    finally:
        client.__exit__(None, None, None)
