"""Liveness, readiness, version and metrics."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

import convengine
from app import metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and its event loop answers."""
    return {"status": "ok"}


def readiness(state: Any) -> str:
    """ "ready", or why not: "starting" (warming up) or "full" (no room to admit work)."""
    if not getattr(state, "ready", False):
        return "starting"
    gate = getattr(state, "gate", None)
    return "full" if gate is not None and not gate.can_admit else "ready"


@router.get("/readyz", responses={503: {"description": "warming up, or full: no room for work"}})
async def readyz(request: Request, response: Response) -> dict[str, str]:
    """Warmed up, and room to admit work (a place in line and for memory): send traffic."""
    status = readiness(request.app.state)
    if status != "ready":
        response.status_code = 503
    return {"status": status}


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
