"""One process vs torchrun with two: wall time and final loss of the same training job.

    python -m bench.ddp                    # ae on Fashion-MNIST, 300 steps of 64 images
    python -m bench.ddp --family vae --steps 200

Every run trains the same global batches (``--batch-size`` is split between the ranks), so the
losses should agree and only the time may differ. Writes bench/results/ddp.md and ddp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run(label: str, launcher: list[str], train_args: list[str], out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            *launcher,
            "-m",
            "training",
            "train",
            *train_args,
            "--out",
            str(out),
            "--checkpoint-dir",
            str(out.with_name(out.name + "-ckpt")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"bench.ddp: {label} failed:\n{proc.stderr[-3000:]}")
    card = json.loads((out / "card.json").read_text())
    last = json.loads((out / "history.json").read_text())[-1]
    return {
        "label": label,
        "wall_s": round(wall, 1),
        "train_s": card["training"]["wall_time_s"],
        "images_per_s": card["training"]["images_per_s"],
        "final_train_loss": last["train"].get("loss"),
        "val": last["val"],
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ddp", description=__doc__)
    p.add_argument("--family", default="ae")
    p.add_argument("--steps", type=int, default=300, help="training steps (one epoch)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--dataset", default="fashion-mnist")
    args = p.parse_args()
    common = ["--family", args.family, "--dataset", args.dataset, "--epochs", "1",
              "--steps-per-epoch", str(args.steps), "--batch-size", str(args.batch_size)]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    tmp = Path(tempfile.mkdtemp())
    runs = [
        run("1 process, 1 thread", [sys.executable], [*common, "--threads", "1"], tmp / "p1t1"),
        run("1 process, 2 threads", [sys.executable], [*common, "--threads", "2"], tmp / "p1t2"),
        run("torchrun, 2 processes x 1 thread", [*torchrun, "--nproc_per_node=2"], common, tmp / "p2"),
    ]  # fmt: skip
    base = runs[0]["train_s"]
    lines = [
        f"# torchrun: 1 vs 2 processes ({args.family}, {args.steps} steps of {args.batch_size} "
        f"images, {os.cpu_count()} cores)",
        "",
        f"`python -m bench.ddp --family {args.family} --steps {args.steps}`",
        "",
        "| run | training s | speed-up | images/s | wall s (with start-up) | final train loss | val |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        val = ", ".join(f"{k} {v:.4g}" for k, v in r["val"].items())
        lines.append(
            f"| {r['label']} | {r['train_s']:.1f} | {base / r['train_s']:.2f}x | "
            f"{r['images_per_s']:.0f} | {r['wall_s']:.1f} | {r['final_train_loss']:.4f} | {val} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddp.md").write_text(report)
    (RESULTS / "ddp.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
