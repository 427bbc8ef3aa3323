"""A client generated from /openapi.json by openapi-python-client: no warnings, readable
function names, every module imports, and its calls work against a live server."""

from __future__ import annotations

import importlib
import io
import os
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from .conftest import png
from .factories import TINY

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest.fixture(scope="module")
def generated(live_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{live_url}/openapi.json").content)
    env = {**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [GENERATOR, "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(root / "ls_generated")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output  # the generator's own verdict on the spec
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("ls_generated")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.startswith("ls_generated")]:
            del sys.modules[name]


def test_every_generated_module_imports_with_readable_names(generated: Any) -> None:
    api = importlib.import_module("ls_generated.api")
    names = []
    for module in pkgutil.walk_packages(api.__path__, "ls_generated.api."):
        importlib.import_module(module.name)  # raises if the generator wrote a broken module
        names.append(module.name.rsplit(".", 1)[1])
    assert {"reconstruct", "generate", "encode", "classify", "v2_infer", "list_models"} <= set(names)  # fmt: skip
    assert not [n for n in names if "_post" in n or "v1_models" in n], names


def test_generated_calls_work(generated: Any, live_url: str) -> None:
    from ls_generated import Client  # type: ignore[import-not-found]
    from ls_generated.api.models import generate, list_models, reconstruct  # type: ignore[import-not-found]
    from ls_generated.api.open_inference_protocol import v2_infer  # type: ignore[import-not-found]
    from ls_generated.models import (  # type: ignore[import-not-found]
        GenerateGenerateParams,
        ReconstructEncodeParamsForm,
        V2InferRequest,
    )
    from ls_generated.types import File  # type: ignore[import-not-found]

    client = Client(base_url=live_url, raise_on_unexpected_status=True)
    listed = list_models.sync(client=client)
    assert "ae-t" in [m.name for m in listed.models]

    form = ReconstructEncodeParamsForm(image=File(payload=io.BytesIO(png()), file_name="in.png"))
    reply = reconstruct.sync("ae-t", client=client, body=form)
    assert reply.image.startswith("data:image/png;base64,") and reply.shape == [1, 28, 28]

    reply = generate.sync("gan-t", client=client, body=GenerateGenerateParams(n=3, seed=9))
    assert reply.seed == 9 and reply.count == 3 and len(reply.images) == 3
    raw = httpx.post(f"{live_url}/v1/models/gan-t/generate", json={"n": 3, "seed": 9}).json()
    assert reply.images == raw["images"]

    bad = generate.sync_detailed("ae-t", client=client, body=GenerateGenerateParams(n=1))
    assert bad.status_code == 400 and "does not support generate" in bad.parsed.detail

    k = int(TINY["ae"]["latent_dim"])
    request = V2InferRequest.from_dict(
        {"inputs": [{"name": "latent", "shape": [1, k], "datatype": "FP32", "data": [0.0] * k}]}
    )
    out = v2_infer.sync("ae-t.decode", client=client, body=request)
    image = np.array(out.outputs[0].data, np.float32)
    assert out.model_name == "ae-t.decode" and image.shape == (28 * 28,)
