"""The Open Inference Protocol (KServe v2 REST), with its binary tensor data extension.

Two models: ``conv2d`` (inputs x, w, optional b; output out) and ``conv2d_backward`` (inputs
x, w, dout; outputs dx, dw, db). Hyperparameters travel in the request's ``parameters``.
The same validation, limits and engine as /forward and /backward; only the wire differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from app.codecs import Budget, Decoded
from app.codecs._common import parse_param_text
from app.codecs.json import array_from_lists
from app.config import Settings
from app.errors import BadRequest, InvalidInput, NotFound
from app.passes import Pass, evaluate

__all__ = [
    "MODELS",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "ModelSpec",
    "ProtocolError",
    "ServerMetadata",
    "infer",
    "model",
]

VERSION = "1"
_DATATYPES: dict[str, np.dtype] = {"FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64)}
_HYPERPARAMETERS = ("stride", "padding", "dilation", "groups")
# Triton's own request parameters, which a stateless convolution has no use for.
_IGNORED = {
    "binary_data_output",
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    pass_: Pass
    inputs: tuple[str, ...]
    required: tuple[str, ...]
    outputs: tuple[str, ...]
    ndims: dict[str, int]

    def metadata(self) -> dict[str, Any]:
        def tensor(name: str) -> dict[str, Any]:
            return {"name": name, "datatype": "FP32", "shape": [-1] * self.ndims[name]}

        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": "convengine",
            "inputs": [tensor(name) for name in self.inputs],
            "outputs": [tensor(name) for name in self.outputs],
            "parameters": {
                "datatypes": "FP32 or FP64, the same for every input; outputs follow x",
                "hyperparameters": "stride, padding, dilation: an int or 'h,w'; "
                "padding also 'same' or 'valid'; groups: an int",
            },
        }


_NDIMS = {"x": 4, "w": 4, "b": 1, "dout": 4, "out": 4, "dx": 4, "dw": 4, "db": 1}
MODELS = {
    "conv2d": ModelSpec("conv2d", "forward", ("x", "w", "b"), ("x", "w"), ("out",), _NDIMS),
    "conv2d_backward": ModelSpec(
        "conv2d_backward",
        "backward",
        ("x", "w", "dout"),
        ("x", "w", "dout"),
        ("dx", "dw", "db"),
        _NDIMS,
    ),
}


def model(name: str, version: str | None = None) -> ModelSpec:
    """The model called ``name`` (and ``version``), or 404."""
    spec = MODELS.get(name)
    if spec is None:
        raise NotFound(f"unknown model {name[:60]!r}: this server has {', '.join(MODELS)}")
    if version is not None and version != VERSION:
        raise NotFound(f"model {name!r} has only version {VERSION}, not {version[:20]!r}")
    return spec


class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None  # converted by NumPy in one call, never validated number by number


class InferOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[InferInput] = Field(max_length=16)
    outputs: list[InferOutput] | None = Field(None, max_length=16)


class ProtocolError(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str]


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | None = None
    parameters: dict[str, int] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def infer(
    spec: ModelSpec, body: bytes, header_length: str | None, settings: Settings
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for one inference request."""
    document, blob = _split(body, header_length)
    try:
        request = InferRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadRequest(f"invalid inference request: {where}: {first['msg']}") from exc
    arrays = _inputs(spec, request, blob, Budget(settings.max_decoded_bytes))
    params = _hyperparameters(request.parameters)
    outputs = evaluate(spec.pass_, Decoded(arrays, params, "binary", "parameters"), settings)
    return _response(spec, request, outputs)


def _split(body: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """The JSON header and the binary tensor data after it."""
    size = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > size:
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length[:20]!r} must be a number no "
                f"larger than the body ({size} bytes)"
            )
        size = int(header_length)
    try:
        document = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from exc
    return document, memoryview(body)[size:]


def _inputs(
    spec: ModelSpec, request: InferRequest, blob: memoryview, budget: Budget
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name not in spec.inputs:
            raise BadRequest(
                f"model {spec.name} has no input {tensor.name[:40]!r}: its inputs are "
                f"{', '.join(spec.inputs)}"
            )
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        dtype = _DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise BadRequest(
                f"input {tensor.name} has datatype {tensor.datatype[:20]!r}; the models "
                f"compute in FP32 or FP64"
            )
        if any(d < 0 for d in tensor.shape):
            raise BadRequest(f"input {tensor.name} has a negative dimension: {tensor.shape}")
        nbytes = math.prod(tensor.shape) * dtype.itemsize
        budget.take(nbytes, tensor.name)
        binary_size = tensor.parameters.get("binary_data_size")
        if binary_size is not None:
            arrays[tensor.name] = _binary(tensor, dtype, blob[offset:], binary_size, nbytes)
            offset += nbytes
        else:
            arrays[tensor.name] = _json_data(tensor, dtype)
    if offset != len(blob):
        raise BadRequest(
            f"the body holds {len(blob)} bytes of binary tensor data but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    missing = [name for name in spec.required if name not in arrays]
    if missing:
        raise BadRequest(f"model {spec.name} needs input {missing[0]!r}")
    return arrays


def _binary(
    tensor: InferInput, dtype: np.dtype, rest: memoryview, binary_size: object, nbytes: int
) -> np.ndarray:
    if binary_size != nbytes or isinstance(binary_size, bool):
        raise BadRequest(
            f"input {tensor.name}: binary_data_size {binary_size!r} does not match shape "
            f"{tensor.shape} of {tensor.datatype} ({nbytes} bytes)"
        )
    if len(rest) < nbytes:
        raise BadRequest(
            f"input {tensor.name} needs {nbytes} bytes of binary data but only {len(rest)} remain"
        )
    little = np.frombuffer(rest[:nbytes], dtype=dtype.newbyteorder("<"))
    return little.reshape(tensor.shape).astype(dtype, copy=False)


def _json_data(tensor: InferInput, dtype: np.dtype) -> np.ndarray:
    if not isinstance(tensor.data, list):
        raise BadRequest(f"input {tensor.name} needs data (a list of numbers) or binary data")
    array = array_from_lists(tensor.data, tensor.name, dtype, ("inputs", tensor.name))
    if array.size != math.prod(tensor.shape):
        raise BadRequest(
            f"input {tensor.name} holds {array.size} numbers but shape {tensor.shape} "
            f"needs {math.prod(tensor.shape)}"
        )
    return array.reshape(tensor.shape)


def _hyperparameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters as hyperparameters; strings such as "2,1" or "same" parsed."""
    params = {}
    for key, value in parameters.items():
        if key in _IGNORED:
            continue
        if key not in _HYPERPARAMETERS:
            raise InvalidInput(
                f"unknown parameter {key[:40]!r}: the models take {', '.join(_HYPERPARAMETERS)}",
                loc=("parameters", key[:40]),
            )
        params[key] = parse_param_text(value) if isinstance(value, str) else value
    return params


def _wants_binary(request: InferRequest, name: str) -> bool:
    default = request.parameters.get("binary_data_output") is True
    for output in request.outputs or ():
        if output.name == name:
            return bool(output.parameters.get("binary_data", default))
    return default


def _response(
    spec: ModelSpec, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    requested = [o.name for o in request.outputs] if request.outputs else list(spec.outputs)
    for name in requested:
        if name not in spec.outputs:
            raise BadRequest(
                f"model {spec.name} has no output {name[:40]!r}: its outputs are "
                f"{', '.join(spec.outputs)}"
            )
    tensors, blobs = [], []
    for name in requested:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": "FP32" if array.dtype == np.float32 else "FP64",
        }
        if _wants_binary(request, name):
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            if not np.isfinite(array).all():
                raise BadRequest(
                    f"output {name} holds NaN or Infinity, which JSON cannot carry: "
                    f"request it with binary_data"
                )
            entry["data"] = array.ravel()
        tensors.append(entry)
    document = {"model_name": spec.name, "model_version": VERSION, "outputs": tensors}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
