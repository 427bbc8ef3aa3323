"""``python -m bench.gpu``: the prepared check for a machine with a GPU. One script, one run,
its output written to ``bench/results/gpu.md``:

1. what the machine offers: torch's CUDA device, ONNX Runtime's execution providers;
2. the forward cost per image of ae-fashion's reconstruct and gan-fashion's decode at batch 1
   and 64: eager PyTorch on the CPU and on CUDA, ONNX Runtime with the providers
   ``LATENTSERVE_DEVICE=auto`` picks (CUDA when onnxruntime-gpu is installed);
3. the service (``python -m service``, ``LATENTSERVE_DEVICE=auto``, 2 workers) on the shipped
   weights: reconstruct from 64 concurrent clients for ``--seconds`` (an asyncio httpx load
   generator, so no wrk is needed), req/s, p50/p99, errors;
4. the trainer with ``--device auto``: a ``--dry-run`` of every family (does each recipe run
   where the GPU is?), then a short run of the ae on Fashion-MNIST (synthetic data where the
   Debian package is missing) on the CPU and with ``--device auto``, images/s of each.

It needs no network. It has not run on a GPU yet: no session that wrote it had one lent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from models import load_model
from service.onnx_engine import onnx_call, providers_for

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "gpu.md"


def timed(fn, x: torch.Tensor, rounds: int = 20) -> float:
    """us per image, best of ``rounds`` calls after two warm ones."""
    with torch.inference_mode():
        fn(x)
        fn(x)
        best = float("inf")
        for _ in range(rounds):
            if x.is_cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - started)
    return best / len(x) * 1e6


def forward_costs(lines: list[str]) -> None:
    lines += [
        "| call | batch | eager CPU | eager CUDA | ONNX Runtime (auto) |",
        "|---|---|---|---|---|",
    ]
    for name, method in (("ae-fashion", "reconstruct"), ("gan-fashion", "decode")):
        model = load_model(ROOT / "weights" / name)
        for batch in (1, 64):
            x = torch.rand(batch, *model.image_shape) if method == "reconstruct" else torch.randn(batch, model.latent_dim)  # fmt: skip
            cpu = timed(getattr(model, method), x)
            cuda = "-"
            if torch.cuda.is_available():
                on_gpu = load_model(ROOT / "weights" / name, device="cuda")
                cuda = f"{timed(getattr(on_gpu, method), x.cuda()):,.1f}"
            ort = timed(onnx_call(model, method, (x.repeat(max(1, 16 // batch), *[1] * (x.ndim - 1))[:16],), 1, "auto"), x)  # fmt: skip
            lines.append(f"| {name}.{method} | {batch} | {cpu:,.1f} | {cuda} | {ort:,.1f} |")


async def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=clients)
    ) as client:

        async def one() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                started = time.perf_counter()
                r = await client.post(url, content=body, headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - started)
                errors += r.status_code != 200

        await asyncio.gather(*(one() for _ in range(clients)))
    return len(latencies), errors, latencies


def serve_point(lines: list[str], seconds: float) -> None:
    import io

    import numpy as np
    from PIL import Image

    pixels = np.zeros((28, 28), np.uint8)
    pixels[7:21, 7:21] = 200  # a bright square, like the tests' image
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body = buffer.getvalue()
    port = 8765
    env = {**os.environ, "LATENTSERVE_PORT": str(port), "LATENTSERVE_WORKERS": "2",
           "LATENTSERVE_DEVICE": "auto", "LATENTSERVE_TRACE_AT_START": "true", "PYTHONPATH": str(ROOT)}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1/models/ae-fashion/reconstruct"
        asyncio.run(load(url, body, 64, 3))  # warm-up, not recorded
        n, errors, lat = asyncio.run(load(url, body, 64, seconds))
        q = statistics.quantiles(lat, n=100)
        lines += ["", f"Service, ae-fashion reconstruct, 64 clients, {seconds:g} s: **{n / seconds:,.0f} req/s**, "
                  f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, errors {errors}"]  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)


def train_run(out: Path, *flags: str) -> tuple[bool, float, str]:
    """One ``python -m training train`` in a subprocess: (ok, seconds, last line of output)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training", "train", *flags, "--out", str(out), "--overwrite",
         "--checkpoint-dir", str(out) + "-ckpt"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    wrote = [line for line in lines if line.startswith("wrote ")]
    said = (wrote or [line for line in lines if line.strip() and "it/s" not in line] or ["-"])[-1]
    return done.returncode == 0, time.perf_counter() - started, said[-160:]


def training_runs(lines: list[str], steps: int) -> None:
    import json
    import tempfile

    from training.data import FASHION_MNIST_DIR
    from training.families import trainable

    lines += ["", "Trainer, `--dry-run --device auto` of every family:", "",
              "| family | ok | seconds | last line |", "|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for family in trainable():
            ok, seconds, said = train_run(Path(tmp) / family, "--family", family, "--dry-run", "--device", "auto")  # fmt: skip
            lines.append(f"| {family} | {'yes' if ok else '**no**'} | {seconds:.1f} | {said.replace('|', '/')} |")  # fmt: skip
        data = "fashion-mnist" if FASHION_MNIST_DIR.is_dir() else "synthetic"
        lines += ["", f"Trainer, ae on {data}, 1 epoch of {steps} steps of 64 images:", "",
                  "| --device | ok | images/s | card's hardware |", "|---|---|---|---|"]  # fmt: skip
        for device in ("cpu", "auto"):
            out = Path(tmp) / f"ae-{device}"
            ok, _, said = train_run(out, "--family", "ae", "--dataset", data, "--epochs", "1",
                                    "--steps-per-epoch", str(steps), "--batch-size", "64",
                                    "--device", device)  # fmt: skip
            if not ok:
                lines.append(f"| {device} | **no** | - | {said} |")
                continue
            training = json.loads((out / "card.json").read_text())["training"]
            lines.append(f"| {device} | yes | {training['images_per_s']:,.0f} | {training['hardware']} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load point")
    parser.add_argument(
        "--train-steps", type=int, default=300, help="steps of the short training run"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        "# GPU check (`python -m bench.gpu`)", "",
        f"- host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; CUDA device: {device}",
        f"- torch {torch.__version__}; ONNX Runtime providers for LATENTSERVE_DEVICE=auto: {providers_for('auto')}",
        "", "Forward cost per image (us):", "",
    ]  # fmt: skip
    forward_costs(lines)
    serve_point(lines, args.seconds)
    training_runs(lines, args.train_steps)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
