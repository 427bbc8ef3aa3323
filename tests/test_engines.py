"""The engines (ONNX Runtime, TorchScript traces) give the eager results within their
tolerance for every served call of every family, anything they cannot take stays on the next
engine or eager, and LATENTSERVE_ENGINE picks the order."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from models import FAMILIES, load_model
from models.operations import INPUTS
from service.config import Settings
from service.engines import MARGIN, TOLERANCE, EngineCall
from service.tracing import assert_same

from .conftest import start
from .factories import tiny_model

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("engine", ["onnxruntime", "torchscript"])
@pytest.mark.parametrize(("family", "operation"), CASES)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_served_call_compiles_and_matches_eager(
    family: str, operation: str, shape: tuple[int, int, int], engine: str
) -> None:
    model = tiny_model(family, image_shape=shape, seed=3)
    method = model.operations[operation].method
    torch.manual_seed(0)
    call = EngineCall(model, method, f"{family}.{method}", engine)
    with torch.inference_mode():
        first = example_input(model, operation)
        call(first)
        assert call.state == engine, call.failures
        for n in (4, 1, 7):  # the compiled batch size and others
            x = torch.cat([first] * 2)[:n]
            for got, expected in zip(outputs(call(x)), outputs(call.eager(x)), strict=True):
                tol = TOLERANCE[engine]
                torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_an_untraceable_call_stays_eager_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_model("ae")
    model.scaled = lambda x: x * float(x.mean())  # type: ignore[attr-defined]  # a Python float
    call = EngineCall(model, "scaled", "ae.scaled", "auto")
    x, y = torch.ones(2, 3), torch.full((2, 3), 2.0)
    with caplog.at_level(logging.WARNING, "latentserve.engines"), torch.inference_mode():
        assert torch.equal(call(x), x)
        assert torch.equal(call(y), y * 2)  # a trace or a graph would have fixed the factor at 1
    assert call.state == "eager" and set(call.failures) == {"onnxruntime", "torchscript"}
    assert "ae.scaled stays eager" in caplog.text


@pytest.mark.parametrize(
    ("engine", "state"),
    [("torch", "eager"), ("torchscript", "torchscript"), ("onnxruntime", "onnxruntime"), ("auto", "onnxruntime")],
)  # fmt: skip
def test_the_engine_setting_and_other_shapes(engine: str, state: str) -> None:
    model = tiny_model("ae")
    call = EngineCall(model, "reconstruct", "ae.reconstruct", engine)
    with torch.inference_mode():
        call(torch.rand(2, 1, 28, 28))
        assert call.state == state
        with pytest.raises(ValueError, match=r"expected images of shape \[B, 1, 28, 28\]"):
            call(torch.rand(2, 1, 32, 32))  # the model's own check, not the engine's error


def test_the_comparison_that_admits_an_engine() -> None:
    """assert_same: equal within rtol and atol, NaN where both are, same shapes and dtypes;
    it says how many values missed and by how much."""
    e = torch.tensor([[1.0, -2.0, float("nan")], [1000.0, 0.0, 3.0]])
    assert_same((e * (1 + 5e-6) + 5e-6, e[:1]), (e, e[:1]), 1e-5)  # within tolerance
    with pytest.raises(AssertionError, match=r"output 0: 1 of 6 values differ by more than the tolerance 1e-05 \(largest difference 0.001\)"):  # fmt: skip
        assert_same(e + torch.tensor([[0.0, 0.0, 0.0], [0.0, 1e-3, 0.0]]), e, 1e-5)
    with pytest.raises(AssertionError, match="output 0: 1 of 6 values differ"):
        assert_same(e.nan_to_num(0.0), e, 1e-5)  # a number where eager gives NaN
    with pytest.raises(AssertionError, match=r"output 1: torch.float32 \[2, 3\] compiled, torch.float32 \[1, 3\] eager"):  # fmt: skip
        assert_same((e, e), (e, e[:1]), 1e-5)
    with pytest.raises(AssertionError, match="2 outputs compiled, 1 eager"):
        assert_same((e, e), e, 1e-5)
    with pytest.raises(AssertionError, match=r"torch\.float64 \[2, 3\] compiled"):
        assert_same(e.double(), e, 1e-5)


def test_onnx_that_fails_falls_back_to_a_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.engines

    def broken(*args: object) -> object:
        raise RuntimeError("exporter said no")

    monkeypatch.setattr(service.engines, "onnx_call", broken)
    call = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    with torch.inference_mode():
        call(torch.rand(2, 1, 28, 28))
    assert call.state == "torchscript" and "exporter said no" in call.failures["onnxruntime"]


def slowed(call: Any, seconds: float) -> Any:
    """``call`` with the same results, ``seconds`` later."""

    def slow(*inputs: torch.Tensor) -> Any:
        time.sleep(seconds)
        return call(*inputs)

    return slow


def test_auto_keeps_a_trace_that_runs_faster_than_onnx_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``auto`` times the engines whose outputs match on the compile example and keeps the
    faster: here ONNX Runtime is made 20 ms slower per call, so the eager call beats it, a
    trace is made and checked, and runs instead. ``onnxruntime`` keeps its order, untimed."""
    import service.engines

    real = service.engines.onnx_call
    monkeypatch.setattr(service.engines, "onnx_call", lambda *a: slowed(real(*a), 0.02))
    auto = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    first = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "onnxruntime")
    x = torch.rand(2, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(auto(x), auto.eager(x), rtol=1e-5, atol=1e-5)
        first(x)
    assert auto.state == "torchscript", (auto.timings, auto.failures)
    assert set(auto.timings) == {"eager", "onnxruntime", "torchscript"}
    assert auto.timings["torchscript"] < MARGIN * auto.timings["onnxruntime"]
    assert auto.timings["onnxruntime"] > 20_000 / EngineCall.EXAMPLE_ROWS  # us per image
    assert first.state == "onnxruntime" and not first.timings


def test_auto_makes_no_trace_where_the_eager_call_is_slower(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trace runs the eager call's kernels: where the eager call loses to ONNX Runtime
    (made 20 ms slower here), no trace is made (one would stay in TorchScript's registry)."""
    import service.engines

    def no_trace(*args: object) -> object:
        raise AssertionError("traced")

    monkeypatch.setattr(service.engines, "trace_call", no_trace)
    call = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    call.eager = slowed(call.eager, 0.02)
    with torch.inference_mode():
        call(torch.rand(2, 1, 28, 28))
    assert call.state == "onnxruntime" and not call.failures, call.failures
    assert set(call.timings) == {"eager", "onnxruntime"}
    assert call.timings["onnxruntime"] < call.timings["eager"]


def test_a_choice_made_in_another_process_is_built_untimed() -> None:
    """Preloading's child records each call's engine and timings; the supervisor builds that
    engine first, does not time again (so both keep the same), even where it would choose
    otherwise, and keeps the child's timings (the metrics show them)."""
    from service.engines import CHOICES, Choice, call_key

    x = torch.rand(2, 1, 28, 28)
    key = call_key("ae.reconstruct", (torch.rand(16, 1, 28, 28),))
    assert key == "ae.reconstruct ((1, 28, 28),)"
    timed = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    told = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    with CHOICES.recording() as recorded, torch.inference_mode():
        timed(x)
    assert recorded == {key: Choice(engine=timed.state, timings=timed.timings)}
    assert set(timed.timings) >= {"eager", "onnxruntime"}
    there = {"eager": 900.0, "onnxruntime": 1000.0, "torchscript": 800.0}
    choices = {key: Choice(engine="torchscript", timings=there)}
    with CHOICES.given(choices), torch.inference_mode():
        told(x)
    assert told.state == "torchscript" and told.timings == there


def test_timing_stops_after_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls that take longer than the timing budget are timed for one round each, not
    TIMING_ROUNDS (a pixelcnn likelihood of 16 rows takes ~0.13 s)."""
    import service.engines

    monkeypatch.setattr(service.engines, "TIMING_BUDGET_S", 0.0)
    runs = {"a": 0, "b": 0}

    def counted(name: str) -> Any:
        def call(*inputs: torch.Tensor) -> None:
            runs[name] += 1

        return call

    engine_call = EngineCall(tiny_model("ae"), "reconstruct", "ae.reconstruct", "auto")
    engine_call._faster(("a", counted("a")), ("b", counted("b")), (torch.rand(16, 3),))
    assert runs == {"a": 1, "b": 1} and set(engine_call.timings) == {"a", "b"}
    monkeypatch.setattr(service.engines, "TIMING_BUDGET_S", 60.0)
    engine_call._faster(("a", counted("a")), ("b", counted("b")), (torch.rand(16, 3),))
    assert runs == {"a": 1 + service.engines.TIMING_ROUNDS, "b": 1 + service.engines.TIMING_ROUNDS}


def test_the_service_serves_through_traces(client: TestClient) -> None:
    from .conftest import png

    reply = client.post("/v1/models/ae-t/reconstruct", files={"image": png()}, data={})
    assert reply.status_code == 200
    operations = client.app.state.latentserve.operations  # type: ignore[attr-defined]
    lm = client.app.state.latentserve.registry.get("ae-t")  # type: ignore[attr-defined]
    assert operations.compiled(lm, "reconstruct").state == "onnxruntime"


def test_metrics_say_which_engine_each_compiled_call_runs_on(client: TestClient) -> None:
    from .conftest import png

    reply = client.post("/v1/models/ae-t/reconstruct", files={"image": png()}, data={})
    assert reply.status_code == 200
    call = client.app.state.latentserve.operations.compiled(  # type: ignore[attr-defined]
        client.app.state.latentserve.registry.get("ae-t"),
        "reconstruct",  # type: ignore[attr-defined]
    )
    text = client.get("/metrics").text
    line = f'latentserve_call_engine{{call="reconstruct",engine="{call.state}",model="ae-t"}} 1.0'
    assert line in text
    for engine, us in call.timings.items():  # auto timed ONNX Runtime against eager (at least)
        name = f'latentserve_call_timing_microseconds{{call="reconstruct",engine="{engine}",model="ae-t"}}'
        value = float(next(x for x in text.splitlines() if x.startswith(name)).split()[-1])
        assert value == pytest.approx(us)
    assert {"eager", "onnxruntime"} <= set(call.timings)
    # exactly the calls compiled so far in this app: pending ones are absent
    operations = client.app.state.latentserve.operations  # type: ignore[attr-defined]
    listed = set(
        re.findall(r'latentserve_call_engine\{call="(\w+)",engine="\w+",model="([\w-]+)"', text)
    )
    assert listed == {(c, m) for m, c, _, _ in operations.engine_states()}


def test_a_first_batch_of_one_still_traces_the_batched_path() -> None:
    model = tiny_model("ae")
    call = EngineCall(model, "reconstruct", "ae.reconstruct", "torchscript")
    with torch.inference_mode():
        x = torch.rand(1, 1, 28, 28)
        torch.testing.assert_close(call(x), model.reconstruct(x), rtol=1e-5, atol=1e-5)
    assert call.state == "torchscript"
    # traced on 16 rows: the decoder's last layer took its matrix-product path
    # (ImageConvTranspose2d), not torch's transposed convolution for small inputs
    graph = str(call.compiled.inlined_graph)  # type: ignore[union-attr]
    assert "aten::matmul" in graph


def test_compile_at_start_compiles_every_call_before_ready(weights_dir: Path) -> None:
    client = start(Settings(weights_dir=weights_dir, trace_at_start=True))
    try:
        state = client.app.state.latentserve  # type: ignore[attr-defined]
        seen = set()
        deadline = time.monotonic() + 120  # a bound for a hung start, not a speed
        while (ready := client.get("/health/ready")).status_code != 200:
            seen.update(ready.json()["not_ready"].values())
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.01)
        wanted = {
            ("ae-t", "reconstruct"), ("ae-t", "encode"), ("ae-t", "decode"), ("vae-t", "encode_distribution"),
            ("gan-t", "decode"), ("cvae-t", "reconstruct"), ("classifier-t", "classify"),
            ("made-t", "log_likelihood"), ("made-t", "anomaly_features"),  # the anomaly's calls
            ("gan-t", "inversion_objective"),  # compiled by one search in the expensive lane
            ("pixelcnn-t", "anomaly_features"),  # its quarter means: a fixed pool, exportable
        }  # fmt: skip
        states = {
            (n, m): state.operations.compiled(state.registry.get(n), m).state for n, m in wanted
        }
        # compiled at ready, not some time after (auto: whichever engine ran faster)
        assert set(states.values()) <= {"onnxruntime", "torchscript"}, states
        assert seen <= {"loading", "compiling every model call (LATENTSERVE_TRACE_AT_START)"}
    finally:
        client.__exit__(None, None, None)


SHIPPED = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "weights").glob("*/model.safetensors"))  # fmt: skip


@pytest.mark.skipif(not SHIPPED, reason="the shipped weights are not in weights/ yet")
def test_every_shipped_call_runs_on_onnx_runtime_within_tolerance() -> None:
    """ONNX Runtime takes every served call of every shipped model, and gives the eager
    numbers within its tolerance at the compiled batch size and others (``auto`` may run a
    faster trace instead: test_auto_keeps_a_trace_that_runs_faster_than_onnx_runtime)."""
    states = {}
    for folder in SHIPPED:
        model = load_model(folder)
        for operation, op in model.operations.items():
            if not op.traceable:
                continue
            call = EngineCall(model, op.method, f"{folder.name}.{op.method}", "onnxruntime")
            with torch.inference_mode():
                first = example_input(model, operation)
                call(first)
                states[f"{folder.name}.{op.method}"] = call.state
                for n in (1, 5):
                    x = torch.cat([first] * 2)[:n]
                    for got, want in zip(outputs(call(x)), outputs(call.eager(x)), strict=True):
                        tol = TOLERANCE.get(call.state, 0.0)
                        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert len(states) > 20
    assert set(states.values()) == {"onnxruntime"}, {
        k: v for k, v in states.items() if v != "onnxruntime"
    }


@pytest.mark.skipif(not SHIPPED, reason="the shipped weights are not in weights/ yet")
def test_every_shipped_search_objective_runs_on_onnx_runtime_within_tolerance() -> None:
    """A shipped GAN's inversion objective (value and gradient, two inputs) compiles to ONNX
    Runtime and gives autograd's numbers within its tolerance at several batch sizes."""
    from models.inversion import autograd_objective

    checked = 0
    for folder in SHIPPED:
        model = load_model(folder)
        for op in model.operations.values():
            if op.objective is None:
                continue
            call = EngineCall(model, op.objective, f"{folder.name}.{op.objective}", "onnxruntime")
            g = torch.Generator().manual_seed(0)
            for n in (1, 5, 1):
                z = torch.randn(n, model.latent_dim, generator=g)
                target = torch.rand(n, *model.image_shape, generator=g)
                with torch.inference_mode():
                    got = call(z, target)
                want = autograd_objective(model)(z, target)
                assert call.state == "onnxruntime", call.failures
                for g_t, w_t in zip(got, want, strict=True):  # type: ignore[arg-type]
                    scale = float(w_t.abs().max())  # gradients reach ~100: relative to it
                    torch.testing.assert_close(g_t, w_t, rtol=1e-4, atol=1e-4 * scale)
            checked += 1
    assert checked >= 2  # gan-fashion and cgan-fashion


KEPT_BUFFER_PROBE = """
import os, sys
from service.memory import keep_batch_buffers, resident_bytes, return_freed_memory
kept = keep_batch_buffers() if sys.argv[1] == "keep" else None
before = resident_bytes()
block = b"x" * (24 << 20)  # a batch's buffer: 24 MB, every page written
del block
after_free = resident_bytes()
return_freed_memory()
print(kept, (after_free - before) >> 20, (resident_bytes() - before) >> 20)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
@pytest.mark.parametrize("mode", ["keep", "defaults", "environment"])
def test_keep_batch_buffers_keeps_a_freed_batch_buffer_until_trimmed(mode: str) -> None:
    """With keep_batch_buffers a freed 24 MB buffer stays in the heap for the next batch
    (glibc's defaults unmap it on free), and return_freed_memory still hands it back; a
    MALLOC_ threshold in the environment rules instead (service/memory.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if mode == "environment":
        env["MALLOC_TRIM_THRESHOLD_"] = str(1 << 20)
    argv = [sys.executable, "-c", KEPT_BUFFER_PROBE, "defaults" if mode == "defaults" else "keep"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60)
    kept, kept_after_free, kept_after_trim = out.stdout.split()
    assert kept == {"keep": "True", "defaults": "None", "environment": "False"}[mode]
    if mode == "keep":
        assert int(kept_after_free) >= 20, out.stdout
    else:
        assert int(kept_after_free) < 4, out.stdout
    assert int(kept_after_trim) < 4, out.stdout


def _rss_mb() -> float:
    from service.memory import resident_bytes

    resident = resident_bytes()
    assert resident is not None, "no /proc/self/statm"
    return resident / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
def test_return_freed_memory_hands_freed_blocks_back() -> None:
    """What compiling leaves: many small freed blocks below a live one, which free() alone
    keeps; return_freed_memory hands their pages back (service/memory.py)."""
    from service.memory import return_freed_memory

    blocks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # ~200 MB of small blocks
    pinned = bytes(3000)  # allocated above them: the heap's top stays in use
    grown = _rss_mb()
    del blocks
    assert return_freed_memory()
    assert _rss_mb() < grown - 100, "the freed blocks' pages were kept"
    assert pinned
