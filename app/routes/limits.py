"""What one request may be: ``GET /limits``, so that a client sizes its shards without guessing."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.config import Settings

router = APIRouter(tags=["health"])


class Limits(BaseModel):
    """The service's limits on one request; a client keeps each shard of a call within them."""

    max_body_bytes: int = Field(description="largest request body (413 beyond)")
    max_json_bytes: int = Field(description="largest JSON request body (413 beyond)")
    max_decoded_bytes: int = Field(description="largest total of a request's decoded arrays")
    max_work_bytes: int = Field(description="largest working memory of one computation (422)")
    max_gflop: float = Field(description="largest arithmetic of one request, in GFLOP (422)")
    memory_budget_bytes: int | None = Field(
        description="memory that the requests of this replica may hold at once, if it has a budget"
    )
    max_concurrent: int = Field(description="computations this replica runs at once")
    max_waiting: int = Field(description="requests that may wait for a computation; then 503")


@router.get("/limits")
async def limits(request: Request) -> Limits:
    """This replica's limits on one request: body, decoded arrays, work, memory, places."""
    settings: Settings = request.app.state.settings
    return Limits(
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        max_decoded_bytes=settings.max_decoded_bytes,
        max_work_bytes=settings.max_work_bytes,
        max_gflop=settings.max_gflop,
        # The budget admission enforces, computed once at start (not the cgroup read again).
        memory_budget_bytes=request.app.state.gate.memory.total,
        max_concurrent=settings.max_concurrent,
        max_waiting=settings.max_waiting,
    )
