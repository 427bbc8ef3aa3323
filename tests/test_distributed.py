"""torchrun + DistributedDataParallel: 2 real processes (gloo) on this machine, a few steps each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from models import load_model
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "synthetic", "--steps-per-epoch", "4", "--batch-size", "16",
          "--width", "4", "--val-size", "32"]  # fmt: skip


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "training",
            "train",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def max_difference(a: Path, b: Path) -> float:
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    assert list(sa) == list(sb)
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_two_processes_train_exactly_what_one_does(tmp_path: Path) -> None:
    """The global batch is split between the ranks and DDP averages the gradients, so a
    deterministic family ends where one process ends (up to float summation order)."""
    args = ["--family", "ae", *COMMON, "--epochs", "2"]
    two = torchrun(
        2, *args, "--out", str(tmp_path / "two"), "--checkpoint-dir", str(tmp_path / "c2")
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = tmp_path / "one"
    assert main(["train", *args, "--out", str(one), "--checkpoint-dir", str(tmp_path / "c1")]) == 0
    assert max_difference(one, tmp_path / "two") < 1e-5
    card = json.loads((tmp_path / "two" / "card.json").read_text())
    assert card["training"]["processes"] == 2
    # only rank 0 reports: one line per epoch, not two
    assert (two.stdout + two.stderr).count("epoch 1/2: val") == 1, two.stdout


def test_gan_trains_under_ddp_with_both_optimizers(tmp_path: Path) -> None:
    out = tmp_path / "gan"
    result = torchrun(2, "--family", "gan", *COMMON, "--epochs", "1", "--out", str(out),
                      "--checkpoint-dir", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Rank 1 draws other latents than rank 0, so the replicas stay equal only if DDP averaged
    # the gradients of both the critic's and the generator's optimizer; the trainer checks.
    assert "ddp: the 2 replicas agree" in result.stdout + result.stderr, result.stdout
    history = json.loads((out / "history.json").read_text())
    assert {"d_loss", "g_loss"} <= set(history[0]["train"])
    model = load_model(out)
    images = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, *model.image_shape) and torch.isfinite(images).all()


def test_resume_under_a_different_process_count(tmp_path: Path) -> None:
    args = ["--family", "ae", *COMMON, "--checkpoint-dir", str(tmp_path / "ckpt")]
    first = torchrun(2, *args, "--epochs", "1", "--out", str(tmp_path / "half"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (
        main(["train", *args, "--epochs", "2", "--resume", "--out", str(tmp_path / "resumed")]) == 0
    )
    straight = ["train", "--family", "ae", *COMMON, "--epochs", "2"]
    assert main([*straight, "--out", str(tmp_path / "straight"), "--checkpoint-dir", str(tmp_path / "c1")]) == 0  # fmt: skip
    assert max_difference(tmp_path / "resumed", tmp_path / "straight") < 1e-5


def test_batch_that_does_not_split_is_refused(tmp_path: Path) -> None:
    result = torchrun(2, "--family", "ae", *COMMON[:-4], "--batch-size", "15", "--epochs", "1",
                      "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode != 0
    assert "--batch-size 15 is the global batch and must divide evenly among the 2" in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_rbm_under_torchrun_is_refused_before_it_trains(tmp_path: Path) -> None:
    result = torchrun(2, "--family", "rbm", *COMMON, "--epochs", "1", "--latent-dim", "8",
                      "--out", str(tmp_path / "o"), "--checkpoint-dir", str(tmp_path / "c"))  # fmt: skip
    assert result.returncode != 0
    assert "the rbm family trains in one process" in result.stderr
    assert not (tmp_path / "o").exists() and "epoch 1/1: val" not in result.stdout
