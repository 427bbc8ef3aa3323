"""The trainer's command line: dry runs of every family, bad flags, resume, atomic output."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import load_model
from training.cli import main
from training.families import trainable

from .test_data import make_folder

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("family", trainable())
def test_dry_run_writes_a_loadable_artifact(family: str, tmp_path: Path) -> None:
    out = tmp_path / family
    code = main(["train", "--family", family, "--dry-run", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "ckpt"), "--width", "4"])  # fmt: skip
    assert code == 0
    files = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "card.json",
        "samples.png",
        "loss_curve.png",
    } <= files
    model = load_model(out)
    assert model.family == family
    card = json.loads((out / "card.json").read_text())
    assert card["family"] == family and card["parameters"] == model.parameter_count()
    assert card["dataset"]["name"] == "synthetic" and card["training"]["epochs"] == 1
    assert "--dry-run" in card["training"]["command"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left"


def train_class_heads(tmp_path: Path, family: str, *flags: str) -> Path:
    """50 steps on the synthetic 4-class set, long enough for a class head to learn."""
    out = tmp_path / family
    code = main(["train", "--family", family, "--dataset", "synthetic", "--epochs", "2",
                 "--steps-per-epoch", "25", "--batch-size", "32", "--width", "8", "--lr", "1e-3",
                 *flags, "--out", str(out), "--checkpoint-dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 0
    return out


def test_cgan_trains_its_acgan_head(tmp_path: Path) -> None:
    """--aux-class-weight gives the critic a class head, and both players' class losses
    are trained and shown: the head learns the real classes within a few steps."""
    out = train_class_heads(tmp_path, "cgan", "--aux-class-weight", "1")
    model = load_model(out)
    assert model.config.aux_class_weight == 1.0 and model.critic.classify is not None
    history = json.loads((out / "history.json").read_text())
    first, last = history[0]["train"], history[-1]["train"]
    assert {"d_class", "g_class"} <= set(last)
    assert last["d_class"] < first["d_class"] < 1.5  # log(4 classes) = 1.39 at chance


def test_gan_class_guidance_trains_a_head_the_generator_never_takes(tmp_path: Path) -> None:
    """--class-guidance: the critic's class head learns the real classes, the generator's
    CatGAN terms are shown, and the model still generates from a class-free code."""
    out = train_class_heads(tmp_path, "gan", "--class-guidance", "1")
    model = load_model(out)
    assert model.config.class_guidance == 1.0 and model.config.label_classes == 4
    assert model.class_head is not None and model.latent_dim == 64
    history = json.loads((out / "history.json").read_text())
    first, last = history[0]["train"], history[-1]["train"]
    assert {"d_class", "g_class"} <= set(last)
    assert last["d_class"] < first["d_class"] < 1.5  # log(4 classes) = 1.39 at chance
    assert last["g_class"] < 0  # fakes the head calls confidently, of spread classes


def test_gan_mixture_prior_trains_with_the_projection_critic(tmp_path: Path) -> None:
    """--mixture-prior: the prior's weights become the training labels' frequencies, the
    projection critic's AC-GAN head learns the classes, and generate needs no class."""
    out = train_class_heads(tmp_path, "gan", "--mixture-prior", "--class-guidance", "1")
    model = load_model(out)
    assert model.config.mixture_prior and model.prior_weights is not None
    assert math.isclose(float(model.prior_weights.sum()), 1.0, rel_tol=1e-6)
    assert float(model.prior_weights.min()) > 0.15  # the synthetic set's 4 classes, near 1/4
    assert model.critic.classify is not None
    history = json.loads((out / "history.json").read_text())
    first, last = history[0]["train"], history[-1]["train"]
    assert last["d_class"] < first["d_class"] < 1.5  # log(4 classes) = 1.39 at chance
    assert model.sample(5, torch.Generator().manual_seed(0)).shape == (5, 1, 28, 28)


def test_rbm_sgd_with_weight_decay_keeps_the_weights_small(tmp_path: Path) -> None:
    """--optimizer sgd --weight-decay: SGD with momentum, the L2 cost on W only; the same run
    without the cost ends with larger weights, and the biases are not decayed."""

    def rbm(name: str, decay: str) -> torch.nn.Module:
        code = main(["train", "--family", "rbm", "--dataset", "synthetic", "--epochs", "1",
                     "--steps-per-epoch", "30", "--batch-size", "16", "--latent-dim", "16",
                     "--lr", "0.05", "--optimizer", "sgd", "--weight-decay", decay,
                     "--gibbs-steps", "5", "--ais-betas", "50", "--ais-runs", "4",
                     "--out", str(tmp_path / name), "--checkpoint-dir", str(tmp_path / f"c{name}")])  # fmt: skip
        assert code == 0
        return load_model(tmp_path / name)

    plain, decayed = rbm("plain", "0"), rbm("decayed", "2")
    assert float(decayed.weight.detach().norm()) < 0.7 * float(plain.weight.detach().norm())
    # the biases follow the same gradients from the same start: the cost is not theirs
    kept, free = (float(m.visible_bias.detach().abs().mean()) for m in (decayed, plain))
    assert kept == pytest.approx(free, rel=0.1)  # measured: 2.62 both; 1.27 if decayed too
    card = json.loads((tmp_path / "decayed" / "card.json").read_text())
    assert "--optimizer sgd --weight-decay 2" in card["training"]["command"]
    # the generated chains' start is fitted after training (--start-components, default 20)
    assert plain.config.start_components == 20 and plain.chain_start is not None
    assert float(plain.chain_start.log_weights.exp().sum()) == pytest.approx(1.0, abs=1e-5)


def test_cvae_consistency_weight_is_trained_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "cvae"
    code = main(["train", "--family", "cvae", "--dry-run", "--width", "4", "--consistency-weight", "3",
                 "--out", str(out), "--checkpoint-dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 0
    assert load_model(out).config.consistency_weight == 3.0
    train = json.loads((out / "history.json").read_text())[-1]["train"]
    assert train["consistency"] > 0 and train["loss"] > train["nll"]


def test_seed_makes_runs_repeatable(tmp_path: Path) -> None:
    for name in ("a", "b"):
        main(["train", "--family", "vae", "--dry-run", "--seed", "3", "--width", "4",
              "--out", str(tmp_path / name), "--checkpoint-dir", str(tmp_path / f"c{name}")])  # fmt: skip
    a, b = load_model(tmp_path / "a"), load_model(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU: cuda is no error")
def test_device_cuda_without_a_gpu_exits_2_naming_the_way_out(tmp_path: Path) -> None:
    result = run_cli("train", "--family", "ae", "--dry-run", "--device", "cuda",
                     "--out", str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m training: error: --device cuda, but torch {torch.__version__} has "
        f"{'a CPU-only build' if torch.version.cuda is None else 'no GPU visible'} here; "
        "use --device cpu (or auto)"
    ]
    assert not (tmp_path / "out").exists()


def test_device_auto_is_cuda_only_where_torch_sees_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.trainer import training_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto") == torch.device("cpu")
    assert training_device("cpu") == torch.device("cpu")
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on this node
    assert training_device("auto") == torch.device("cuda", 1)
    assert training_device("cpu") == torch.device("cpu")
    assert chosen == [torch.device("cuda", 1)]


def test_device_cpu_trains_what_the_default_trains(tmp_path: Path) -> None:
    """On a host without a GPU, --device auto (the default) and cpu are the same run."""
    for name, flags in (("auto", []), ("cpu", ["--device", "cpu"])):
        assert main(["train", "--family", "gan", "--dry-run", "--width", "4", *flags,
                     "--out", str(tmp_path / name), "--checkpoint-dir", str(tmp_path / f"c{name}")]) == 0  # fmt: skip
    a, b = load_model(tmp_path / "auto"), load_model(tmp_path / "cpu")
    if torch.cuda.is_available():
        pytest.skip("auto trained on the GPU here")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    card = json.loads((tmp_path / "cpu" / "card.json").read_text())
    assert "trained on" not in card["training"]["hardware"]


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    common = ["train", "--family", "ae", "--dataset", "synthetic", "--steps-per-epoch", "2",
              "--batch-size", "8", "--width", "4", "--checkpoint-dir", str(tmp_path / "ckpt")]  # fmt: skip
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--epochs", "2", "--resume", "--out", str(tmp_path / "two")]) == 0
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    straight = tmp_path / "straight"
    assert (
        main([*common[:-1], str(tmp_path / "ckpt2"), "--epochs", "2", "--out", str(straight)]) == 0
    )
    resumed, direct = load_model(tmp_path / "two"), load_model(straight)
    for pa, pb in zip(resumed.state_dict().values(), direct.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_folder_dataset_end_to_end(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", size=32)
    out = tmp_path / "folder-ae"
    assert main(["train", "--family", "ae", "--dataset", f"folder:{root}", "--epochs", "1",
                 "--batch-size", "4", "--width", "4", "--out", str(out),
                 "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0  # fmt: skip
    assert load_model(out).image_shape == (3, 32, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--family", "ae", "--epochs", "-1"], "--epochs: must be a positive integer, got -1"),
        (
            ["--family", "ae", "--latent-dim", "0"],
            "--latent-dim: must be a positive integer, got 0",
        ),
        (["--family", "nade"], "argument --family: invalid choice: 'nade'"),
        (["--family", "ae", "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--family", "ae", "--dataset", "folder:/no/such/dir"], "not a readable directory"),
        (["--family", "ae", "--image-shape", "2,28,28"], "need C of 1 or 3"),
        (["--family", "ae", "--lr", "nan"], "must be finite"),
        (["--family", "dae", "--noise-kinds", "blur"], "unknown noise kinds \\['blur'\\]"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli("train", *args, "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_mixed_folder_exits_2(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", mixed=True)
    result = run_cli(
        "train", "--family", "ae", "--dataset", f"folder:{root}", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "differ in size or mode" in result.stderr and "--image-shape" in result.stderr


def test_existing_out_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("train", "--family", "ae", "--dry-run", "--out", str(out))
    assert result.returncode == 2 and "pass --overwrite" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_init_from_fine_tunes_an_artifact(tmp_path: Path) -> None:
    common = ["train", "--family", "ae", "--dataset", "synthetic", "--steps-per-epoch", "2",
              "--batch-size", "8", "--epochs", "1"]  # fmt: skip
    base = tmp_path / "base"
    assert main([*common, "--width", "4", "--latent-dim", "8", "--out", str(base),
                 "--checkpoint-dir", str(tmp_path / "c0")]) == 0  # fmt: skip
    tuned = tmp_path / "tuned"
    assert main([*common, "--init-from", str(base), "--lr", "1e-3", "--out", str(tuned),
                 "--checkpoint-dir", str(tmp_path / "c1")]) == 0  # fmt: skip
    a, b = load_model(base), load_model(tuned)
    assert b.config == a.config  # width 4 / latent 8 came from the artifact, not the defaults
    moved = [not torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True)]  # fmt: skip
    assert any(moved), "fine-tuning changed nothing"
    card = json.loads((tuned / "card.json").read_text())
    assert card["training"]["init_from"] == str(base)
    # the card lists both stages: the base run, then this one; a third stage extends the list
    stages = card["training"]["stages"]
    assert [s["stage"] for s in stages] == [1, 2] and "--init-from" in stages[1]["command"]
    assert "--init-from" not in stages[0]["command"] and card["training"]["total_epochs"] == 2
    third = tmp_path / "third"
    assert main([*common, "--epochs", "2", "--init-from", str(tuned), "--out", str(third),
                 "--checkpoint-dir", str(tmp_path / "c2")]) == 0  # fmt: skip
    training = json.loads((third / "card.json").read_text())["training"]
    assert [s["epochs"] for s in training["stages"]] == [1, 1, 2]
    assert training["total_epochs"] == 4
    total = sum(s["wall_time_s"] for s in training["stages"])
    assert training["total_wall_time_s"] == round(total, 1)


def test_init_from_does_not_carry_a_stale_density(tmp_path: Path) -> None:
    """A fine-tuned ae moves its codes: the density of --init-from is not carried over."""
    common = ["train", "--family", "ae", "--dry-run", "--width", "4", "--latent-dim", "4"]
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    assert main([*common, "--prior-components", "2", "--out", str(base),
                 "--checkpoint-dir", str(tmp_path / "c0")]) == 0  # fmt: skip
    assert "generate" in load_model(base).operations
    assert main([*common, "--init-from", str(base), "--prior-components", "0", "--out", str(tuned),
                 "--checkpoint-dir", str(tmp_path / "c1")]) == 0  # fmt: skip
    model = load_model(tuned)
    assert model.latent_density is None and "generate" not in model.operations
    assert not (tuned / "latent_density.safetensors").exists()
    assert "generate" in load_model(base).operations  # the base artifact keeps its own


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--family", "ae", "--width", "8"],
            r"--width \(8\) changes the architecture of --init-from",
        ),
        (["--family", "vae"], "holds a 'ae' model, not 'vae'"),
    ],
)
def test_init_from_rejects_contradicting_flags(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    assert main(["train", "--family", "ae", "--dry-run", "--width", "4", "--out", str(base),
                 "--checkpoint-dir", str(tmp_path / "c0")]) == 0  # fmt: skip
    result = run_cli("train", *flags, "--dry-run", "--init-from", str(base),
                     "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert __import__("re").search(message, result.stderr), result.stderr
    assert not (tmp_path / "o").exists()


def test_init_from_may_change_how_a_model_trains(tmp_path: Path) -> None:
    base = tmp_path / "base"
    assert main(["train", "--family", "dae", "--dry-run", "--width", "4", "--out", str(base),
                 "--checkpoint-dir", str(tmp_path / "c0")]) == 0  # fmt: skip
    tuned = tmp_path / "tuned"
    assert main(["train", "--family", "dae", "--dry-run", "--init-from", str(base),
                 "--noise-probs", "0.6,0.2,0.2", "--out", str(tuned),
                 "--checkpoint-dir", str(tmp_path / "c1")]) == 0  # fmt: skip
    config = json.loads((tuned / "config.json").read_text())["config"]
    assert config["noise_probs"] == [0.6, 0.2, 0.2] and config["width"] == 4


def test_a_resumed_rbm_continues_its_chains_and_centring(tmp_path: Path) -> None:
    """The persistent chains and the centred step's running hidden mean are checkpointed:
    1 epoch then --resume for a second ends where 2 straight epochs end."""
    common = ["train", "--family", "rbm", "--dataset", "synthetic", "--steps-per-epoch", "10",
              "--batch-size", "16", "--latent-dim", "16", "--optimizer", "sgd", "--lr", "0.05",
              "--centering", "--chains", "24", "--ais-betas", "20", "--ais-runs", "2",
              "--start-components", "0"]  # fmt: skip
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main([*common, "--epochs", "1", "--out", str(tmp_path / "half"), *ckpt]) == 0
    resumed = tmp_path / "resumed"
    other = [*common, "--epochs", "2", "--resume", "--out", str(tmp_path / "x"), *ckpt]
    assert main([*other, "--chains", "32"]) == 2  # not the checkpoint's 24 chains: refused
    assert main([*common, "--epochs", "2", "--resume", "--out", str(resumed), *ckpt]) == 0
    straight = tmp_path / "straight"
    assert main([*common, "--epochs", "2", "--out", str(straight), "--checkpoint-dir",
                 str(tmp_path / "c2")]) == 0  # fmt: skip
    a, b = load_model(resumed), load_model(straight)
    assert torch.allclose(a.weight, b.weight, atol=1e-6)
    assert torch.allclose(a.hidden_bias, b.hidden_bias, atol=1e-6)
    first = load_model(tmp_path / "half")
    assert not torch.allclose(first.weight, b.weight, atol=1e-3)  # the second epoch did train
