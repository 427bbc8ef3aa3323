"""Traced model calls give the eager results, and anything untraceable stays eager."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from models import FAMILIES
from models.operations import INPUTS
from service.config import Settings
from service.tracing import TracedCall

from .conftest import start
from .factories import tiny_model


def example_input(model, operation: str) -> torch.Tensor:
    """A batch of 4 of what the declared method of ``operation`` takes."""
    op = model.operations[operation]
    if op.prepare is not None:
        return getattr(model, op.prepare)(4, torch.Generator().manual_seed(0), 1.0, None)
    if INPUTS[operation] == "latents":
        return torch.randn(4, model.latent_dim)
    return torch.rand(4, *model.image_shape)


# every traceable call every family declares: a new family is covered with no edit here
CASES = [
    (family, operation)
    for family, cls in sorted(FAMILIES.items())
    for operation, op in cls.operations.items()
    if op.traceable
]


def outputs(value: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize(("family", "operation"), CASES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_served_call_traces_and_matches_eager(
    family: str, operation: str, shape: tuple[int, int, int]
) -> None:
    model = tiny_model(family, image_shape=shape, seed=3)
    method = model.operations[operation].method
    torch.manual_seed(0)
    call = TracedCall(model, method, f"{family}.{method}")
    with torch.inference_mode():
        first = example_input(model, operation)
        call(first)
        assert call.state == "traced"
        for n in (4, 1, 7):  # the traced batch size and others
            x = torch.cat([first] * 2)[:n]
            for got, expected in zip(outputs(call(x)), outputs(call.eager(x)), strict=True):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_an_untraceable_call_stays_eager_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("ae")
    model.scaled = lambda x: x * float(x.mean())  # type: ignore[attr-defined]  # a Python float
    call = TracedCall(model, "scaled", "ae.scaled")
    x, y = torch.ones(2, 3), torch.full((2, 3), 2.0)
    with caplog.at_level(logging.WARNING, "latentserve.tracing"), torch.inference_mode():
        assert torch.equal(call(x), x)
        assert torch.equal(call(y), y * 2)  # a trace would have fixed the factor at 1
    assert call.state == "eager"
    assert "ae.scaled stays eager" in caplog.text


def test_disabled_tracing_and_other_shapes_run_eagerly() -> None:
    model = tiny_model("ae")
    off = TracedCall(model, "reconstruct", "ae.reconstruct", enabled=False)
    on = TracedCall(model, "reconstruct", "ae.reconstruct")
    with torch.inference_mode():
        off(torch.rand(2, 1, 28, 28))
        on(torch.rand(2, 1, 28, 28))
        assert (off.state, on.state) == ("eager", "traced")
        with pytest.raises(ValueError, match=r"expected images of shape \[B, 1, 28, 28\]"):
            on(torch.rand(2, 1, 32, 32))  # the model's own check, not the trace's error


def test_the_service_serves_through_traces(client: TestClient) -> None:
    from .conftest import png

    reply = client.post("/v1/models/ae-t/reconstruct", files={"image": png()}, data={})
    assert reply.status_code == 200
    operations = client.app.state.latentserve.operations  # type: ignore[attr-defined]
    lm = client.app.state.latentserve.registry.get("ae-t")  # type: ignore[attr-defined]
    assert operations.traced(lm, "reconstruct").state == "traced"


def test_a_first_batch_of_one_still_traces_the_batched_path() -> None:
    model = tiny_model("ae")
    call = TracedCall(model, "reconstruct", "ae.reconstruct")
    with torch.inference_mode():
        x = torch.rand(1, 1, 28, 28)
        torch.testing.assert_close(call(x), model.reconstruct(x), rtol=1e-5, atol=1e-5)
    assert call.state == "traced"
    # traced on 16 rows: the decoder's last layer took its matrix-product path
    # (ImageConvTranspose2d), not torch's transposed convolution for small inputs
    graph = str(call._traced.inlined_graph)  # type: ignore[union-attr]
    assert "aten::matmul" in graph


def test_trace_at_start_traces_every_call_before_traffic(weights_dir: Path) -> None:
    client = start(Settings(weights_dir=weights_dir, trace_at_start=True))
    try:
        state = client.app.state.latentserve  # type: ignore[attr-defined]
        wanted = {
            ("ae-t", "reconstruct"), ("ae-t", "encode"), ("ae-t", "decode"), ("vae-t", "encode_distribution"),
            ("gan-t", "decode"), ("cvae-t", "reconstruct"), ("classifier-t", "classify"),
        }  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {
                (n, m): state.operations.traced(state.registry.get(n), m).state for n, m in wanted
            }
            if set(states.values()) == {"traced"}:
                break
            time.sleep(0.05)
        assert set(states.values()) == {"traced"}, states
    finally:
        client.__exit__(None, None, None)
