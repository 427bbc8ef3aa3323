"""The Open Inference Protocol's (KServe V2) infer request and reply on the wire, free of
models: JSON tensors and Triton's binary tensor extension, in both directions.

References: kserve/open-inference-protocol ``specification/protocol/inference_rest.md``;
triton-inference-server/server ``docs/protocol/extension_binary_data.md``.

- A request body is a JSON object ``{"id"?, "parameters"?, "inputs": [...], "outputs"?}``.
  With the binary extension, the header ``Inference-Header-Content-Length: N`` says that the
  first N bytes are that JSON and the rest are the raw little-endian bytes of the inputs whose
  ``parameters.binary_data_size`` is set, in the order of ``inputs``.
- A reply is ``{"model_name", "model_version", "id"?, "outputs": [...]}``; outputs asked for
  in binary (``outputs[i].parameters.binary_data`` or the request's
  ``parameters.binary_data_output``) follow the JSON the same way.

Every violation (wrong datatype or shape, sizes that do not add up, a header length past the
body, unknown fields, more elements than the body could hold) is a ``ProtocolError``: 400 with
a message that names the problem. Nothing is allocated from a claimed shape before the bytes
that back it have been checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from .parsing import parse_json
from .problems import Problem

HEADER_LENGTH = "inference-header-content-length"

#: protocol datatype -> numpy dtype (little-endian); BYTES and BF16 are not served
DATATYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }.items()
}  # fmt: skip
#: numpy kinds a JSON ``data`` list may hold for each kind of datatype (no silent truncation)
JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


class ProtocolError(Problem):
    """The request breaks the protocol or this server's mapping of it (400)."""

    status = 400


@dataclasses.dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]  # name -> array of the datatype and shape sent
    datatypes: dict[str, str]  # name -> the protocol datatype it was sent as
    #: outputs asked for by name -> whether in binary; None: every output
    outputs: dict[str, bool] | None
    binary_output: bool  # parameters.binary_data_output

    def wants_binary(self, name: str) -> bool:
        if self.outputs is not None and name in self.outputs:
            return self.outputs[name]
        return self.binary_output


def read_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request body (and its Inference-Header-Content-Length, if any) -> InferRequest."""
    header, binary = _split(body, header_length)
    data = parse_json(header)
    if not isinstance(data, dict):
        raise ProtocolError("the inference request must be a JSON object with 'inputs'")
    _only(data, {"id", "parameters", "inputs", "outputs"}, "the inference request")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: must be a string, got {type(request_id).__name__}")
    parameters = _parameters(data.get("parameters"), "parameters")
    binary_output = parameters.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise ProtocolError("parameters.binary_data_output: must be true or false")
    inputs, datatypes = _inputs(data.get("inputs"), binary, max_elements=len(body))
    return InferRequest(
        request_id, parameters, inputs, datatypes, _outputs(data.get("outputs")), binary_output
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if n < 0:
        raise ProtocolError(
            f"Inference-Header-Content-Length: must be a whole number of bytes, got {header_length[:40]!r}"
        )
    if n > len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length is {n}, but the body has only {len(body)} bytes"
        )
    return body[:n], body[n:]


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ProtocolError(f"{where}: unknown fields {unknown}; allowed: {sorted(allowed)}")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be a JSON object")
    return dict(value)


def _inputs(
    value: Any, binary: bytes, max_elements: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not isinstance(value, list):
        raise ProtocolError("inputs: must be a list of tensors ([] for generate with parameters)")
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for i, tensor in enumerate(value):
        if not isinstance(tensor, dict):
            raise ProtocolError(f"inputs[{i}]: must be an object with name, shape, datatype")
        name = tensor.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"inputs[{i}].name: must be a non-empty string")
        where = f"input {name!r}"
        if name in arrays:
            raise ProtocolError(f"{where}: given twice")
        _only(tensor, {"name", "shape", "datatype", "data", "parameters"}, where)
        dtype_name, dtype = _datatype(tensor.get("datatype"), where)
        shape = _shape(tensor.get("shape"), where)
        elements = math.prod(shape)
        if elements > max_elements:
            raise ProtocolError(
                f"{where}: shape {shape} has {elements} elements, more than a body of "
                f"{max_elements} bytes can hold"
            )
        params = _parameters(tensor.get("parameters"), f"{where}.parameters")
        if "shared_memory_region" in params:
            raise ProtocolError(f"{where}: the shared-memory extension is not supported")
        _only(params, {"binary_data_size"}, f"{where}.parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise ProtocolError(f"{where}: give data or parameters.binary_data_size, not both")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a whole number of bytes")
            if size != elements * dtype.itemsize:
                raise ProtocolError(
                    f"{where}: binary_data_size is {size} bytes, but {dtype_name} {shape} "
                    f"takes {elements * dtype.itemsize}"
                )
            if offset + size > len(binary):
                raise ProtocolError(
                    f"{where}: binary_data_size runs past the body: {len(binary) - offset} "
                    f"bytes remain after the JSON header, {size} claimed"
                )
            chunk = binary[offset : offset + size]
            offset += size
            array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        else:
            if "data" not in tensor:
                raise ProtocolError(f"{where}: no data and no parameters.binary_data_size")
            array = _from_json(tensor["data"], dtype_name, dtype, shape, where)
        arrays[name] = array
        datatypes[name] = dtype_name
    if offset != len(binary):
        raise ProtocolError(
            f"the body has {len(binary) - offset} bytes after the JSON header and the binary "
            "inputs that no input's binary_data_size accounts for"
        )
    return arrays, datatypes


def _datatype(value: Any, where: str) -> tuple[str, np.dtype[Any]]:
    if not isinstance(value, str) or value not in DATATYPES:
        raise ProtocolError(
            f"{where}: datatype {str(value)[:20]!r} is not served; use one of {', '.join(DATATYPES)}"
        )
    return value, DATATYPES[value]


def _shape(value: Any, where: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise ProtocolError(f"{where}: shape must be a list of at most 8 non-negative integers")
    return value


def _from_json(
    data: Any, dtype_name: str, dtype: np.dtype[Any], shape: list[int], where: str
) -> np.ndarray:
    """A JSON ``data`` list (flat, row-major, or nested) -> an array; no value is coerced
    into a datatype that cannot hold it exactly (1.5 is not an INT32, true not an FP32)."""
    if not isinstance(data, list):
        data = [data]
    try:
        raw = np.array(data)
    except (ValueError, OverflowError):
        raise ProtocolError(
            f"{where}: data must be a (nested) list of numbers of one shape"
        ) from None
    if raw.size and raw.dtype.kind not in JSON_KINDS[dtype.kind]:
        raise ProtocolError(f"{where}: data holds values that are not {dtype_name}")
    if raw.size != math.prod(shape):
        raise ProtocolError(
            f"{where}: shape {shape} needs {math.prod(shape)} values, data has {raw.size}"
        )
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ProtocolError(f"{where}: values out of the range of {dtype_name}")
    with np.errstate(over="raise", invalid="raise"):
        try:
            return raw.astype(dtype).reshape(shape)
        except FloatingPointError:
            raise ProtocolError(f"{where}: values out of the range of {dtype_name}") from None


def _outputs(value: Any) -> dict[str, bool] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError("outputs: must be a list of {name, parameters?}")
    wanted: dict[str, bool] = {}
    for i, tensor in enumerate(value):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ProtocolError(f"outputs[{i}]: must be an object with a name")
        where = f"output {tensor['name']!r}"
        _only(tensor, {"name", "parameters"}, where)
        params = _parameters(tensor.get("parameters"), f"{where}.parameters")
        if params.get("classification"):
            raise ProtocolError(f"{where}: the classification extension is not supported")
        if "shared_memory_region" in params:
            raise ProtocolError(f"{where}: the shared-memory extension is not supported")
        _only(params, {"binary_data", "classification"}, f"{where}.parameters")
        binary = params.get("binary_data", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"{where}: parameters.binary_data must be true or false")
        wanted[tensor["name"]] = binary
    return wanted


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise TypeError(f"no protocol datatype for {array.dtype}")


def write_infer_response(
    model_name: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The reply body and its headers: JSON, or JSON followed by the binary outputs."""
    tensors = []
    chunks = []
    for name, array in outputs.items():
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.wants_binary(name):
            raw = np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    reply: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        reply["id"] = request.id
    reply["outputs"] = tensors
    header = json.dumps(reply, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
