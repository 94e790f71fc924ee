"""The Open Inference Protocol's tensors (KServe v2 REST), with its binary data extension.

A request is a JSON document (:class:`InferRequest`) optionally followed by the inputs'
little-endian bytes, the JSON's length in the ``Inference-Header-Content-Length`` header.
Decoding gives the same :class:`Decoded` as every other codec, its hyperparameters from the
request's ``parameters``; encoding gives JSON outputs or a JSON header followed by binary data.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

from app.errors import BadRequest, InvalidInput, PayloadTooLarge, brief
from app.schemas import HYPERPARAMETERS, Hyperparameters
from convengine import Operation

from .base import DTYPES, Budget, Decoded, Pieces, pieces_of
from .json import array_from_lists

__all__ = [
    "DATATYPES",
    "Header",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "check_outputs",
    "datatype",
    "decode",
    "encode",
    "little_endian",
    "parse_request",
    "read_request",
    "wants_binary",
]

DATATYPES: dict[str, np.dtype] = {
    "FP16": DTYPES["float16"],
    "BF16": DTYPES["bfloat16"],
    "FP32": DTYPES["float32"],
    "FP64": DTYPES["float64"],
}
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
# Triton's own request parameters, which a stateless convolution has no use for.
_IGNORED = {
    "binary_data_output",
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "sequence_end",
}
_LENGTH = re.compile(r"[0-9]{1,12}")


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


def parse_request(
    body: bytes, header_length: str | None, max_json_bytes: int
) -> tuple[InferRequest, memoryview]:
    """The inference request and the binary tensor data after it.

    The JSON part is held to the limit of JSON bodies whatever the Content-Type said: parsed
    JSON costs many times its size.
    """
    document, blob = _split(body, header_length, max_json_bytes)
    return read_request(document), blob


def read_request(document: Any) -> InferRequest:
    """The inference request a document (parsed JSON, or a gRPC message's fields) holds."""
    try:
        return InferRequest.model_validate(document)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadRequest(f"invalid inference request: {where}: {first['msg']}") from exc


def decode(
    operation: Operation, model: str, request: InferRequest, blob: memoryview, budget: Budget
) -> Decoded:
    """The request's inputs as arrays and its parameters as (text-form) hyperparameters."""
    arrays = _inputs(operation, model, request, blob, budget)
    params = {key: value for key, value in request.parameters.items() if key not in _IGNORED}
    for key in params:
        if key not in HYPERPARAMETERS:
            raise InvalidInput(
                f"unknown parameter {key[:40]!r}: the models take "
                f"{', '.join(Hyperparameters.model_fields)}",
                loc=("parameters", key[:40]),
            )
    return _decoded(arrays, params)


def _decoded(arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Decoded:
    return Decoded(arrays, params, "file", param_location="parameters", params_as_text=True)


class Header:
    """What a request with binary tensor data announces in its JSON header, which comes
    before the data (app.codecs.base.Announced): read once its ``length`` bytes have arrived.

    A header the decoder would refuse (over ``max_json_bytes``, not JSON, not a request, an
    input or parameter it does not know) is ``lost``: the decoder names the fault.
    """

    def __init__(self, length: int, max_json_bytes: int) -> None:
        self.length = length
        self.specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.lost = length > max_json_bytes
        self.ended = False
        self.request: InferRequest | None = None
        self._bytes = bytearray()

    @property
    def sent(self) -> Decoded:
        params = self.request.parameters if self.request is not None else {}
        return _decoded({}, {key: value for key, value in params.items() if key not in _IGNORED})

    def feed(self, piece: bytes | memoryview) -> None:
        if self.lost or self.ended:
            return
        self._bytes += piece[: self.length - len(self._bytes)]
        if len(self._bytes) < self.length:
            return
        self.ended = True
        try:
            request = read_request(orjson.loads(self._bytes))
        except (orjson.JSONDecodeError, BadRequest):
            self.lost = True
            return
        for tensor in request.inputs:
            dtype = DATATYPES.get(tensor.datatype)
            known = tensor.name not in self.specs and "binary_data_size" in tensor.parameters
            if dtype is None or not known or any(d < 0 for d in tensor.shape):
                self.lost = True
                return
            self.specs[tensor.name] = (tuple(tensor.shape), dtype)
        self.request = request
        self.lost = any(key not in HYPERPARAMETERS for key in self.sent.params)


def _split(body: bytes, header_length: str | None, max_json_bytes: int) -> tuple[Any, memoryview]:
    """The JSON header and the binary tensor data after it."""
    size = len(body)
    where: tuple[str, ...] = ("body",)
    if header_length is not None:
        where = ("header", "inference-header-content-length")
        if not _LENGTH.fullmatch(header_length) or int(header_length) > size:
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length[:20]!r} must be a number no "
                f"larger than the body ({size} bytes)",
                loc=where,
            )
        size = int(header_length)
    if size > max_json_bytes:
        raise PayloadTooLarge(
            f"the inference request's JSON is {size} bytes, over the limit of "
            f"{max_json_bytes} bytes for JSON: send the tensors as binary data",
            loc=where,
        )
    try:
        document = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the inference request is not valid JSON: {exc}") from exc
    return document, memoryview(body)[size:]


def _inputs(
    operation: Operation, model: str, request: InferRequest, blob: memoryview, budget: Budget
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name not in operation.inputs:
            raise BadRequest(
                f"model {model} has no input {tensor.name[:40]!r}: its inputs are "
                f"{', '.join(operation.inputs)}"
            )
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise BadRequest(
                f"input {tensor.name} has datatype {tensor.datatype[:20]!r}; the models take "
                f"{', '.join(DATATYPES)} (the protocol has no complex datatype: send complex "
                f"arrays to the REST routes as .npz or JSON)"
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
    missing = [name for name in operation.required if name not in arrays]
    if missing:
        raise BadRequest(f"model {model} needs input {missing[0]!r}")
    return arrays


def _binary(
    tensor: InferInput, dtype: np.dtype, rest: memoryview, binary_size: object, nbytes: int
) -> np.ndarray:
    if binary_size != nbytes or isinstance(binary_size, bool):
        raise BadRequest(
            f"input {tensor.name}: binary_data_size {brief(binary_size)} does not match shape "
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


def wants_binary(request: InferRequest, name: str) -> bool:
    default = request.parameters.get("binary_data_output") is True
    for output in request.outputs or ():
        if output.name == name:
            return bool(output.parameters.get("binary_data", default))
    return default


def check_outputs(operation: Operation, model: str, request: InferRequest) -> list[str]:
    """The outputs the request asks for (all by default), each known and named once."""
    requested = [o.name for o in request.outputs] if request.outputs else list(operation.outputs)
    for name in requested:
        if name not in operation.outputs:
            raise BadRequest(
                f"model {model} has no output {name[:40]!r}: its outputs are "
                f"{', '.join(operation.outputs)}"
            )
    if len(set(requested)) != len(requested):
        twice = next(name for name in requested if requested.count(name) > 1)
        raise BadRequest(f"output {twice!r} is asked for twice")
    return requested


def datatype(array: np.ndarray) -> str:
    """The protocol's name of an output's type."""
    return _DATATYPE_OF[array.dtype]


def little_endian(array: np.ndarray) -> memoryview:
    """An array's numbers as the protocol's binary data: little-endian, C order (a view of
    the array when it already is)."""
    ordered = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    return ordered.reshape(-1).view(np.uint8).data


def _json_numbers(array: np.ndarray) -> np.ndarray:
    # orjson writes no bfloat16: widened to float32, exactly.
    return array.astype(np.float32) if array.dtype == DATATYPES["BF16"] else array


def encode(
    model: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[Pieces, dict[str, str]]:
    """The response body and headers: JSON outputs, or a JSON header and binary data."""
    requested = [o.name for o in request.outputs] if request.outputs else list(outputs)
    tensors: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name in requested:
        array = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype(array),
        }
        if wants_binary(request, name):
            raw = little_endian(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            if not np.isfinite(array).all():
                raise BadRequest(
                    f"output {name} holds NaN or Infinity, which JSON cannot carry: "
                    f"request it with binary_data"
                )
            entry["data"] = _json_numbers(array).ravel()
        tensors.append(entry)
    document = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return [header], {"content-type": "application/json"}
    return [header, *(piece for raw in blobs for piece in pieces_of(raw))], {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
