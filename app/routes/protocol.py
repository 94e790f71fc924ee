"""The Open Inference Protocol's REST surface (KServe v2, Triton), beside our own endpoints."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

import convengine
from app import pipeline, protocol
from app.codecs.protocol import InferRequest
from app.errors import register_error_shape
from app.limits.body import declared_length, reading_cost
from app.routes import health

PREFIX = "/v2"
router = APIRouter(prefix=PREFIX, tags=["inference protocol"])
OPENAPI_MODELS = (InferRequest, protocol.InferResponse, protocol.ProtocolError)


def install(app: FastAPI) -> None:
    """Serve the protocol on ``app``, errors under /v2 in the protocol's own shape."""
    app.include_router(router)
    register_error_shape(app, PREFIX, protocol.render_error)


_ERROR = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProtocolError"}}}
}
_NO_BODY: dict[str, Any] = {"content": {}}
_UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown model or version", **_ERROR}
}


@router.get("", response_model=protocol.ServerMetadata)
async def server_metadata() -> dict[str, object]:
    """Server name, version and protocol extensions."""
    return {
        "name": "convengine",
        "version": convengine.__version__,
        "extensions": ["binary_tensor_data"],
    }


@router.get(
    "/health/live", response_class=Response, responses={200: {"description": "live", **_NO_BODY}}
)
async def live() -> Response:
    """200 while the process answers."""
    return Response(status_code=200)


@router.get(
    "/health/ready",
    response_class=Response,
    responses={
        200: {"description": "ready", **_NO_BODY},
        400: {"description": "not ready yet", **_NO_BODY},
    },
)
async def ready(request: Request) -> Response:
    """200 when warmed up with room to admit work, 400 otherwise (the protocol's 'false')."""
    return Response(status_code=200 if health.readiness(request.app.state) == "ready" else 400)


@router.get("/models/{name}", response_model=protocol.ModelMetadata, responses=_UNKNOWN_MODEL)
@router.get(
    "/models/{name}/versions/{version}",
    response_model=protocol.ModelMetadata,
    responses=_UNKNOWN_MODEL,
)
async def model_metadata(name: str, version: str | None = None) -> dict[str, object]:
    """Inputs and outputs of a model: conv2d, conv2d_backward, conv_transpose3d, ..."""
    return protocol.metadata(*protocol.model(name, version))


_READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready", **_NO_BODY},
    400: {"description": "not ready yet", **_NO_BODY},
    **_UNKNOWN_MODEL,
}


@router.get("/models/{name}/ready", response_class=Response, responses=_READY)
@router.get("/models/{name}/versions/{version}/ready", response_class=Response, responses=_READY)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the model can serve."""
    protocol.model(name, version)
    return await ready(request)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "the JSON request (its length in the header "
                    "Inference-Header-Content-Length) followed by the inputs' little-endian bytes",
                }
            },
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the outputs, as JSON or as a JSON header followed by binary data",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    400: {"description": "a request the model cannot run", **_ERROR},
    413: {"description": "a body over the size limit", **_ERROR},
    503: {"description": "busy: retry after the Retry-After seconds", **_ERROR},
    **_UNKNOWN_MODEL,
}


@router.post(
    "/models/{name}/infer",
    response_class=Response,
    openapi_extra=_INFER_BODY,
    responses=_INFER_RESPONSES,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    response_class=Response,
    openapi_extra=_INFER_BODY,
    responses=_INFER_RESPONSES,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run a model: JSON tensors, or a JSON header followed by binary tensor data."""
    served = protocol.model(name, version)
    state = request.app.state
    header_length = request.headers.get("inference-header-content-length")
    prepare = partial(
        protocol.prepare, served, header_length=header_length, settings=state.settings
    )
    # The protocol's JSON is parsed whatever the Content-Type: all of the body, or the part
    # Inference-Header-Content-Length gives.
    length = declared_length(request, state.settings, "application/octet-stream")
    json_part = length
    if header_length and header_length.isascii() and header_length.isdigit():
        json_part = int(header_length)
    least, expected = reading_cost(length, json_part)
    return await pipeline.serve(request, state.gate, least, expected, prepare)
