"""The Open Inference Protocol (KServe V2) against a live server: Triton's own client
(tritonclient.http) with binary and JSON tensors, the same numbers as REST, every v2 model
answering from its metadata, and protocol violations answered 400 with {"error": ...}."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .conftest import png
from .factories import TINY

K = int(TINY["ae"]["latent_dim"])  # ae-t's latent size


@pytest.fixture(scope="module")
def tc(live_url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(live_url.removeprefix("http://"), network_timeout=120)


def tensor(name: str, array: np.ndarray, binary: bool = True) -> triton.InferInput:
    datatype = {"float32": "FP32", "uint8": "UINT8", "int64": "INT64"}[str(array.dtype)]
    t = triton.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def rest(live_url: str, path: str, **kwargs: Any) -> dict[str, Any]:
    r = httpx.post(f"{live_url}/v1/models/{path}", timeout=60, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def test_server_and_model_metadata(tc: triton.InferenceServerClient) -> None:
    server = tc.get_server_metadata()
    assert server["name"] == "latentserve" and "binary_tensor_data" in server["extensions"]
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_model_metadata("vae-t.decode")
    k = meta["inputs"][0]["shape"][1]
    assert meta["inputs"][0] | {"parameters": None} == {"name": "latent", "datatype": "FP32", "shape": [-1, k], "parameters": None}  # fmt: skip
    assert meta["outputs"][0]["shape"] == [-1, 1, 28, 28] and meta["versions"] == ["1"]
    assert tc.get_model_metadata("vae-t.decode", model_version="1")["name"] == "vae-t.decode"
    generate = tc.get_model_metadata("cvae-t.generate")
    assert [t["name"] for t in generate["inputs"]] == ["n", "seed", "temperature", "class"]
    assert set(generate["parameters"]["accepts"]) == {
        "n",
        "seed",
        "temperature",
        "class",
        "sampler",
        "steps",
    }
    assert set(tc.get_model_metadata("vae-t.likelihood")["parameters"]["accepts"]) == {
        "invert",
        "samples",
    }
    assert tc.is_model_ready("ae-t.reconstruct") and not tc.is_model_ready("ae-t.generate")
    assert not tc.is_model_ready("vae-t.decode", model_version="2")
    index = {m["name"] for m in tc.get_model_repository_index()}
    assert {"vae-t.decode", "gan-t.encode", "classifier-t.classify", "pixelcnn-t.likelihood"} <= index  # fmt: skip


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decode_matches_rest(tc: triton.InferenceServerClient, live_url: str, binary: bool) -> None:
    k = tc.get_model_metadata("vae-t.decode")["inputs"][0]["shape"][1]
    z = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    out = triton.InferRequestedOutput("image", binary_data=binary)
    reply = tc.infer("vae-t.decode", [tensor("latent", z, binary)], outputs=[out], request_id="r-1")
    images = reply.as_numpy("image")
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.float32
    assert reply.get_response()["id"] == "r-1"
    expected = np.array(rest(live_url, "vae-t/decode?format=array", json={"latents": z.tolist()})["images"])  # fmt: skip
    np.testing.assert_allclose(images, expected, atol=1e-5)
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_reconstruct_matches_rest(tc: triton.InferenceServerClient, live_url: str, datatype: str) -> None:  # fmt: skip
    pixels = np.zeros((1, 1, 28, 28), np.uint8)
    pixels[..., 7:21, 7:21] = 200
    x = pixels if datatype == "UINT8" else (pixels / 255).astype(np.float32)
    reply = tc.infer("ae-t.reconstruct", [tensor("image", x)])
    body = png()  # the same picture as a PNG: a 200-grey square on black
    expected = rest(live_url, "ae-t/reconstruct?format=array", content=body,
                    headers={"Content-Type": "image/png"})["image"]  # fmt: skip
    np.testing.assert_allclose(reply.as_numpy("image")[0], np.array(expected), atol=1e-5)


def test_encode_gives_the_posterior(tc: triton.InferenceServerClient, live_url: str) -> None:
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    reply = tc.infer("vae-t.encode", [tensor("image", x)])
    names = {o["name"] for o in reply.get_response()["outputs"]}
    assert names == {"latent", "mean", "log_var"}
    np.testing.assert_allclose(reply.as_numpy("latent"), reply.as_numpy("mean"))
    alone = tc.infer("vae-t.encode", [tensor("image", x[1:])])  # a row does not depend on others
    np.testing.assert_allclose(alone.as_numpy("mean")[0], reply.as_numpy("mean")[1], atol=1e-5)


def test_generate_with_inputs_or_parameters_matches_rest(
    tc: triton.InferenceServerClient, live_url: str
) -> None:
    as_inputs = tc.infer("cvae-t.generate", [tensor("n", np.array([4])), tensor("seed", np.array([7]))],
                         parameters={"class": 2})  # fmt: skip
    as_params = tc.infer("cvae-t.generate", [tensor("n", np.array([4]))], parameters={"seed": 7, "class": 2})  # fmt: skip
    images = as_inputs.as_numpy("image")
    assert images.shape == (4, 1, 28, 28) and as_inputs.as_numpy("seed").tolist() == [7]
    np.testing.assert_array_equal(images, as_params.as_numpy("image"))
    expected = rest(live_url, "cvae-t/generate?format=array", json={"n": 4, "seed": 7, "class": 2})
    np.testing.assert_allclose(images, np.array(expected["images"]), atol=1e-5)


def test_every_v2_model_answers_from_its_metadata(live_url: str) -> None:
    """Build each v2 model's inputs from its metadata alone; the reply has its outputs."""
    rng = np.random.default_rng(2)
    index = httpx.post(f"{live_url}/v2/repository/index").json()
    assert len(index) > 30
    for entry in index:
        name = entry["name"]
        meta = httpx.get(f"{live_url}/v2/models/{name}").json()
        inputs, operation = [], name.rsplit(".", 1)[1]
        for t in meta["inputs"]:
            needed = not t["parameters"].get("optional") or (
                operation in ("interpolate", "arithmetic") and t["name"].startswith("latent_")
            )
            if not needed:
                continue
            shape = [2 if d == -1 else d for d in t["shape"]]
            data = rng.random(shape).astype(np.float32)
            inputs.append({"name": t["name"], "shape": shape, "datatype": "FP32", "data": data.ravel().tolist()})  # fmt: skip
        params = {"n": 3} if operation == "generate" else {}
        r = httpx.post(f"{live_url}/v2/models/{name}/infer", timeout=120,
                       json={"inputs": inputs, "parameters": params})  # fmt: skip
        assert r.status_code == 200, (name, r.text)
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert set(outputs) == {t["name"] for t in meta["outputs"]}, name
        for t in meta["outputs"]:
            got = outputs[t["name"]]
            assert got["datatype"] == t["datatype"], name
            assert all(d == -1 or d == g for d, g in zip(t["shape"], got["shape"], strict=True)), (
                name
            )
            assert len(got["data"]) == np.prod(got["shape"]), name


def infer_raw(live_url: str, model: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{live_url}/v2/models/{model}/infer", content=body, headers=headers, timeout=60)  # fmt: skip


def request(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


LATENT = {"name": "latent", "shape": [1, K], "datatype": "FP32", "data": [0.0] * K}


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (b"{not json", {}, "invalid JSON"),
        (b"[]", {}, "JSON object"),
        (request(), {}, "input 'latent': required"),
        (b'{"inputs": {}}', {}, "must be a list of tensors"),
        (request({**LATENT, "datatype": "FP64"}), {}, "datatype FP64; it takes FP32"),
        (request({**LATENT, "datatype": "STRING"}), {}, "is not served"),
        (request({**LATENT, "datatype": ["FP32"]}), {}, "is not served"),
        (request({**LATENT, "datatype": None}), {}, "is not served"),
        (request({**LATENT, "parameters": [1]}), {}, "must be a JSON object"),
        (request({**LATENT, "shape": "1,4"}), {}, "shape must be a list"),
        (request({**LATENT, "name": 7}), {}, "name: must be a non-empty string"),
        (request(LATENT, outputs=[{"name": ["image"]}]), {}, "must be an object with a name"),
        (request(LATENT, parameters={"binary_data_output": "yes"}), {}, "true or false"),
        (request(LATENT, id=5), {}, "id: must be a string"),
        (request({**LATENT, "shape": [1, K + 1], "data": [0.0] * (K + 1)}), {}, "does not fit"),
        (request({**LATENT, "data": [0.0] * (K - 1)}), {}, f"needs {K} values, data has {K - 1}"),
        (request({**LATENT, "data": ["a"] * K}), {}, "not FP32"),
        (request({**LATENT, "name": "z"}), {}, "has no inputs ['z']"),
        (request(LATENT, LATENT), {}, "given twice"),
        (request({**LATENT, "shape": [100000, K], "data": []}), {}, "more than a body"),
        (request({**LATENT, "shape": [257, K], "data": [0.0] * 257 * K}), {}, "between 1 and 256 rows"),
        (request(LATENT, outputs=[{"name": "nope"}]), {}, "has no outputs ['nope']"),
        (request(LATENT, outputs=[{"name": "image", "parameters": {"classification": 3}}]), {}, "classification"),
        (request(LATENT, parameters={"seed": 3}), {}, "unknown field"),
        (request(LATENT, parameters={"timeout": -5}), {}, "microseconds"),
        (request(LATENT, bogus=1), {}, "unknown fields ['bogus']"),
        (request({**LATENT, "data": [1e30] * K}), {}, "magnitude"),
        (request({**LATENT, "data": [1] * K, "datatype": "INT32"}), {}, "datatype INT32"),
        (request({"name": "latent", "shape": [1, K], "datatype": "FP32", "parameters": {"binary_data_size": 4 * K}}),
         {"Inference-Header-Content-Length": "x"}, "whole number"),
        (request(LATENT), {"Inference-Header-Content-Length": "99999"}, "but the body has only"),
        (request(LATENT), {"Content-Encoding": "gzip"}, "uncompressed"),
    ],
)  # fmt: skip
def test_protocol_violations_are_400_with_the_problem_named(
    live_url: str, body: bytes, headers: dict[str, str], needle: str
) -> None:
    r = infer_raw(live_url, "ae-t.decode", body, **headers)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def binary_request(k: int, sizes: list[int], extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "latent", "shape": [1, k], "datatype": "FP32",
                                     "parameters": {"binary_data_size": sizes[0]}}]}).encode()  # fmt: skip
    data = np.zeros((1, k), np.float32).tobytes()
    return header + data + extra, {"Inference-Header-Content-Length": str(len(header))}


def test_binary_sizes_must_add_up(live_url: str) -> None:
    k = httpx.get(f"{live_url}/v2/models/ae-t.decode").json()["inputs"][0]["shape"][1]
    body, headers = binary_request(k, [4 * k])
    ok = infer_raw(live_url, "ae-t.decode", body, **headers)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 1, 28, 28]
    for sizes, extra, needle in [
        ([4 * k - 4], b"", "takes"),
        ([4 * k], b"\0\0\0\0", "accounts for"),
    ]:
        body, headers = binary_request(k, sizes, extra)
        r = infer_raw(live_url, "ae-t.decode", body, **headers)
        assert r.status_code == 400 and needle in r.json()["error"], r.text
    body, headers = binary_request(k, [4 * k])
    r = infer_raw(live_url, "ae-t.decode", body[:-8], **headers)  # the tensor cut short
    assert r.status_code == 400 and "runs past the body" in r.json()["error"]


def test_binary_reply_layout(live_url: str) -> None:
    """JSON header of the stated length, then the raw little-endian bytes of each output."""
    body = request({"name": "n", "shape": [1], "datatype": "INT64", "data": [2]},
                   parameters={"seed": 5, "binary_data_output": True})  # fmt: skip
    r = infer_raw(live_url, "gan-t.generate", body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:n])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert [o["name"] for o in header["outputs"]] == ["image", "seed"]
    assert len(r.content) == n + sum(sizes) and sizes == [2 * 28 * 28 * 4, 8]
    assert np.frombuffer(r.content[n + sizes[0] :], "<i8").tolist() == [5]


def test_errors_and_deadlines_in_the_protocols_shape(tc: triton.InferenceServerClient, live_url: str) -> None:  # fmt: skip
    for name, needle in [("nosuch.decode", "not available"), ("ae-t", "<model>.<operation>"),
                         ("ae-t.generate", "has no operation 'generate'")]:  # fmt: skip
        r = httpx.get(f"{live_url}/v2/models/{name}")
        assert r.status_code == 404 and needle in r.json()["error"]
    r = infer_raw(live_url, "ae-t.decode", b"{}")
    assert r.status_code == 400 and "inputs" in r.json()["error"]
    r = httpx.post(f"{live_url}/v2/models/ae-t.decode/versions/7/infer", content=b"{}")
    assert r.status_code == 404 and "only version 1" in r.json()["error"]
    x = np.random.default_rng(3).random((1, 1, 28, 28)).astype(np.float32)
    with pytest.raises(InferenceServerException) as err:  # 1 µs: past before it can start
        tc.infer("gan-t.encode", [tensor("image", x)], timeout=1)
    assert err.value.status() == "504" and "parameters.timeout" in err.value.message()


def test_body_limit_applies_to_binary_tensors(weights_dir) -> None:
    from service import Settings

    from .conftest import start

    client = start(Settings(weights_dir=weights_dir, max_body_bytes=4096, trace_at_start=False))
    try:
        k = client.get("/v2/models/ae-t.decode").json()["inputs"][0]["shape"][1]
        rows = 4096 // (4 * k) + 1
        header = json.dumps({"inputs": [{"name": "latent", "shape": [rows, k], "datatype": "FP32",
                                         "parameters": {"binary_data_size": rows * k * 4}}]}).encode()  # fmt: skip
        body = header + np.zeros((rows, k), np.float32).tobytes()
        r = client.post("/v2/models/ae-t.decode/infer", content=body,
                        headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
        assert r.status_code == 413, r.text
    finally:
        client.__exit__(None, None, None)
