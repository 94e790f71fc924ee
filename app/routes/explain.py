"""POST /explain: a request's dry run, from its arrays' shapes alone."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app import pipeline
from app.codecs import json as json_codec
from app.codecs.base import DTYPES, check_names, float_dtype, shape_of
from app.config import Settings
from app.errors import InvalidInput, PayloadTooLarge, brief
from app.schemas import TensorSpec
from convengine import Operation

# A dry run names shapes, not numbers: far less than any real one needs.
MAX_BODY_BYTES = 64 * 1024


class ExplainedArray(BaseModel):
    shape: list[int]
    dtype: str


class Explanation(BaseModel):
    """What a request would answer and cost."""

    operation: str
    outputs: dict[str, ExplainedArray] = Field(
        description="each output array's shape and dtype, by name"
    )
    flops: int = Field(description="floating-point operations of the computation")
    memory_bytes: int = Field(
        description="bytes the computation holds at most: its arrays and working memory "
        "(the service holds the request's body and encoded answer besides)"
    )
    path: str = Field(
        description="the kernel the engine's selector would run: im2col, pointwise, "
        "depthwise, phases, flat, volume(...), halves(...) when a large batch is split in two"
    )


_ERROR = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
}


def _example(operation: Operation) -> dict[str, Any]:
    """The table's example of ``operation`` with its arrays as their shapes."""
    example = dict(operation.example)
    shapes = {
        name: {"shape": list(np.shape(example.pop(name)))}
        for name in operation.inputs
        if name in example
    }
    return {"operation": operation.name, "dtype": "float32", **shapes, **example}


def _body(operations: Mapping[str, Operation]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["operation"],
                        "properties": {
                            "operation": {"enum": list(operations)},
                            "dtype": {
                                "enum": list(DTYPES),
                                "default": "float64",
                                "description": "the dtype of inputs given without one",
                            },
                        },
                        "additionalProperties": True,
                        "description": "the operation, each of its input arrays as {shape, dtype} "
                        "under its name (x, w, b, dout), and its hyperparameters at top level, as "
                        "in a JSON request to its route",
                    },
                    "example": _example(next(iter(operations.values()))),
                }
            },
        }
    }


def router(operations: Mapping[str, Operation]) -> APIRouter:
    """POST /explain for a table of operations."""
    routes = APIRouter(tags=["convolution"])
    routes.add_api_route(
        "/explain",
        explain,
        methods=["POST"],
        operation_id="explain",
        response_model=Explanation,
        openapi_extra=_body(operations),
        responses={
            400: {"description": "a body that is not JSON", **_ERROR},
            413: {"description": f"a body over {MAX_BODY_BYTES} bytes", **_ERROR},
            422: {"description": "what the real request would be refused with", **_ERROR},
        },
    )
    return routes


async def explain(request: Request) -> dict[str, Any]:
    """What a request would answer (each output's shape and dtype), cost and hold, from its
    arrays' shapes alone; refused exactly as the real request would be."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(
                f"a dry run's body is at most {MAX_BODY_BYTES} bytes: send shapes, not arrays",
                loc=("body",),
            )
    state = request.app.state
    work = partial(explanation, bytes(body), state.operations, state.settings)
    if len(body) <= pipeline.INLINE_BODY_BYTES:  # shapes only: on the loop, as a tiny request
        return work()
    return await anyio.to_thread.run_sync(work)


def explanation(
    body: bytes, operations: Mapping[str, Operation], settings: Settings
) -> dict[str, Any]:
    """The dry run of the request ``body`` describes (in a worker thread)."""
    document = json_codec.parse_object(body)
    operation = _operation(document.pop("operation", None), operations)
    # Shapes alone: every dtype, complex ones too (nested lists' limits do not apply).
    default = float_dtype(document.pop("dtype", "float64"), "dtype", ("body", "dtype"))
    given = {name: document.pop(name) for name in operation.inputs if name in document}
    for name in operation.optional:  # an explicit null is an optional array left out
        if given.get(name, 0) is None:
            del given[name]
    check_names(given, operation)
    specs = {name: _spec(value, name, default) for name, value in given.items()}
    request = pipeline.check(operation, document, specs, None, settings)
    return operation.explain(request.geometry, specs["x"].dtype).to_dict()


def _operation(name: object, operations: Mapping[str, Operation]) -> Operation:
    operation = operations.get(name) if isinstance(name, str) else None
    if operation is None:
        raise InvalidInput(
            f"operation must be one of {', '.join(operations)}, got {brief(name, 40)}",
            loc=("body", "operation"),
            type="literal_error" if name is not None else "missing",
        )
    return operation


def _spec(value: object, name: str, default: Any) -> TensorSpec:
    """An input described as ``{"shape": [...], "dtype": ...}`` (dtype optional)."""
    if not isinstance(value, dict) or "shape" not in value or set(value) - {"shape", "dtype"}:
        raise InvalidInput(
            f'{name} must be {{"shape": [...], "dtype": "float32" | ...}} in a dry run '
            f"(dtype optional: {', '.join(DTYPES)}), got {brief(value, 60)}",
            loc=("body", name),
        )
    shape = shape_of(value["shape"], name)
    dtype = (
        float_dtype(value["dtype"], name, ("body", name, "dtype")) if "dtype" in value else default
    )
    return TensorSpec(shape=shape, dtype=dtype.name)
