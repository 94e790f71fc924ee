"""The Open Inference Protocol as a service: one model per operation of the table and rank.

``conv2d`` is the planar forward pass (inputs x, w, optional b; output out),
``conv2d_backward`` its backward pass (inputs dout, x, w; outputs dx, dw, db), and so on for
``conv1d``, ``conv3d`` and ``conv_transpose{1,2,3}d``: whatever the table of operations holds.
The same validation, limits and engine as the REST routes; only the wire differs
(:mod:`app.codecs.protocol`), and so does the error shape: ``{"error": "<message>"}``, with
a 422 becoming the protocol's 400.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

import convengine
from app import pipeline
from app.codecs import Budget, Decoded
from app.codecs import json as json_codec
from app.codecs import npz as npz_codec
from app.codecs import protocol as wire
from app.codecs.base import Pieces
from app.config import Settings
from app.errors import BadRequest, NotFound
from app.limits.memory import Reservation
from app.schemas import ConvRequest, Hyperparameters, TensorSpec
from app.statistics import Timing, model_statistics
from convengine import RANKS, Cost, Operation

__all__ = [
    "VERSION",
    "Encode",
    "InferResponse",
    "ModelIndex",
    "ModelMetadata",
    "Models",
    "Parse",
    "PreparedInference",
    "ProtocolError",
    "ServerMetadata",
    "config",
    "error_message",
    "metadata",
    "model",
    "models",
    "plan",
    "prepare",
    "render_error",
    "repository_index",
    "server_metadata",
    "statistics",
]

VERSION = "1"
# Model load and unload are not served (the models are the table's, loaded at start): the
# repository index is, without claiming the model_repository extension.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
Models = Mapping[str, tuple[Operation, int]]


def models(operations: Mapping[str, Operation]) -> Models:
    """The models served for a table of operations: one per operation and rank."""
    return {
        operation.model_name(rank): (operation, rank)
        for operation in operations.values()
        for rank in RANKS
    }


class ProtocolError(BaseModel):
    error: str


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelIndex(BaseModel):
    name: str
    version: str
    state: str
    reason: str


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


def server_metadata() -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {
        "name": "convengine",
        "version": convengine.__version__,
        "extensions": EXTENSIONS,
    }


def model(served_models: Models, name: str, version: str | None = None) -> tuple[Operation, int]:
    """The operation and rank served as model ``name`` (and ``version``), or 404."""
    served = served_models.get(name)
    if served is None:
        raise NotFound(f"unknown model {name[:60]!r}: this server has {', '.join(served_models)}")
    if version is not None and version != VERSION:
        raise NotFound(f"model {name!r} has only version {VERSION}, not {version[:20]!r}")
    return served


def metadata(operation: Operation, rank: int) -> dict[str, Any]:
    """The model's metadata: its tensors (any size per axis) and its parameters."""

    def tensor(name: str) -> dict[str, Any]:
        return {"name": name, "datatype": "FP32", "shape": [-1] * operation.arrays[name].ndim(rank)}

    forms = "; ".join(
        f"{name}: {text}"
        for name, text in Hyperparameters.text_forms().items()
        if name in operation.hyperparameters
    )
    return {
        "name": operation.model_name(rank),
        "versions": [VERSION],
        "platform": "convengine",
        "inputs": [tensor(name) for name in operation.inputs],
        "outputs": [tensor(name) for name in operation.outputs],
        "parameters": {
            "datatypes": f"{', '.join(wire.DATATYPES)}, the same for every input; outputs "
            "follow x (the protocol has no complex datatype)",
            "hyperparameters": forms,
        },
    }


# parse(body): the inference request and the inputs' bytes after it (REST's JSON and binary
# data, or a gRPC message); encode(model, version, request, outputs): the answer and headers.
Parse = Callable[[bytes], tuple[wire.InferRequest, memoryview]]
Encode = Callable[
    [str, str, wire.InferRequest, dict[str, np.ndarray]], tuple[Pieces, dict[str, str]]
]


@dataclass
class PreparedInference:
    """A decoded, validated inference request, and what it will hold until it is answered."""

    name: str
    request: wire.InferRequest
    validated: ConvRequest
    decoded: Decoded
    need: int
    text: bool  # no output asked for as binary data: numbers written out in the JSON
    encode: Encode
    timing: Timing

    @property
    def cost(self) -> Cost:
        return self.validated.cost

    def finish(self) -> tuple[Pieces, dict[str, str]]:
        with self.timing.phase("compute_infer"):
            outputs = pipeline.compute(self.validated, self.decoded.arrays)
        with self.timing.phase("compute_output"):
            return self.encode(self.name, VERSION, self.request, outputs)


def prepare(
    served: tuple[Operation, int],
    body: bytes,
    reservation: Reservation,
    settings: Settings,
    *,
    parse: Parse,
    encode: Encode,
    timing: Timing,
) -> PreparedInference:
    """Decode and validate one inference request, whichever its transport (in a worker
    thread): the same checks and messages for REST and gRPC."""
    with timing.phase("compute_input"):
        operation, rank = served
        name = operation.model_name(rank)
        request, blob = parse(body)
        wanted = wire.check_outputs(operation, name, request)
        budget = Budget(
            settings.max_decoded_bytes,
            allowance=max(0, reservation.held - len(body)),
            reserve=reservation.take_now,
        )
        decoded = wire.decode(operation, name, request, blob, budget)
        _check_ranks(served, {array: value.shape for array, value in decoded.arrays.items()})
        validated = pipeline.validate(operation, decoded, settings)
        need = _need(validated, request, wanted)
        text = not any(wire.wants_binary(request, output) for output in wanted)
    return PreparedInference(name, request, validated, decoded, need, text, encode, timing)


def plan(served: tuple[Operation, int], header: wire.Header, settings: Settings) -> int | None:
    """What an inference request would hold beside its body, from its JSON header alone (the
    binary data extension sends it first), refused as :func:`prepare` would refuse it; None
    until the header has arrived and names every input the model needs."""
    operation, rank = served
    request = header.request
    if request is None or any(name not in header.specs for name in operation.required):
        return None
    wanted = wire.check_outputs(operation, operation.model_name(rank), request)
    _check_ranks(served, {array: shape for array, (shape, _) in header.specs.items()})
    specs = {
        array: TensorSpec(shape=shape, dtype=dtype.name)
        for array, (shape, dtype) in header.specs.items()
    }
    sent = header.sent
    validated = pipeline.check(operation, sent.params, specs, sent, settings)
    return _need(validated, request, wanted)


def _check_ranks(served: tuple[Operation, int], shapes: Mapping[str, tuple[int, ...]]) -> None:
    operation, rank = served
    for array, shape in shapes.items():
        expected = operation.ndims(array, rank)
        if len(shape) not in expected:
            forms = " or ".join(f"{ndim}-D" for ndim in expected)
            one = ", or one sample without N" if len(expected) > 1 else ""
            raise BadRequest(
                f"model {operation.model_name(rank)} takes {rank}-D layers: input {array} "
                f"must be {forms} ({operation.arrays[array].axes}{one}), got shape "
                f"{list(shape)}"
            )


def _need(validated: ConvRequest, request: wire.InferRequest, wanted: list[str]) -> int:
    binary = all(wire.wants_binary(request, output) for output in wanted)
    # Answered as raw bytes or as JSON numbers: the same sizes as .npz and JSON answers.
    encoding = npz_codec.CODEC if binary else json_codec.CODEC
    return pipeline.memory_need(validated, encoding.answer_bytes)


def config(operation: Operation, rank: int) -> dict[str, Any]:
    """The model's configuration (Triton's model configuration extension).

    What a convolution model holds: its inputs and outputs, each with its rank (every axis
    of any size: -1) and FP32 type (FP64 is served too, the same for every input), the
    optional ones (a bias) marked; no batching of its own (``max_batch_size`` 0: the batch
    is the first axis of x); and its hyperparameters as parameters, each with its text form.
    Fields at their default value are left out, as protobuf's JSON leaves them out.
    """

    def tensor(name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": name,
            "data_type": "TYPE_FP32",
            "dims": [-1] * operation.arrays[name].ndim(rank),
        }
        if name in operation.inputs and name not in operation.required:
            entry["optional"] = True
        return entry

    forms = Hyperparameters.text_forms()
    return {
        "name": operation.model_name(rank),
        "platform": "convengine",
        "backend": "convengine",
        "input": [tensor(name) for name in operation.inputs],
        "output": [tensor(name) for name in operation.outputs],
        "parameters": {
            name: {"string_value": forms[name]}
            for name in Hyperparameters.model_fields
            if name in operation.hyperparameters
        },
    }


def repository_index(served_models: Models) -> list[dict[str, str]]:
    """Every model served, each ready (the table is loaded once, at start)."""
    return [
        {"name": name, "version": VERSION, "state": "READY", "reason": ""} for name in served_models
    ]


def statistics(
    served_models: Models, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    """Inference statistics of model ``name`` (every model if None or empty), or 404."""
    names = list(served_models)
    if name:
        model(served_models, name, version or None)
        names = [name]
    return {"model_stats": model_statistics(names, VERSION)}


def render_error(status: int, detail: list[dict[str, Any]]) -> tuple[int, bytes]:
    """An error in the protocol's shape: one message naming each field, and 400 for 422."""

    return (400 if status == 422 else status), orjson.dumps({"error": error_message(detail)})


def error_message(detail: list[dict[str, Any]]) -> str:
    """An error's message as the protocol gives it (REST's "error", gRPC's status details):
    one message naming each field."""

    def one(item: dict[str, Any]) -> str:
        where = ".".join(str(part) for part in item["loc"][1:])
        return f"{where}: {item['msg']}" if where else str(item["msg"])

    return "; ".join(one(item) for item in detail)
