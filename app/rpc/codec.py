"""The inference protocol's tensors in gRPC messages: ``ModelInferRequest``, ``ModelInferResponse``.

A request message is read into the same :class:`app.codecs.protocol.InferRequest` as REST's
JSON, its inputs' bytes (``raw_input_contents``, or the typed contents turned into bytes) laid
end to end as REST's binary data, each input's ``binary_data_size`` its length: so
:func:`app.protocol.prepare` checks both transports alike, with the same messages. An answer
always carries its outputs in ``raw_output_contents``, as Triton's does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message

from app.codecs import protocol as wire
from app.codecs.base import Pieces
from app.errors import BadRequest

from .messages import MESSAGES

__all__ = ["encode", "message", "read"]

_REQUEST = MESSAGES["ModelInferRequest"]
_RESPONSE = MESSAGES["ModelInferResponse"]
# Where the typed contents of each datatype served go.
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


def message(body: bytes) -> Message:
    """The ``ModelInferRequest`` in a message's bytes."""
    try:
        return _REQUEST.FromString(body)
    except DecodeError as exc:
        raise BadRequest(f"the ModelInferRequest message cannot be parsed: {exc}") from exc


def read(request: Message) -> tuple[wire.InferRequest, memoryview]:
    """The inference request a ``ModelInferRequest`` holds, and its inputs' bytes end to end."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs: "
            f"send every input's bytes there, in the inputs' order, or none"
        )
    inputs, blobs = [], []
    for position, tensor in enumerate(request.inputs):
        data = raw[position] if raw else _typed(tensor)
        _check_size(tensor, len(data), f"raw_input_contents[{position}]" if raw else None)
        parameters = _parameters(tensor.parameters)
        parameters["binary_data_size"] = len(data)
        inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": parameters,
            }
        )
        blobs.append(data)
    document: dict[str, Any] = {
        "parameters": {**_parameters(request.parameters), "binary_data_output": True},
        "inputs": inputs,
    }
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": output.name} for output in request.outputs]
    return wire.read_request(document), memoryview(b"".join(blobs))


def encode(
    model: str, version: str, request: wire.InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[Pieces, dict[str, str]]:
    """The ``ModelInferResponse``'s bytes, one piece: the requested outputs (all by
    default), raw."""
    answer = _RESPONSE(model_name=model, model_version=version, id=request.id or "")
    for name in [output.name for output in request.outputs or ()] or list(outputs):
        array = outputs[name]
        answer.outputs.add(name=name, datatype=wire.datatype(array), shape=array.shape)
        answer.raw_output_contents.append(wire.little_endian(array).tobytes())
    return [answer.SerializeToString()], {}


def _parameters(parameters: Any) -> dict[str, Any]:
    """Request or tensor parameters (a map of InferParameter) as plain values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = None if choice is None else getattr(parameter, choice)
    return values


def _typed(tensor: Any) -> bytes:
    """A tensor's typed contents as little-endian bytes; none for a datatype not served (the
    decoder then names the datatypes served)."""
    field = _CONTENTS.get(tensor.datatype)
    filled = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    wrong = [name for name in filled if name != field]
    if field is not None and wrong:
        raise BadRequest(
            f"input {tensor.name} is {tensor.datatype}: its numbers go in {field} or "
            f"raw_input_contents, not {wrong[0]}"
        )
    if field is None:
        if tensor.datatype in wire.DATATYPES:  # a type the protocol has no typed field for
            raise BadRequest(
                f"input {tensor.name} is {tensor.datatype}, which has no typed contents: "
                f"send its bytes in raw_input_contents"
            )
        return b""
    dtype = wire.DATATYPES[tensor.datatype].newbyteorder("<")
    return np.asarray(getattr(tensor.contents, field), dtype=dtype).tobytes()


def _check_size(tensor: Any, size: int, where: str | None) -> None:
    """The bytes sent for ``tensor`` (``where``: raw, else its typed contents) fit its shape."""
    dtype = wire.DATATYPES.get(tensor.datatype)
    if dtype is None or any(d < 0 for d in tensor.shape):
        return  # the decoder refuses both, with REST's messages
    needed = math.prod(tensor.shape) * dtype.itemsize
    if size == needed:
        return
    shape = list(tensor.shape)
    if where is None:
        raise BadRequest(
            f"input {tensor.name} holds {size // dtype.itemsize} numbers in "
            f"{_CONTENTS[tensor.datatype]} but shape {shape} needs {needed // dtype.itemsize}"
        )
    raise BadRequest(
        f"input {tensor.name}: {where} holds {size} bytes but shape {shape} of "
        f"{tensor.datatype} needs {needed}"
    )
