"""One request, start to end, off the event loop: decode, validate, compute, encode, once each."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pydantic

from app import metrics
from app.codecs import Budget, Decoded, choose_decoder, choose_encoder
from app.config import Settings
from app.errors import InvalidInput, validation_errors
from app.limits import WorkLimits
from app.schemas import HYPERPARAMETERS, UNION_TAGS, ConvRequest, TensorSpec, request_model
from convengine import Operation

__all__ = ["compute", "run", "validate"]


def run(
    operation: Operation,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    query: Mapping[str, str],
    settings: Settings,
) -> tuple[bytes, str]:
    """The response body and media type for one request to ``operation``'s route."""
    encoder = choose_encoder(accept, operation)
    decoder, options = choose_decoder(content_type)
    assert decoder.decode is not None and encoder.encode is not None
    decoded = decoder.decode(body, operation, query, Budget(settings.max_decoded_bytes), options)
    if decoded.param_location == "body" and query:
        key = next(iter(query))
        raise InvalidInput(
            f"query parameter {key!r} is not read: with this Content-Type the "
            f"hyperparameters go in the body (the query is for application/x-npz)",
            loc=("query", key),
            type="extra_forbidden",
        )
    request = validate(operation, decoded, settings)
    return encoder.encode(compute(request, decoded.arrays), decoded.style), encoder.media_type


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
