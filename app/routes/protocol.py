"""The Open Inference Protocol's REST surface (KServe v2, Triton), beside our own endpoints."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response

from app import pipeline, protocol
from app.codecs import protocol as wire
from app.codecs.protocol import InferRequest, encode, parse_request
from app.config import Settings
from app.errors import register_error_shape
from app.limits.body import holding
from app.routes import health
from app.statistics import Timing
from convengine import Operation

PREFIX = "/v2"
router = APIRouter(prefix=PREFIX, tags=["inference protocol"])
OPENAPI_MODELS = (InferRequest, protocol.InferResponse, protocol.ProtocolError)


def install(app: FastAPI, operations: Mapping[str, Operation]) -> None:
    """Serve the protocol on ``app`` for a table of operations, errors under /v2 in the
    protocol's own shape."""
    app.state.models = protocol.models(operations)
    app.include_router(router)
    register_error_shape(app, PREFIX, protocol.render_error)


_ERROR = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ProtocolError"}}}
}
_NO_BODY: dict[str, Any] = {"content": {}}
_UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown model or version", **_ERROR}
}


@router.get("", response_model=protocol.ServerMetadata, operation_id="server_metadata")
async def server_metadata() -> dict[str, object]:
    """Server name, version and protocol extensions."""
    return protocol.server_metadata()


@router.get(
    "/health/live",
    response_class=Response,
    responses={200: {"description": "live", **_NO_BODY}},
    operation_id="server_live",
)
async def live() -> Response:
    """200 while the process answers."""
    return Response(status_code=200)


@router.get(
    "/health/ready",
    operation_id="server_ready",
    response_class=Response,
    responses={
        200: {"description": "ready", **_NO_BODY},
        400: {"description": "not ready yet", **_NO_BODY},
    },
)
async def ready(request: Request) -> Response:
    """200 when warmed up with room to admit work, 400 otherwise (the protocol's 'false')."""
    return Response(status_code=200 if health.readiness(request.app.state) == "ready" else 400)


# Before /models/{name}, which would take "stats" for a model's name.
@router.get("/models/stats")
async def every_model_statistics(request: Request) -> dict[str, Any]:
    """Inference counts and times of every model, as in /metrics."""
    return protocol.statistics(request.app.state.models)


@router.get("/models/{name}/stats", responses=_UNKNOWN_MODEL)
@router.get(
    "/models/{name}/versions/{version}/stats",
    responses=_UNKNOWN_MODEL,
    operation_id="model_version_statistics",
)
async def model_statistics(
    request: Request, name: str, version: str | None = None
) -> dict[str, Any]:
    """Inference counts and times of a model, as in /metrics."""
    return protocol.statistics(request.app.state.models, name, version)


@router.get(
    "/models/{name}",
    response_model=protocol.ModelMetadata,
    responses=_UNKNOWN_MODEL,
    operation_id="model_metadata",
)
@router.get(
    "/models/{name}/versions/{version}",
    response_model=protocol.ModelMetadata,
    responses=_UNKNOWN_MODEL,
    operation_id="model_version_metadata",
)
async def model_metadata(
    request: Request, name: str, version: str | None = None
) -> dict[str, object]:
    """Inputs and outputs of a model: conv2d, conv2d_backward, conv_transpose3d, ..."""
    return protocol.metadata(*protocol.model(request.app.state.models, name, version))


_READY: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready", **_NO_BODY},
    400: {"description": "not ready yet", **_NO_BODY},
    **_UNKNOWN_MODEL,
}


@router.get(
    "/models/{name}/ready", response_class=Response, responses=_READY, operation_id="model_ready"
)
@router.get(
    "/models/{name}/versions/{version}/ready",
    response_class=Response,
    responses=_READY,
    operation_id="model_version_ready",
)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the model can serve."""
    protocol.model(request.app.state.models, name, version)
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
    operation_id="model_infer",
    response_class=Response,
    openapi_extra=_INFER_BODY,
    responses=_INFER_RESPONSES,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    operation_id="model_version_infer",
    response_class=Response,
    openapi_extra=_INFER_BODY,
    responses=_INFER_RESPONSES,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run a model: JSON tensors, or a JSON header followed by binary tensor data."""
    served = protocol.model(request.app.state.models, name, version)
    request.state.operation = name  # a known model's name: the metrics' operation label
    state = request.app.state
    header_length = request.headers.get("inference-header-content-length")
    timing = Timing(name)
    prepare = partial(
        protocol.prepare,
        served,
        settings=state.settings,
        parse=partial(
            parse_request, header_length=header_length, max_json_bytes=state.settings.max_json_bytes
        ),
        encode=encode,
        timing=timing,
    )
    # The protocol's JSON is parsed whatever the Content-Type: all of the body, or the part
    # Inference-Header-Content-Length gives.
    json_part = None  # all of the body
    foresight = None
    if header_length and header_length.isascii() and header_length.isdigit():
        json_part = int(header_length[:19])  # 19 digits: more than any body
        # The JSON header before the binary data says what the request would hold.
        foresight = partial(_foresight, served, json_part, state.settings)
    ok = False
    try:
        response = await pipeline.serve(request, state.gate, holding(json_part), prepare, foresight)
        ok = True
        return response
    finally:
        timing.done(ok)


def _foresight(
    served: tuple[Operation, int], header_length: int, settings: Settings
) -> pipeline.Foresight:
    announced = wire.Header(header_length, settings.max_json_bytes)
    return pipeline.Foresight(announced, partial(protocol.plan, served, announced, settings))


@router.post("/repository/index", response_model=list[protocol.ModelIndex])
async def repository_index(request: Request) -> list[dict[str, str]]:
    """Every model served and its state (all ready: the table is loaded at start)."""
    return protocol.repository_index(request.app.state.models)


@router.get("/models/{name}/config", responses=_UNKNOWN_MODEL)
@router.get(
    "/models/{name}/versions/{version}/config",
    responses=_UNKNOWN_MODEL,
    operation_id="model_version_config",
)
async def model_config(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
    """A model's configuration: inputs and outputs, their ranks and types, the
    hyperparameters as parameters."""
    return protocol.config(*protocol.model(request.app.state.models, name, version))
