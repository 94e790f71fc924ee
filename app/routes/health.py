"""Liveness, readiness, version and metrics."""

from __future__ import annotations

import platform
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

import convengine
from app import metrics

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """The process answers."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether to send this replica traffic, and why not."""

    status: Literal["ready", "starting", "full"] = Field(
        description="ready; starting: warming up; full: no room to admit work"
    )


class Version(BaseModel):
    """What this replica runs."""

    name: Literal["convengine"]
    version: str = Field(description="convengine's version")
    numpy: str = Field(description="NumPy's version")
    python: str = Field(description="Python's version")


@router.get("/healthz")
async def healthz() -> Health:
    """The process is alive and its event loop answers."""
    return Health(status="ok")


def readiness(state: Any) -> str:
    """ "ready", or why not: "starting" (warming up) or "full" (no room to admit work)."""
    if not getattr(state, "ready", False):
        return "starting"
    gate = getattr(state, "gate", None)
    return "full" if gate is not None and not gate.can_admit else "ready"


_NOT_READY = {"description": "warming up, or full: no room for work", "model": Readiness}


@router.get("/readyz", responses={503: _NOT_READY})
async def readyz(request: Request, response: Response) -> Readiness:
    """Warmed up, and room to admit work (a place in line and for memory): send traffic."""
    status = readiness(request.app.state)
    if status != "ready":
        response.status_code = 503
    return Readiness.model_validate({"status": status})


@router.get("/version")
async def version() -> Version:
    """Versions of the service, NumPy and Python."""
    return Version(
        name="convengine",
        version=convengine.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
    )


_PROMETHEUS_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}


@router.get(
    "/metrics",
    response_class=Response,
    operation_id="metrics",
    responses={200: {"description": "Prometheus text exposition format", **_PROMETHEUS_TEXT}},
)
async def prometheus_metrics() -> Response:
    """Prometheus metrics: requests, latency, bytes, engine time, in-flight work, refusals."""
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE_LATEST)
