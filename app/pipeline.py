"""One request, start to end, off the event loop: decode, validate, compute, encode, once each.

:func:`prepare` decodes and validates, and says what the request will hold in memory until its
answer is sent (:func:`memory_need`); :meth:`Prepared.finish` computes and encodes. The gate
(app.limits.admission) resizes the request's memory reservation between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pydantic

from app import metrics
from app.codecs import Budget, Codec, Decoded, choose_decoder, choose_encoder
from app.codecs import json as json_codec
from app.config import Settings
from app.errors import InvalidInput, validation_errors
from app.limits import WorkLimits
from app.limits.memory import Reservation
from app.schemas import HYPERPARAMETERS, UNION_TAGS, ConvRequest, TensorSpec, request_model
from convengine import Geometry, Operation

__all__ = ["Prepared", "answer_bytes", "compute", "prepare", "validate"]

# Bytes an encoded answer holds per output element (JSON: up to 24 characters a number and
# orjson's growing buffer) or per output byte (binary forms: the file written, then copied out).
_JSON_BYTES_PER_ELEMENT = 32
_BINARY_COPIES = 2
# The shape of each output, from the geometry the request was validated with.
_OUTPUT_SHAPES: dict[str, Callable[[Geometry], tuple[int, ...]]] = {
    "out": lambda g: g.out_shape,
    "dx": lambda g: g.x_shape,
    "dw": lambda g: g.w_shape,
    "db": lambda g: g.out_shape[1:2],  # one value per output channel
}


def answer_bytes(request: ConvRequest, itemsize: int, binary: bool) -> int:
    """What the encoded answer of ``request`` holds at most, its arrays included."""
    elements = sum(
        math.prod(_OUTPUT_SHAPES[name](request.geometry)) for name in request.operation.outputs
    )
    per_element = _BINARY_COPIES * itemsize if binary else _JSON_BYTES_PER_ELEMENT
    return elements * (itemsize + per_element)


@dataclass
class Prepared:
    """A decoded, validated request, and what it will hold until its answer is sent."""

    request: ConvRequest
    decoded: Decoded
    encoder: Codec
    need: int

    def finish(self) -> tuple[bytes, dict[str, str]]:
        outputs = compute(self.request, self.decoded.arrays)
        assert self.encoder.encode is not None
        content = self.encoder.encode(outputs, self.decoded.style)
        return content, {"content-type": self.encoder.media_type}


def memory_need(request: ConvRequest, arrays: Mapping[str, np.ndarray], binary: bool) -> int:
    """Decoded arrays, working memory and answer of a validated request, in bytes."""
    itemsize = arrays[request.operation.inputs[0]].dtype.itemsize
    work = request.operation.cost(request.geometry, itemsize).work_bytes
    decoded = sum(array.nbytes for array in arrays.values())
    return decoded + work + answer_bytes(request, itemsize, binary)


def prepare(
    operation: Operation,
    body: bytes,
    reservation: Reservation,
    content_type: str | None,
    accept: str | None,
    query: Mapping[str, str],
    settings: Settings,
) -> Prepared:
    """Decode and validate one request to ``operation``'s route (in a worker thread)."""
    encoder = choose_encoder(accept, operation, content_type)
    decoder, options = choose_decoder(content_type)
    assert decoder.decode is not None and encoder.encode is not None
    budget = Budget(
        settings.max_decoded_bytes,
        allowance=max(0, reservation.held - len(body)),
        reserve=reservation.take_now,
    )
    decoded = decoder.decode(body, operation, query, budget, options)
    if decoded.param_location == "body" and query:
        key = next(iter(query))
        raise InvalidInput(
            f"query parameter {key!r} is not read: with this Content-Type the "
            f"hyperparameters go in the body (the query is for application/x-npz)",
            loc=("query", key),
            type="extra_forbidden",
        )
    request = validate(operation, decoded, settings)
    binary = encoder.media_type != json_codec.MEDIA_TYPE
    return Prepared(request, decoded, encoder, memory_need(request, decoded.arrays, binary))


def validate(operation: Operation, decoded: Decoded, settings: Settings) -> ConvRequest:
    """The validated request: hyperparameters and array specs checked against each other."""
    specs = {
        name: TensorSpec(shape=array.shape, dtype=array.dtype.name)
        for name, array in decoded.arrays.items()
    }
    context = {
        "text": decoded.params_as_text,
        "limits": WorkLimits(settings.max_work_bytes, settings.max_gflop),
    }
    try:
        return request_model(operation).model_validate({**decoded.params, **specs}, context=context)
    except pydantic.ValidationError as exc:
        raise validation_errors(
            exc, decoded.param_location, parameters=HYPERPARAMETERS, drop=UNION_TAGS
        ) from exc


def compute(request: ConvRequest, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The operation's outputs, by the engine, for the geometry the request was validated with."""
    operation = request.operation
    seconds = metrics.ENGINE_SECONDS.labels(operation.name)
    # Overflow to inf is an answer, not a warning: encoders report values JSON cannot carry.
    with np.errstate(all="ignore"), metrics.COMPUTING.track_inprogress(), seconds.time():
        return operation.run(request.geometry, arrays)
