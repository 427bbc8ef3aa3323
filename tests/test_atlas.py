"""The latent-space atlas: PCA's exact inverse, t-SNE's neighbour maps, the files beside the
weights, the fitting command, and the service's map, decode and locate endpoints."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models import load_model
from models.atlas import (
    ATLAS_FILE,
    NEIGHBOURS,
    THUMBNAILS_FILE,
    Atlas,
    AtlasError,
    fit_pca,
    read_atlas,
    read_thumbnails,
    sprite,
    write_atlas,
)
from service import Settings
from training.atlas import fit_atlas, sample_indices
from training.data import synthetic

from .conftest import start
from .factories import write_tiny
from .test_deploy import ROOT


def codes_on_a_plane(n: int = 200, k: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [n, k] that lie (up to tiny noise) on a 2-D plane through a mean, and the plane's
    orthonormal basis [2, k]."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(k, 2, generator=g))[0].T  # [2, k]
    coords = torch.randn(n, 2, generator=g) * torch.tensor([3.0, 1.0])
    return 5 + coords @ basis + 1e-4 * torch.randn(n, k, generator=g), basis


def atlas_of(codes: torch.Tensor, tsne: torch.Tensor | None = None) -> Atlas:
    mean, components, explained = fit_pca(codes)
    points = {"pca": (codes - mean) @ components.T}
    if tsne is not None:
        points["tsne"] = tsne
    labels = torch.arange(len(codes)) % 3
    return Atlas(codes, labels, points, mean, components, explained, "test codes")


def test_pca_finds_the_plane_and_inverts_it_exactly() -> None:
    codes, basis = codes_on_a_plane()
    atlas = atlas_of(codes)
    c = atlas.components
    assert torch.allclose(c @ c.T, torch.eye(2), atol=1e-5)  # orthonormal rows
    # the fitted plane is the true one: its basis spans the same space
    assert torch.allclose((c @ basis.T).det().abs(), torch.tensor(1.0), atol=1e-3)
    assert atlas.explained.sum() > 0.999 and atlas.explained[0] > atlas.explained[1]
    points = torch.tensor([[0.0, 0.0], [2.5, -0.7], [-4.0, 1.5]])
    assert torch.allclose(atlas.to_plane("pca", atlas.to_code("pca", points)), points, atol=1e-4)
    # codes on the plane come back from their points: the map loses nothing there
    assert torch.allclose(atlas.to_code("pca", atlas.points["pca"]), codes, atol=1e-3)


def test_pca_signs_are_fixed() -> None:
    codes, _ = codes_on_a_plane()
    _, a, _ = fit_pca(codes)
    _, b, _ = fit_pca(-codes)  # a reflected cloud has the same plane; the sign rule picks one
    assert torch.allclose(a.abs(), b.abs(), atol=1e-4)
    assert (a.gather(1, a.abs().argmax(1, keepdim=True)) > 0).all()


def test_tsne_maps_go_through_neighbours() -> None:
    codes, _ = codes_on_a_plane(60)
    tsne = torch.randn(60, 2, generator=torch.Generator().manual_seed(1)) * 10
    atlas = atlas_of(codes, tsne)
    # a sample point decodes to its own code, and a sample code lands on its own point
    assert torch.allclose(atlas.to_code("tsne", tsne[:5]), codes[:5], atol=1e-3)
    assert torch.allclose(atlas.to_plane("tsne", codes[:5]), tsne[:5], atol=1e-3)
    # a point between two sample points decodes between their codes (a weighted mean)
    mid = atlas.to_code("tsne", ((tsne[0] + tsne[1]) / 2)[None])[0]
    lo, hi = codes.min(0).values, codes.max(0).values
    assert ((mid >= lo - 1e-4) & (mid <= hi + 1e-4)).all()
    assert atlas.neighbour_labels(codes[:2]).shape == (2, NEIGHBOURS)
    assert atlas.neighbour_labels(codes[:1])[0, 0] == atlas.labels[0]  # nearest: itself


def test_points_off_the_map_and_bad_shapes_are_refused() -> None:
    atlas = atlas_of(codes_on_a_plane()[0])
    (x0, x1), _ = atlas.bounds("pca")
    with pytest.raises(AtlasError, match=r"points\[1\]: .* is outside the atlas"):
        atlas.to_code("pca", torch.tensor([[0.0, 0.0], [x1 + 10 * (x1 - x0), 0.0]]))
    with pytest.raises(AtlasError, match="finite"):
        atlas.to_code("pca", torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(AtlasError, match="not in this atlas; it has: pca"):
        atlas.to_code("tsne", torch.zeros(1, 2))
    with pytest.raises(AtlasError, match=r"expected \[B, 6\]"):
        atlas.to_plane("pca", torch.zeros(1, 5))


def test_sprite_puts_image_i_at_its_tile() -> None:
    images = torch.rand(7, 1, 4, 5, generator=torch.Generator().manual_seed(0))
    sheet, layout = sprite(images)
    assert layout.columns == 3 and layout.tile == (4, 5) and sheet.size == (15, 12)
    pixels = torch.from_numpy(np.array(sheet)).float()
    r, c = divmod(5, 3)
    tile = pixels[r * 4 : r * 4 + 4, c * 5 : c * 5 + 5] / 255
    assert torch.allclose(tile, images[5, 0], atol=1 / 255)


def test_files_round_trip_and_bad_files_say_which(tmp_path: Path) -> None:
    codes, _ = codes_on_a_plane(100, k=80)  # > 64 units: stored in half precision
    atlas = atlas_of(codes, torch.randn(100, 2))
    sheet, layout = sprite(torch.rand(100, 1, 8, 8))
    atlas = Atlas(**{**atlas.__dict__, "thumbnails": layout})
    write_atlas(tmp_path, atlas, sheet)
    back = read_atlas(tmp_path, 80)
    assert back is not None and back.projections == ["pca", "tsne"]
    assert back.source == "test codes" and back.thumbnails == layout
    assert torch.allclose(back.codes, codes, rtol=1e-3)  # float16 storage
    assert torch.equal(back.labels, atlas.labels)
    assert torch.equal(back.points["tsne"], atlas.points["tsne"])
    assert read_thumbnails(tmp_path, back) == (tmp_path / THUMBNAILS_FILE).read_bytes()
    assert read_atlas(tmp_path / "nothing-here", 80) is None

    with pytest.raises(AtlasError, match="latent size is 16"):
        read_atlas(tmp_path, 16)
    Image.new("L", (9, 9)).save(tmp_path / THUMBNAILS_FILE)
    with pytest.raises(AtlasError, match="does not match the atlas's layout"):
        read_thumbnails(tmp_path, back)
    (tmp_path / ATLAS_FILE).write_bytes((tmp_path / ATLAS_FILE).read_bytes()[:300])
    with pytest.raises(AtlasError, match=ATLAS_FILE):
        read_atlas(tmp_path, 80)


def test_fit_atlas_encodes_a_fixed_sample(tmp_path: Path) -> None:
    data = synthetic((1, 28, 28), n=400, seed=2)
    write_tiny(tmp_path / "ae", "ae", atlas=())
    model = load_model(tmp_path / "ae")
    atlas, sheet = fit_atlas(model, data, 30, seed=4, projections=("pca", "tsne"))
    index = sample_indices(len(data.test), 30, 4)
    assert len(set(index.tolist())) == 30 and index.tolist() == sorted(index.tolist())
    assert torch.equal(atlas.labels, data.test.labels[index])
    x = data.test.images[index].float() / 255
    with torch.no_grad():
        assert torch.allclose(atlas.codes, model.encode(x), atol=1e-5)
    assert atlas.projections == ["pca", "tsne"] and atlas.points["tsne"].shape == (30, 2)
    assert atlas.source == "30 test images of synthetic, sampled with seed 4"
    assert sheet.size == (6 * 28, 5 * 28)
    with pytest.raises(ValueError, match="the test split has only 40 images"):
        fit_atlas(model, data, 41)


def test_atlas_command_writes_the_files_and_the_card(tmp_path: Path) -> None:
    folder = write_tiny(tmp_path / "vae", "vae", atlas=())
    (folder / "card.json").write_text(json.dumps({"dataset": {"name": "synthetic"}}))
    run = subprocess.run(
        [sys.executable, "-m", "training", "atlas", "--model", str(folder), "--atlas-images", "24",
         "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    card = json.loads((folder / "card.json").read_text())
    assert card["atlas"]["images"] == 24 and card["atlas"]["projections"] == ["pca", "tsne"]
    assert (folder / ATLAS_FILE).is_file() and (folder / THUMBNAILS_FILE).is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "training", "atlas", "--model", str(folder), "--atlas-images", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--atlas-images" in bad.stderr


# --- the service ---


def sample_image(i: int) -> bytes:
    """The PNG of the conftest atlases' i-th image (factories.write_tiny's sample)."""
    data = synthetic((1, 28, 28), n=320, seed=3)
    index = sample_indices(len(data.test), 32, 0)
    buf = io.BytesIO()
    Image.fromarray(data.test.images[index[i], 0].numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


def test_the_map(client: TestClient) -> None:
    info = client.get("/v1/models/vae-t").json()["atlas"]
    assert info == {"projections": ["pca", "tsne"], "images": 32, "thumbnails": True}
    assert client.get("/v1/models/pixelcnn-t").json()["atlas"] is None
    r = client.get("/v1/models/vae-t/atlas")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    m = r.json()
    assert m["count"] == 32 and len(m["points"]) == 32 and len(m["labels"]) == 32
    assert m["projection"] == "pca" and m["projections"] == ["pca", "tsne"]
    assert set(m["labels"]) <= set(range(len(m["class_names"])))
    xs = [p[0] for p in m["points"]]
    assert m["bounds"]["x"][0] == pytest.approx(min(xs), abs=1e-3)
    assert len(m["explained_variance"]) == 2 and "exact" in m["inverse"]
    tsne = client.get("/v1/models/vae-t/atlas?projection=tsne").json()
    assert "nearest" in tsne["inverse"] and tsne["points"] != m["points"]

    thumbs = client.get(m["thumbnails"]["url"])
    assert thumbs.status_code == 200 and thumbs.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(thumbs.content))
    cols, (h, w) = m["thumbnails"]["columns"], m["thumbnails"]["tile"]
    assert img.size == (cols * w, -(-32 // cols) * h)
    # tile 3 is the sample's image 3
    r3, c3 = divmod(3, cols)
    tile = img.crop((c3 * w, r3 * h, (c3 + 1) * w, (r3 + 1) * h))
    assert np.array_equal(np.asarray(tile), np.asarray(Image.open(io.BytesIO(sample_image(3)))))


@pytest.mark.parametrize("projection", ["pca", "tsne"])
def test_a_sample_image_lands_on_its_own_point(client: TestClient, projection: str) -> None:
    m = client.get(f"/v1/models/vae-t/atlas?projection={projection}").json()
    for i in (0, 7):
        image = base64.b64encode(sample_image(i)).decode()
        r = client.post(
            "/v1/models/vae-t/atlas/locate", json={"image": image, "projection": projection}
        )
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["point"] == pytest.approx(m["points"][i], abs=2e-3)
        assert len(got["latent"]) == 3 and sum(got["neighbour_classes"].values()) == NEIGHBOURS
        assert m["class_names"][m["labels"][i]] in got["neighbour_classes"]


def test_decoding_points_is_decoding_their_codes(client: TestClient) -> None:
    m = client.get("/v1/models/ae-t/atlas").json()
    points = [m["points"][0], m["points"][5], [0.0, 0.0]]
    r = client.post("/v1/models/ae-t/atlas/decode?format=array", json={"points": points})
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["images"])
    atlas = client.app.state.latentserve.registry.models["ae-t"].atlas  # type: ignore[attr-defined]
    z = atlas.mean + torch.tensor(points) @ atlas.components
    r2 = client.post("/v1/models/ae-t/decode?format=array", json={"latents": z.tolist()})
    assert torch.allclose(got, torch.tensor(r2.json()["images"]), atol=1e-4)
    png = client.post(
        "/v1/models/ae-t/atlas/decode", json={"points": points}, headers={"accept": "image/png"}
    )
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("pixelcnn-t/atlas/decode", {"points": [[0, 0]]}, 400, "does not support decode"),
        ("classifier-t/atlas", None, 400, "does not support decode"),
        ("ae-t/atlas/decode", {"points": [[0, 0]], "projection": "tsne"}, 422, "it has: pca"),
        ("ae-t/atlas/decode", {"points": [[1e9, 0]]}, 422, "points[0]: (1e+09, 0) is outside"),
        ("ae-t/atlas/decode", {"points": []}, 422, "points"),
        ("ae-t/atlas/decode", {"points": [[0, 0, 0]]}, 422, "points"),
        ("ae-t/atlas/decode", {"points": [[0, 0]] * 257}, 422, "points"),
        ("ae-t/atlas/decode", {"points": [["a", 0]]}, 422, "points"),
        ("ae-t/atlas/decode", {"points": [[0, 0]], "projection": "umap"}, 422, "projection"),
        ("ae-t/atlas?projection=umap", None, 422, "projection"),
        ("ae-t/atlas/locate", {"projection": "pca"}, 422, "image: an image is required"),
        ("nope/atlas", None, 404, "available models"),
    ],
)
def test_bad_atlas_requests_are_4xx_with_a_reason(
    client: TestClient, path: str, body: dict | None, status: int, message: str
) -> None:
    url = f"/v1/models/{path}"
    r = client.get(url) if body is None else client.post(url, json=body)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()), r.text


def test_a_model_without_an_atlas_says_how_to_make_one(tmp_path: Path) -> None:
    write_tiny(tmp_path / "plain", "ae", atlas=())
    write_tiny(tmp_path / "broken", "ae")
    (tmp_path / "broken" / ATLAS_FILE).write_bytes(b"not a safetensors file")
    c = start(Settings(weights_dir=tmp_path))
    try:
        for name in ("plain", "broken"):  # a broken atlas: the model serves without it
            assert c.post(f"/v1/models/{name}/reconstruct", files={"image": ("x.png", sample_image(0))}).status_code == 200  # fmt: skip
            r = c.get(f"/v1/models/{name}/atlas")
            assert r.status_code == 400
            assert f"python -m training atlas --model weights/{name}" in r.json()["detail"]
    finally:
        c.__exit__(None, None, None)
