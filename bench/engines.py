"""``python -m bench.engines``: the forward cost per image of every shipped model's served
calls for each engine (eager PyTorch, a TorchScript trace, ONNX Runtime), at batch 1 and 64,
in-process, one thread (the service's default ``LATENTSERVE_TORCH_THREADS``). Each engine's
call is built and checked exactly as the service does it (service/engines.py); a call an
engine cannot take shows as "-" with the reason below the table. A second table has the
searches' declared objectives (a GAN inversion's error and gradient, written out by
models/adjoint.py) beside autograd through the model's decode, which they replace. The last
column says which engine ``LATENTSERVE_ENGINE=auto`` runs the call on (the faster that
matches, timed on the 16-row compile example). Writes ``bench/results/engines.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import load_model
from models.inversion import autograd_objective
from models.operations import INPUTS
from service.engines import EngineCall
from service.memory import keep_batch_buffers

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "engines.md"
ENGINES = ("torch", "torchscript", "onnxruntime")


def example(model, operation: str, n: int) -> torch.Tensor:
    op = model.operations[operation]
    g = torch.Generator().manual_seed(0)
    if op.prepare is not None:
        return getattr(model, op.prepare)(n, g, 1.0, None)
    if INPUTS.get(operation) == "latents":
        return torch.randn(n, model.latent_dim, generator=g)
    return torch.rand(n, *model.image_shape, generator=g)


def per_image_us(call: Callable[..., Any], x: torch.Tensor | tuple[torch.Tensor, ...],
                 seconds: float) -> float:  # fmt: skip
    """Best of 5 rounds of repeated calls on ``x`` (one input, or a tuple of several), each
    round about seconds / 5."""
    inputs = x if isinstance(x, tuple) else (x,)
    with torch.inference_mode():
        call(*inputs)  # compile (first call) and warm
        call(*inputs)
        best = float("inf")
        for _ in range(5):
            n, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds / 5 or n < 2:
                call(*inputs)
                n += 1
            best = min(best, elapsed / n)
    return best / len(inputs[0]) * 1e6


def engine_cells(
    model, method: str, label: str, x: torch.Tensor | tuple[torch.Tensor, ...], seconds: float,
    notes: list[str],
) -> list[str]:  # fmt: skip
    """Microseconds per image of ``model.<method>`` on ``x`` for each engine, or "-" where an
    engine could not take the call (and why, appended to ``notes``)."""
    cells = []
    for engine in ENGINES:
        call = EngineCall(model, method, label, engine)
        us = per_image_us(call, x, seconds)
        ran = call.state if engine != "torch" else "eager"
        if engine != "torch" and ran != engine:
            cells.append("-")
            notes.append(f"{label} {engine}: {call.failures.get(engine, ran)}")
        else:
            cells.append(f"{us:,.0f}")
    return cells


def flops_per_image(model, method: str, x: torch.Tensor | tuple[torch.Tensor, ...]) -> float:
    """Floating-point operations of one image's ``model.<method>``: twice the multiply-adds
    of its convolutions and matrix products, as torch's FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs = x if isinstance(x, tuple) else (x,)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        getattr(model, method)(*inputs)
    return counter.get_total_flops() / len(inputs[0])


def matmul_gflops(seconds: float = 1.0) -> float:
    """This core's rate on a large float32 matrix product (1024 x 1024 x 1024, one thread,
    best of repeated runs): the ceiling a forward pass of convolutions can approach."""
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    best, started = float("inf"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def auto_choice(model, method: str, label: str, x: torch.Tensor | tuple[torch.Tensor, ...]) -> str:
    """Which engine ``LATENTSERVE_ENGINE=auto`` runs the call on (timed on 16 rows at compile,
    service/engines.py)."""
    call = EngineCall(model, method, label, "auto")
    with torch.inference_mode():
        call(*(x if isinstance(x, tuple) else (x,)))
    return {"onnxruntime": "ORT", "torchscript": "trace"}.get(call.state, call.state)


def objective_rows(model, name: str, seconds: float, notes: list[str]) -> list[str]:
    """A row per declared search objective: autograd through decode, then each engine."""
    rows = []
    for operation, op in sorted(model.operations.items()):
        if op.objective is None:
            continue
        cells, auto = [], ""
        for batch in (1, 64):
            g = torch.Generator().manual_seed(0)
            inputs = (torch.randn(batch, model.latent_dim, generator=g),
                      torch.rand(batch, *model.image_shape, generator=g))  # fmt: skip
            cells.append(f"{per_image_us(autograd_objective(model), inputs, seconds):,.0f}")
            cells += engine_cells(model, op.objective, f"{name}.{op.objective}", inputs, seconds,
                                  notes if batch == 1 else [])  # fmt: skip
            if batch == 1:
                auto = auto_choice(model, op.objective, f"{name}.{op.objective}", inputs)
        cells.append(auto)
        rows.append(f"| {name} | {operation} ({op.objective}) | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--seconds", type=float, default=1.0, help="per engine, batch and call")
    parser.add_argument("--models", nargs="*", help="model names (default: every shipped one)")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    keep_batch_buffers()  # as a serving worker does (service/memory.py)
    folders = sorted(p.parent for p in args.weights.glob("*/config.json"))
    if args.models:
        folders = [f for f in folders if f.name in args.models]
    rows: list[str] = []
    objectives: list[str] = []
    notes: list[str] = []
    for folder in folders:
        model = load_model(folder)
        objectives += objective_rows(model, folder.name, args.seconds, notes)
        for operation, op in sorted(model.operations.items()):
            if not op.traceable:
                continue
            cells = []
            for batch in (1, 64):
                x = example(model, operation, batch)
                cells += engine_cells(model, op.method, f"{folder.name}.{op.method}", x,
                                      args.seconds, notes if batch == 1 else [])  # fmt: skip
            x = example(model, operation, EngineCall.EXAMPLE_ROWS)
            cells.append(auto_choice(model, op.method, f"{folder.name}.{op.method}", x))
            flops = flops_per_image(model, op.method, x)
            fastest_b64 = min(float(c.replace(",", "")) for c in cells[3:6] if c != "-")
            cells += [f"{flops / 1e6:,.2f}", f"{flops / fastest_b64 / 1e3:,.0f}"]
            rows.append(
                f"| {folder.name} | {operation} ({op.method}) | " + " | ".join(cells) + " |"
            )
            print(rows[-1], flush=True)
    header = ("| model | call | eager b1 | trace b1 | ORT b1 | eager b64 | trace b64 | ORT b64 "
              "| auto runs | MFLOP | GFLOP/s b64 |\n|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    ceiling = matmul_gflops()
    text = (
        "# Forward cost per image (us), one thread\n\n"
        f"`python -m bench.engines` (best of 5 rounds of ~{args.seconds / 5:.2f} s each, "
        f"torch {torch.__version__}). MFLOP: per image, twice the multiply-adds of the "
        "call's convolutions and matrix products (torch's FlopCounterMode); GFLOP/s b64: "
        "at the fastest engine's batch-64 cost. This core multiplies 1024 x 1024 float32 "
        f"matrices at **{ceiling:,.0f} GFLOP/s** (one thread): a call at a large share of "
        "that cannot run much faster without doing less arithmetic.\n\n"
        + header
        + "\n"
        + "\n".join(rows)
        + "\n"
    )
    if objectives:
        text += (
            "\n## Search objectives: error and gradient per image (us), one thread\n\n"
            "What a search evaluates at every step (models/adjoint.py), against autograd "
            "through the model's decode.\n\n"
            "| model | search | autograd b1 | eager b1 | trace b1 | ORT b1 | autograd b64 | "
            "eager b64 | trace b64 | ORT b64 | auto runs |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(objectives) + "\n"
        )  # fmt: skip
    if notes:
        text += "\nNot run by an engine:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
