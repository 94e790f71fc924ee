"""One request, start to end, off the event loop: decode, validate, compute, encode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pydantic

from app import metrics
from app.codecs import NPY, ArrayNames, Budget, Decoded, choose_decoder, choose_encoder
from app.config import Settings
from app.errors import InvalidInput, NotAcceptable, engine_errors, validation_errors
from app.limits import check_work
from app.schemas import ARRAYS, UNION_TAGS, Hyperparameters, JSONOptions
from convengine import ConvGeometry, conv2d, conv2d_backward

__all__ = ["Pass", "evaluate", "run_pass"]

Pass = Literal["forward", "backward"]


def run_pass(
    name: Pass,
    body: bytes,
    content_type: str | None,
    accept: str | None,
    query: Mapping[str, str],
    settings: Settings,
) -> tuple[bytes, str]:
    """The response body and media type for one forward or backward request."""
    media_type, encode = choose_encoder(accept)
    if media_type == NPY and name == "backward":
        raise NotAcceptable(
            "application/x-npy carries a single array; backward answers dx, dw and db: "
            "accept application/x-npz or application/json",
            loc=("header", "accept"),
        )
    names = ArrayNames(*ARRAYS[name])
    decoded = choose_decoder(content_type)(body, names, query, Budget(settings.max_decoded_bytes))
    if decoded.param_location == "body" and query:
        key = next(iter(query))
        raise InvalidInput(
            f"query parameter {key!r} is not read: with this Content-Type the "
            f"hyperparameters go in the body (the query is for application/x-npz)",
            loc=("query", key),
            type="extra_forbidden",
        )
    return encode(evaluate(name, decoded, settings), decoded.style), media_type


def evaluate(name: Pass, decoded: Decoded, settings: Settings) -> dict[str, np.ndarray]:
    """Validate the hyperparameters and the arrays against each other, then compute.

    -> {"out": ...} for forward, {"dx", "dw", "db"} for backward
    """
    hyper = _hyperparameters(decoded.params, decoded.style != "binary", decoded.param_location)
    arrays = decoded.arrays
    with engine_errors(decoded.param_location):
        x, w = arrays["x"], arrays["w"]
        geometry = ConvGeometry.build(x.shape, w.shape, **hyper)
        check_work(
            geometry,
            x.dtype.itemsize,
            passes=1 if name == "forward" else 2,
            max_bytes=settings.max_work_bytes,
            max_gflop=settings.max_gflop,
        )
        return _compute(name, arrays, hyper)


def _compute(
    name: Pass, arrays: dict[str, np.ndarray], hyper: dict[str, object]
) -> dict[str, np.ndarray]:
    # Overflow to inf is an answer, not a warning: encoders report values JSON cannot carry.
    seconds = metrics.ENGINE_SECONDS.labels(name)
    with np.errstate(all="ignore"), metrics.COMPUTING.track_inprogress(), seconds.time():
        if name == "forward":
            return {"out": conv2d(arrays["x"], arrays["w"], arrays.get("b"), **hyper)}
        dx, dw, db = conv2d_backward(arrays["dout"], arrays["x"], arrays["w"], **hyper)
        return {"dx": dx, "dw": dw, "db": db}


def _hyperparameters(params: dict[str, object], is_json: bool, location: str) -> dict[str, object]:
    """The validated hyperparameters as engine keyword arguments."""
    model = JSONOptions if is_json else Hyperparameters
    try:
        validated = model.model_validate(params)
    except pydantic.ValidationError as exc:
        raise validation_errors(exc, location, drop=UNION_TAGS) from exc
    return validated.model_dump(include={"stride", "padding", "dilation", "groups"})
