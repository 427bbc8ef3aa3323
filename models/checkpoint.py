"""Save and load models as ``config.json`` + ``model.safetensors``; nothing is unpickled.

``config.json`` holds ``{"format": 1, "family": ..., "config": {...}}``; the config
rebuilds the module, and the safetensors file must then hold exactly its tensors, with
exactly its shapes and dtypes. Every failure raises ``CheckpointError`` naming the file.
A user's ONNX model (family ``onnx``) is a manifest and graphs instead: models/onnx_model.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .base import ConfigError, LatentModel, build_model
from .latent_density import read_latent_density, write_latent_density
from .onnx_model import FAMILY as ONNX_FAMILY
from .onnx_model import GraphError, load_onnx_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; refuse anything absurd


class CheckpointError(ValueError):
    """A checkpoint could not be read; the message names the file and the problem."""


def save_model(model: LatentModel, path: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path`` (and
    ``latent_density.safetensors`` for an autoencoder with a fitted latent density).

    Both files are written to temporary names and renamed, so a crash never leaves a
    half-written file under the final name.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT_VERSION, "family": model.family, "config": model.config.to_dict()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    _atomic_write(folder / CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    if model.latent_density is not None:  # an autoencoder that generates: its fitted density
        write_latent_density(folder, model.latent_density)
    return folder


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp (and safetensors' writer) make the file private (0600): give it what open()
        # would, so that a server running as another user can read the weights
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process's umask. Read from
    ``/proc/self/status`` (Linux), since setting the umask to learn it would race other
    threads; 0644 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def read_config(path: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """Read ``config.json`` in folder ``path`` -> (family, config dict)."""
    file = Path(path) / CONFIG_FILE
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{file}: larger than {MAX_CONFIG_BYTES} bytes")
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not {"format", "family", "config"} <= set(data):
        raise CheckpointError(f"{file}: expected an object with format, family and config")
    if data["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format {data['format']!r} is not supported (expected {FORMAT_VERSION})"
        )
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{file}: config must be an object")
    return str(data["family"]), data["config"]


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", threads: int = 1
) -> LatentModel:
    """Rebuild the model saved in folder ``path``, load its weights, return it in eval mode
    with its conv weights in channels-last layout. A folder whose family is ``onnx`` holds
    a user's ONNX graphs instead (models/onnx_model.py), opened with ``threads`` threads."""
    folder = Path(path)
    family, config = read_config(folder)
    if family == ONNX_FAMILY:
        try:
            return load_onnx_model(folder, config, threads)
        except GraphError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        model = build_model(family, config)
    except ConfigError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {exc}") from None
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None
    check_state(weights, model.state_dict(), state)
    model.load_state_dict(state, strict=True)
    if model.fits_latent_density:
        try:
            density = read_latent_density(folder, model.latent_dim)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        if density is not None:
            model.attach_latent_density(density)
    # Conv weights in channels-last layout: oneDNN's kernels for it run these small conv
    # nets about 20% faster on the CPU at batch 1 and 32-64, and the same at batch 8
    # (bench/README.md); results agree with the default layout to ~1e-6.
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    return model.eval()


def check_state(
    file: Path, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> None:
    """Raise CheckpointError unless ``found`` has exactly the names, shapes and dtypes expected."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{file}: tensor names do not match the config; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name, want in expected.items():
        got = found[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(
                f"{file}: tensor {name!r} is {got.dtype} {list(got.shape)}, "
                f"the config needs {want.dtype} {list(want.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{file}: tensor {name!r} contains NaN or infinity")
