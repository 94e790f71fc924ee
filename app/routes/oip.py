"""The Open Inference Protocol's REST surface (KServe v2, Triton), beside our own endpoints."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response

import convengine
from app import oip

router = APIRouter(prefix="/v2", tags=["inference protocol"])


@router.get("")
async def server_metadata() -> dict[str, object]:
    """Server name, version and protocol extensions."""
    return {
        "name": "convengine",
        "version": convengine.__version__,
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live")
async def live() -> Response:
    """200 while the process answers."""
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    """200 once the engine is warmed up, 400 before (the protocol's 'false')."""
    return Response(status_code=200 if getattr(request.app.state, "ready", False) else 400)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, version: str | None = None) -> dict[str, object]:
    """Inputs and outputs of a model: conv2d or conv2d_backward."""
    return oip.model(name, version).metadata()


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    """200 when the model can serve."""
    oip.model(name, version)
    return await ready(request)


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    """Run a model: JSON tensors, or a JSON header followed by binary tensor data."""
    spec = oip.model(name, version)
    state = request.app.state
    async with state.gate.admit():
        body = await request.body()
        content, headers = await state.gate.run(
            partial(
                oip.infer,
                spec,
                body,
                request.headers.get("inference-header-content-length"),
                state.settings,
            )
        )
    return Response(content, headers=headers)
