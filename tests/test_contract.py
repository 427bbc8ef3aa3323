"""The family contract, generated from each family's own declaration: a new family (shipped or
a plugin) gets these tests with no edit here.

Every declared operation answers with its typed output and the right shapes; the service
lists exactly the operations the declaration gives and answers every one of them; the save/load
round trip is tests/test_checkpoint.py's, over the same families. And the service never asks a
model what class it is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from models import (
    FAMILIES,
    ClassifyOutput,
    DeclarationError,
    EncodeOutput,
    ImageOutput,
    LatentModel,
    LikelihoodOutput,
    ModelConfig,
    Op,
    SearchBudget,
)
from models.anomaly import has_anomaly_score
from models.base import register
from models.operations import INPUTS
from service import Settings
from service.registry import served_operations

from .conftest import start
from .factories import tiny_model, write_tiny
from .test_deploy import ROOT, call_operation

FAST_SEARCH = SearchBudget(steps=5, restarts=1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_declared_operation_answers_with_its_typed_output(family: str) -> None:
    model = tiny_model(family)
    c, h, w = model.image_shape
    images = torch.rand(3, c, h, w, generator=torch.Generator().manual_seed(0))
    assert model.operations, f"{family} declares no operation"
    with torch.no_grad():
        for operation, op in model.operations.items():
            options = {"budget": FAST_SEARCH} if op.search else {}
            if operation == "generate":
                a = model.sample(3, torch.Generator().manual_seed(5))
                b = model.sample(3, torch.Generator().manual_seed(5))
                assert a.shape == (3, c, h, w) and torch.equal(a, b)  # seeded
                assert float(a.min()) >= 0 and float(a.max()) <= 1
                continue
            x = torch.randn(3, model.latent_dim) if INPUTS[operation] == "latents" else images
            out = model.run(operation, x, **options)
            if operation == "encode":
                assert isinstance(out, EncodeOutput) and out.latent.shape == (3, model.latent_dim)
                if "decode" in model.operations:  # the latent is what decode takes
                    assert model.run("decode", out.latent).images.shape == (3, c, h, w)
            elif operation == "likelihood":  # a finite log p per image, at most 0 if discrete
                assert isinstance(out, LikelihoodOutput) and out.log_likelihood.shape == (3,)
                assert torch.isfinite(out.log_likelihood).all()
                assert model.density is not None and model.density.convention
                if model.density.exact:
                    assert float(out.log_likelihood.max()) <= 0
            elif operation == "classify":
                assert isinstance(out, ClassifyOutput)
                assert torch.allclose(out.probabilities.sum(1), torch.ones(3), atol=1e-5)
                assert out.probabilities.shape == (3, len(model.class_names))
            else:
                assert isinstance(out, ImageOutput) and out.images.shape == (3, c, h, w)
                assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_service_answers_every_operation_the_declaration_gives(
    family: str, tmp_path: Path
) -> None:
    write_tiny(tmp_path / "m", family)
    client = start(Settings(weights_dir=tmp_path, inversion_steps=5, inversion_restarts=1))
    try:
        info = client.get("/v1/models/m").json()
        calibrated = has_anomaly_score(FAMILIES[family].density)
        assert info["operations"] == served_operations(FAMILIES[family].operations, calibrated)
        assert info["conditional"] == FAMILIES[family].conditional
        for operation in info["operations"]:
            reply = call_operation("", "m", operation, info, post=client.post)
            assert reply.status_code == 200, (operation, reply.text)
        undeclared = sorted({"encode", "decode", "generate", "classify"} - set(info["operations"]))
        for operation in undeclared:
            reply = call_operation("", "m", operation, info, post=client.post)
            assert reply.status_code == 400 and "does not support" in reply.json()["detail"]
    finally:
        client.__exit__(None, None, None)


class _Config(ModelConfig):
    pass


def test_a_declaration_that_names_a_missing_method_is_refused_at_import() -> None:
    class Broken(LatentModel):
        family = "broken-test"
        config_class = _Config
        operations = {"encode": Op("no_such_method")}  # noqa: RUF012

    with pytest.raises(DeclarationError, match=r"encode names Broken\.no_such_method"):
        register(Broken)
    assert "broken-test" not in FAMILIES

    class Unknown(LatentModel):
        family = "unknown-op-test"
        config_class = _Config
        operations = {"paint": Op("forward")}  # noqa: RUF012

    with pytest.raises(DeclarationError, match=r"unknown operations \['paint'\]"):
        register(Unknown)

    class NoPrepare(LatentModel):
        family = "no-prepare-test"
        config_class = _Config
        operations = {"generate": Op("forward")}  # noqa: RUF012

    with pytest.raises(DeclarationError, match="only generate has"):
        register(NoPrepare)


FAMILY_CLASSES = {cls.__name__ for cls in FAMILIES.values()} | {
    "LatentModel", "ConditionalCode", "Autoencoder", "VAE", "GAN", "Classifier",
}  # fmt: skip


def test_the_service_never_asks_a_model_its_class() -> None:
    """No isinstance/issubclass against a family class anywhere in service/: it reads the
    declaration instead (models/operations.py)."""
    found = []
    for file in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("isinstance", "issubclass") or len(node.args) != 2:
                continue
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & FAMILY_CLASSES:
                found.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert found == []
    imports = {
        node.module
        for file in (ROOT / "service").rglob("*.py")
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    family_modules = {f"models.{cls.__module__.rsplit('.', 1)[-1]}" for cls in FAMILIES.values()}
    assert imports & family_modules == set()  # nor imports one
