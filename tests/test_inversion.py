"""Amortised GAN inversion: a trained inverter's prediction, refined; the optimisation stays
available; the inverter is trained by ``python -m training fit-inverter`` into the artifact."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from models import SearchBudget, load_model, save_model
from models.base import ConfigError
from models.gan import GAN
from models.inversion import (
    Adam,
    CurvaturePairs,
    autograd_objective,
    descend,
    gauss_newton_preconditioner,
    lbfgs_descend,
    per_image_error,
)
from models.operations import REFINE_STEPS
from service import Settings
from service.imaging import image_to_tensor
from training.cli import main as training_main
from training.data import Split
from training.inverter import fit_inverter

from .conftest import png, start
from .factories import tiny_model, write_tiny

IMAGES = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4))


def with_inverter(family: str = "gan", seed: int = 0) -> GAN:
    model = tiny_model(family, seed=seed, inverter_width=4)
    assert isinstance(model, GAN)
    return model


@pytest.mark.parametrize("family", ["gan", "cgan"])
def test_amortised_inversion_starts_from_the_inverter_and_refinement_lowers_the_error(
    family: str,
) -> None:
    model = with_inverter(family)
    assert model.inversion_methods == ("amortised", "optimisation")
    assert model.inverter is not None
    with torch.inference_mode():
        z0, e0 = model.find_latent(IMAGES, SearchBudget(refine_steps=0))
        predicted = model.inverter(IMAGES)
        predicted_error = per_image_error(model, predicted, IMAGES)
        z5, e5 = model.find_latent(IMAGES, SearchBudget(refine_steps=5))
        one, _ = model.find_latent(IMAGES[1:2], SearchBudget(refine_steps=5))
    assert z0.shape == (3, model.latent_dim)  # a cgan's code: z and the class weights
    torch.testing.assert_close(z0, predicted)
    torch.testing.assert_close(e0, predicted_error)
    assert not torch.allclose(z5, z0) and float(e5.mean()) < float(e0.mean())
    torch.testing.assert_close(one[0], z5[1], atol=1e-5, rtol=1e-4)  # rows are independent


class LinearGenerator:
    """decode(z) = A z as a 1 x 4 x 5 image: least squares with a known answer."""

    def __init__(self, seed: int = 0, k: int = 6) -> None:
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(20, k, generator=g) * torch.linspace(0.2, 3.0, k)  # ill-conditioned
        self.latent_dim = k

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.a.T).view(-1, 1, 4, 5)


def test_lbfgs_refinement_solves_least_squares_far_sooner_than_adam() -> None:
    """Each row's own L-BFGS reaches the exact least-squares code of a linear generator in a
    few dozen evaluations, where as many Adam steps are still far; stop ends it early."""
    gen: Any = LinearGenerator()
    truth = torch.randn(4, gen.latent_dim, generator=torch.Generator().manual_seed(1))
    target = gen.decode(truth)
    start = torch.zeros_like(truth)
    objective = autograd_objective(gen)
    z = lbfgs_descend(objective, target, start, 40)
    torch.testing.assert_close(z, truth, atol=1e-3, rtol=0)
    adam = descend(objective, target, start, 40, 0.05)
    assert float((adam - truth).norm(dim=1).min()) > 10 * float((z - truth).norm(dim=1).max())
    alone = lbfgs_descend(objective, target[2:3], start[2:3], 40)
    torch.testing.assert_close(alone[0], z[2], atol=1e-5, rtol=0)
    calls: list[int] = []

    def third_call() -> bool:
        calls.append(1)
        return len(calls) >= 3

    stopped = lbfgs_descend(objective, target, start, 40, stop=third_call)
    assert len(calls) == 3 and float((stopped - truth).norm()) > 1e-2


def two_loop(g: np.ndarray, s: list[np.ndarray], y: list[np.ndarray]) -> np.ndarray:
    """H g by the two-loop recursion (Nocedal & Wright, algorithm 7.4), pairs oldest first."""
    q, alphas = g.copy(), []
    for si, yi in reversed(list(zip(s, y, strict=True))):
        rho = 1 / (si @ yi)
        alphas.append((rho, rho * (si @ q)))
        q -= alphas[-1][1] * yi
    r = q * ((s[-1] @ y[-1]) / (y[-1] @ y[-1]) if s else 1.0)
    for si, yi, (rho, alpha) in zip(s, y, reversed(alphas), strict=True):
        r += (alpha - rho * (yi @ r)) * si
    return r


def test_the_compact_form_gives_the_two_loop_recursions_direction() -> None:
    """Rows with no pair, with two, and with six pairs in four slots (the oldest dropped);
    a pair of negative curvature is not kept."""
    rng = np.random.default_rng(0)
    k, memory = 7, 4
    m = rng.normal(size=(k, k))
    spd = m @ m.T + np.eye(k)  # y = spd s: positive curvature
    pairs, added = CurvaturePairs(3, memory, k), [[], [], []]  # type: ignore[var-annotated]
    for step in range(6):
        moved = np.array([False, step < 2, True])
        s = rng.normal(size=(3, k))
        y = s @ spd
        pairs.add(moved, s, y)
        for i in np.flatnonzero(moved):
            added[i].append((s[i], y[i]))
    pairs.add(np.array([False, True, False]), s, -s)  # negative curvature: dropped
    g = rng.normal(size=(3, k))
    got = pairs.inverse_hessian_times(g)
    for i in range(3):
        kept = added[i][-memory:]
        want = two_loop(g[i], [p[0] for p in kept], [p[1] for p in kept])
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(got[0], g[0])  # no pairs: the identity


def test_the_gauss_newton_preconditioner_makes_a_linear_generators_error_round() -> None:
    """For G(z) = A z the preconditioner's L has L^T (2 A^T A) L = I (up to the ridge), so
    L-BFGS in u (z = z0 + L u) solves the least squares in a few evaluations; in z it does
    not (A's columns are scaled from 0.2 to 3)."""
    gen: Any = LinearGenerator()
    root = gauss_newton_preconditioner(gen, torch.randn(6, gen.latent_dim), ridge=1e-7)
    hessian = 2 * gen.a.T.double() @ gen.a.double()
    whitened = root.T.double() @ hessian @ root.double()
    torch.testing.assert_close(
        whitened, torch.eye(gen.latent_dim, dtype=torch.float64), atol=1e-3, rtol=0
    )
    truth = torch.randn(4, gen.latent_dim, generator=torch.Generator().manual_seed(1))
    target, start = gen.decode(truth), torch.zeros_like(truth)
    objective = autograd_objective(gen)

    def in_u(u: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        error, grad = objective(start + u @ root.T, t)
        return error, grad @ root

    solved = start + lbfgs_descend(in_u, target, torch.zeros_like(truth), 4) @ root.T
    torch.testing.assert_close(solved, truth, atol=1e-3, rtol=0)
    plain = lbfgs_descend(objective, target, start, 4)
    assert float((plain - truth).norm(dim=1).min()) > 0.1
    with pytest.raises(ValueError, match="codes of shape"):
        gauss_newton_preconditioner(gen, torch.randn(6, 2))
    gen.a.zero_()  # images that do not depend on the code: no preconditioning, no error
    flat = gauss_newton_preconditioner(gen, torch.randn(6, gen.latent_dim))
    torch.testing.assert_close(flat, torch.eye(gen.latent_dim))


def test_refinement_runs_in_the_preconditioned_code_which_is_saved_with_the_inverter(
    tmp_path: Path,
) -> None:
    model = with_inverter("cgan")
    assert model.inverter is not None and model.inverter.preconditioner is None
    budget = SearchBudget(refine_steps=5)
    with torch.inference_mode():
        plain, _ = model.find_latent(IMAGES, budget)
        model.set_inversion_preconditioner(torch.eye(model.latent_dim))
        same, _ = model.find_latent(IMAGES, budget)  # L = I: the same search
        codes = model.inverter(IMAGES)
    torch.testing.assert_close(same, plain, atol=1e-6, rtol=1e-5)
    root = gauss_newton_preconditioner(model.eval(), codes)
    model.set_inversion_preconditioner(root)
    with torch.inference_mode():
        z, error = model.find_latent(IMAGES, budget)
        torch.testing.assert_close(error, per_image_error(model, z, IMAGES))
    assert not torch.allclose(z, plain, atol=1e-4)
    save_model(model, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["config"][
        "inverter_preconditioned"
    ]
    loaded = load_model(tmp_path / "p")
    assert isinstance(loaded, GAN) and loaded.inverter is not None
    torch.testing.assert_close(loaded.inverter.preconditioner, root, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.find_latent(IMAGES, budget)[0], z, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\[5, 5\] preconditioner"):
        tiny_model("gan", inverter_width=4).set_inversion_preconditioner(torch.eye(3))  # type: ignore[operator]
    with pytest.raises(ValueError, match="fit one first"):
        tiny_model("gan").set_inversion_preconditioner(torch.eye(5))  # type: ignore[operator]
    with pytest.raises(ConfigError, match="needs an inverter"):
        tiny_model("gan", inverter_preconditioned=True)


def test_the_optimisation_path_stays_and_a_model_without_an_inverter_has_only_it() -> None:
    plain = tiny_model("gan")
    assert isinstance(plain, GAN) and plain.inverter is None
    assert plain.inversion_methods == ("optimisation",)
    budget = SearchBudget(steps=4, restarts=2)
    with torch.inference_mode():
        z, error = plain.find_latent(IMAGES, budget)
        with pytest.raises(ValueError, match="amortised"):
            plain.find_latent(IMAGES, SearchBudget(method="amortised"))
    model = with_inverter()
    model.load_state_dict(plain.state_dict(), strict=False)  # the same generator, plus an inverter
    with torch.inference_mode():
        z2, error2 = model.find_latent(
            IMAGES, SearchBudget(steps=4, restarts=2, method="optimisation")
        )
    torch.testing.assert_close(z2, z)  # the seeded search, unchanged by the inverter
    torch.testing.assert_close(error2, error)


def test_an_inverter_is_saved_in_the_same_safetensors_and_old_artifacts_still_load(
    tmp_path: Path,
) -> None:
    model = with_inverter()
    save_model(model, tmp_path / "inv")
    names = load_file(str(tmp_path / "inv" / "model.safetensors"))
    assert any(n.startswith("inverter.") for n in names)
    assert (
        json.loads((tmp_path / "inv" / "config.json").read_text())["config"]["inverter_width"] == 4
    )
    loaded = load_model(tmp_path / "inv")
    assert isinstance(loaded, GAN) and loaded.inverter is not None
    with torch.inference_mode():
        torch.testing.assert_close(
            loaded.inverter(IMAGES), model.inverter(IMAGES), atol=1e-5, rtol=1e-4
        )  # type: ignore[misc]
    old = tmp_path / "old"
    write_tiny(old, "gan", atlas=())
    config = json.loads((old / "config.json").read_text())
    assert "inverter_width" not in json.dumps(config) or config["config"]["inverter_width"] == 0
    assert load_model(old).inversion_methods == ("optimisation",)


def test_fit_inverter_learns_to_invert_the_generator() -> None:
    model = tiny_model("gan", width=8)
    assert isinstance(model, GAN)
    with torch.no_grad():  # a generator whose images depend strongly on z
        model.generator.project[0].weight.mul_(20)
        z = torch.randn(448, 5, generator=torch.Generator().manual_seed(2))
        images = (model.decode(z) * 255).round().to(torch.uint8)  # reachable targets
    no_labels = torch.zeros(len(images), dtype=torch.long)
    train, val = Split(images[:384], no_labels[:384]), Split(images[384:], no_labels[384:])
    untrained = with_inverter(seed=5).inverter
    args = argparse.Namespace(
        width=4, epochs=2, steps_per_epoch=None, batch_size=32, lr=1e-2, seed=0
    )
    summary = fit_inverter(model, train, val, args)
    assert model.inverter is not None and untrained is not None
    x = val.images.float() / 255
    with torch.no_grad():
        fresh = float(per_image_error(model, untrained(x), x).mean())
        learned = float(per_image_error(model, model.inverter(x), x).mean())
    assert learned < 0.7 * fresh  # measured: 0.017 against 0.045
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["history"][-1]["val_psnr"] == pytest.approx(
        float(-10 * torch.log10(per_image_error(model, model.inverter(x), x)).mean()), abs=1e-3
    )


def test_fit_inverter_writes_the_inverter_into_the_artifact_and_leaves_the_generator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_tiny(tmp_path / "gan", "gan", atlas=())
    before = load_file(str(folder / "model.safetensors"))
    training_main(["fit-inverter", "--model", str(folder), "--dataset", "synthetic", "--width", "4",
                   "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "16",
                   "--eval-images", "4", "--threads", "1"])  # fmt: skip
    after = load_file(str(folder / "model.safetensors"))
    for name, tensor in before.items():  # the generator and the critic, as they were
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0)
    assert {n for n in after if n.startswith("inverter.")}
    trained = load_model(folder)
    assert isinstance(trained, GAN) and trained.inversion_methods[0] == "amortised"
    card = json.loads((folder / "card.json").read_text())
    assert card["inverter"]["width"] == 4 and len(card["inverter"]["history"]) == 2
    metrics = card["metrics"]
    assert (
        0 < metrics["amortised_inversion_psnr"] < 60
        and metrics["amortised_inversion_ms_per_image"] > 0
    )
    assert metrics["amortised_inversion_refine_steps"] == REFINE_STEPS
    assert "amortised inversion:" in capsys.readouterr().out
    assert trained.config.inverter_preconditioned and card["inverter"]["preconditioner"]["images"]
    # --epochs 0: the trained inverter stays, the preconditioner is fitted again (the same)
    training_main(["fit-inverter", "--model", str(folder), "--dataset", "synthetic", "--epochs", "0",
                   "--eval-images", "4", "--threads", "1"])  # fmt: skip
    again = load_file(str(folder / "model.safetensors"))
    for name, tensor in after.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=1e-6)
    assert len(json.loads((folder / "card.json").read_text())["inverter"]["history"]) == 2
    with pytest.raises(SystemExit, match="of width 4; a width of 8 needs training"):
        training_main(["fit-inverter", "--model", str(folder), "--dataset", "synthetic",
                       "--epochs", "0", "--width", "8"])  # fmt: skip
    plain = write_tiny(tmp_path / "plain", "gan", atlas=())
    with pytest.raises(SystemExit, match="has none"):
        training_main(
            ["fit-inverter", "--model", str(plain), "--dataset", "synthetic", "--epochs", "0"]
        )


def test_fit_inverter_refuses_a_model_without_a_generator(tmp_path: Path) -> None:
    folder = write_tiny(tmp_path / "vae", "vae", atlas=())
    with pytest.raises(SystemExit, match="no generator"):
        training_main(["fit-inverter", "--model", str(folder), "--dataset", "synthetic"])


@pytest.fixture(scope="module")
def inverting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    root = tmp_path_factory.mktemp("inversion")
    save_model(with_inverter(seed=1), root / "gan-i")
    write_tiny(root / "gan-o", "gan", atlas=(), seed=1)
    write_tiny(root / "vae-t", "vae", atlas=(), seed=1)
    client = start(Settings(weights_dir=root, inversion_refine_steps=0, inversion_steps=3,
                            inversion_restarts=1))  # fmt: skip
    yield client, root
    client.__exit__(None, None, None)


def encode(client: TestClient, name: str, **params: object):  # type: ignore[no-untyped-def]
    body = {"image": base64.b64encode(png()).decode(), **params}
    return client.post(f"/v1/models/{name}/encode", json=body)


def test_the_service_encodes_a_gan_with_its_inverter_by_default(
    inverting: tuple[TestClient, Path],
) -> None:
    client, root = inverting
    assert client.get("/v1/models/gan-i").json()["inversion"] == ["amortised", "optimisation"]
    assert client.get("/v1/models/gan-o").json()["inversion"] == ["optimisation"]
    assert client.get("/v1/models/vae-t").json()["inversion"] == []
    r = encode(client, "gan-i")
    assert r.status_code == 200, r.text
    assert r.json()["inversion"] == "amortised"
    model = load_model(root / "gan-i")
    assert isinstance(model, GAN) and model.inverter is not None
    x = image_to_tensor(png(), model.image_shape, "image", 10**6, False)
    with torch.inference_mode():
        expected = model.inverter(x)[0]  # refine steps 0: the inverter's prediction itself
    np.testing.assert_allclose(r.json()["latent"], expected.numpy(), atol=1e-4, rtol=1e-3)
    searched = encode(client, "gan-i", inversion="optimisation")
    assert searched.status_code == 200 and searched.json()["inversion"] == "optimisation"
    assert searched.json()["latent"] != r.json()["latent"]
    assert encode(client, "gan-o").json()["inversion"] == "optimisation"


def test_the_inversion_parameter_reaches_reconstruct_interpolate_and_arithmetic(
    inverting: tuple[TestClient, Path],
) -> None:
    client, _ = inverting
    image = base64.b64encode(png()).decode()
    for inversion in ("amortised", "optimisation"):
        r = client.post("/v1/models/gan-i/reconstruct?format=array",
                        json={"image": image, "inversion": inversion})  # fmt: skip
        assert r.status_code == 200, r.text
        r = client.post("/v1/models/gan-i/interpolate",
                        json={"image": image, "image_b": image, "steps": 3, "inversion": inversion})  # fmt: skip
        assert r.status_code == 200, r.text
        r = client.post("/v1/models/gan-i/arithmetic", json={
            "image": image, "image_b": image, "image_c": image, "inversion": inversion})  # fmt: skip
        assert r.status_code == 200, r.text


def test_an_inversion_a_model_cannot_do_is_a_422_that_says_what_it_can(
    inverting: tuple[TestClient, Path],
) -> None:
    client, _ = inverting
    r = encode(client, "gan-o", inversion="amortised")
    assert r.status_code == 422 and "fit-inverter --model weights/gan-o" in r.json()["detail"]
    assert "optimisation" in r.json()["detail"]
    r = encode(client, "vae-t", inversion="optimisation")
    assert r.status_code == 422 and "encodes without a search" in r.json()["detail"]
    image = base64.b64encode(png()).decode()
    r = client.post("/v1/models/vae-t/reconstruct", json={"image": image, "inversion": "amortised"})
    assert r.status_code == 422 and "without a search" in r.json()["detail"]
    r = encode(client, "gan-i", inversion="newton")
    assert r.status_code == 422 and "inversion" in r.json()["detail"]


def test_open_inference_protocol_takes_the_inversion_as_a_parameter(
    inverting: tuple[TestClient, Path],
) -> None:
    client, _ = inverting
    x = image_to_tensor(png(), (1, 28, 28), "image", 10**6, False)
    for inversion in ("amortised", "optimisation"):
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28],
                            "data": x.flatten().tolist()}], "parameters": {"inversion": inversion}}  # fmt: skip
        r = client.post("/v2/models/gan-i.encode/infer", json=body)
        assert r.status_code == 200, r.text
        latent = next(o for o in r.json()["outputs"] if o["name"] == "latent")["data"]
        rest = encode(client, "gan-i", inversion=inversion).json()["latent"]
        np.testing.assert_allclose(latent, rest, atol=1e-5)
    body["parameters"] = {"inversion": "amortised"}
    r = client.post("/v2/models/gan-o.encode/infer", json=body)
    assert r.status_code == 400 and "fit-inverter" in r.json()["error"]


def test_the_search_takes_torch_adams_steps_without_importing_dynamo() -> None:
    torch.manual_seed(0)
    mine, theirs = torch.randn(4, 5), torch.randn(4, 5)
    theirs.copy_(mine)
    theirs.requires_grad_(True)
    reference = torch.optim.Adam([theirs], lr=0.05)
    adam = Adam(mine, 0.05)
    for _ in range(30):
        grad = torch.randn(4, 5)
        adam.step(grad)
        theirs.grad = grad.clone()
        reference.step()
    torch.testing.assert_close(mine, theirs.detach(), atol=1e-6, rtol=1e-5)
    # a server process's first inversion must not import torch._dynamo (1.8 s holding the GIL)
    script = (
        "import sys, torch\n"
        "from tests.factories import tiny_model\n"
        "from models import SearchBudget\n"
        "m = tiny_model('gan')\n"
        "with torch.inference_mode():\n"
        "    m.find_latent(torch.rand(2, 1, 28, 28), SearchBudget(steps=3, restarts=2))\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"


def test_the_service_evaluator_and_fit_inverter_refine_alike() -> None:
    """One number of refinement evaluations: the service's default is the models' (the
    figures in the cards are what the service does)."""
    assert Settings().inversion_refine_steps == REFINE_STEPS == SearchBudget().refine_steps
