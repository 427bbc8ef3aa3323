"""The written-out gradient of a squared error (models/adjoint.py) against autograd, and the
GAN's inversion objective compiled by the service's engines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import SearchBudget
from models.adjoint import squared_error_and_gradient
from models.gan import GAN
from models.inversion import autograd_objective
from service.engines import EngineCall

from .factories import tiny_model


def every_supported_layer(seed: int = 0) -> nn.Sequential:
    """z [B, 6] -> [B, 10] through each layer the adjoint knows, batch norm with running
    statistics of its own; the stride-2 conv on 8x8 needs an output padding in its adjoint."""
    torch.manual_seed(seed)
    stack = nn.Sequential(
        nn.Linear(6, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2), nn.Unflatten(1, (2, 4, 4)),
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),  # 4x4 -> 8x8
        nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.Sigmoid(), nn.Flatten(), nn.Linear(64, 10), nn.Tanh(),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (stack[1], stack[5]):
            assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
            bn.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
            bn.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return stack.eval()


def autograd_reference(
    stack: nn.Module, z: torch.Tensor, target: torch.Tensor, scale: float, shift: float
) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    error = (scale * stack(z) + shift - target).pow(2).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(error.sum(), z)
    return error.detach(), grad


def test_the_written_out_gradient_is_autograds_through_every_supported_layer() -> None:
    stack = every_supported_layer()
    g = torch.Generator().manual_seed(1)
    z, target = torch.randn(5, 6, generator=g), torch.rand(5, 10, generator=g)
    error, grad = squared_error_and_gradient(list(stack), z, target, 0.5, 0.5)
    want_error, want_grad = autograd_reference(stack, z, target, 0.5, 0.5)
    torch.testing.assert_close(error, want_error, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)
    assert float(want_grad.abs().max()) > 1e-3  # a gradient worth comparing
    # rows are independent: one row alone gets its own row's gradient
    _, alone = squared_error_and_gradient(list(stack), z[3:4], target[3:4], 0.5, 0.5)
    torch.testing.assert_close(alone[0], grad[3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.SiLU(), "no written-out gradient for SiLU"),
        (nn.Conv2d(2, 2, 3, groups=2), "groups=2"),
        (nn.Conv2d(2, 2, 3, padding="same"), "padding='same'"),
        (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "reflect"),
        (nn.BatchNorm2d(2).train(), "eval mode"),
    ],
)
def test_a_layer_without_a_written_out_gradient_is_refused_by_name(
    layer: nn.Module, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        squared_error_and_gradient([layer], torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))


@pytest.mark.parametrize("family", ["gan", "cgan"])
def test_a_gans_inversion_objective_is_autograd_through_decode(family: str) -> None:
    model = tiny_model(family, seed=3)
    assert isinstance(model, GAN)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4, model.latent_dim, generator=g)
    target = torch.rand(4, *model.image_shape, generator=g)
    with torch.inference_mode():  # as the service calls it
        error, grad = model.inversion_objective(z, target)
    want_error, want_grad = autograd_objective(model)(z, target)
    torch.testing.assert_close(error, want_error, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 latents for 4 images"):
        model.inversion_objective(z[:3], target)
    with pytest.raises(ValueError, match="latents of shape"):
        model.inversion_objective(z[:, :2], target)


def test_a_generator_with_a_layer_it_cannot_write_out_still_inverts_by_autograd() -> None:
    model = tiny_model("gan", seed=3, inverter_width=4)
    assert isinstance(model, GAN)
    model.generator.body[2] = nn.SiLU()  # where a ReLU was
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, model.latent_dim, generator=g)
    target = torch.rand(2, *model.image_shape, generator=g)
    with torch.inference_mode():
        error, grad = model.inversion_objective(z, target)
        _, found_error = model.find_latent(target, SearchBudget(refine_steps=3))
    want_error, want_grad = autograd_objective(model)(z, target)
    torch.testing.assert_close(error, want_error)
    torch.testing.assert_close(grad, want_grad)
    assert torch.isfinite(found_error).all()
    call = EngineCall(model, "inversion_objective", "gan.inversion_objective", "auto")
    with torch.inference_mode():
        call(z, target)
    assert call.state in ("eager", "torchscript")  # no ONNX graph of autograd


@pytest.mark.parametrize("engine", ["onnxruntime", "torchscript"])
def test_the_engines_compile_a_call_of_two_inputs_and_check_it(engine: str) -> None:
    model = tiny_model("cgan", seed=4)
    call = EngineCall(model, "inversion_objective", "cgan.inversion_objective", engine)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, model.latent_dim, generator=g)
    target = torch.rand(2, *model.image_shape, generator=g)
    with torch.inference_mode():
        error, grad = call(z, target)  # type: ignore[misc]
        assert call.state == engine, call.failures
        want_error, want_grad = model.inversion_objective(z, target)
        torch.testing.assert_close(error, want_error, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-4)
        # another image shape runs eagerly, so the model's own checks word the error
        with pytest.raises(ValueError, match="expected images of shape"):
            call(z, torch.rand(2, 1, 8, 8))
