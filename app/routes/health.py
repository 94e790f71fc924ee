"""Liveness, readiness, version and metrics."""

from __future__ import annotations

import platform

import numpy as np
from fastapi import APIRouter, Request, Response

import convengine
from app import metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "still warming up"}})
async def readyz(request: Request, response: Response) -> dict[str, str]:
    """The engine is imported and has computed one convolution: ready for traffic."""
    if not getattr(request.app.state, "ready", False):
        response.status_code = 503
        return {"status": "starting"}
    return {"status": "ready"}


@router.get("/version")
async def version() -> dict[str, str]:
    """Versions of the service, NumPy and Python."""
    return {
        "name": "convengine",
        "version": convengine.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@router.get("/metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    """Prometheus metrics: requests, latency, bytes, engine time, in-flight work, refusals."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
