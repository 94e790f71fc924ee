"""The playground page at /, served from the package's static folder."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["playground"])


@router.get("/", include_in_schema=False)
async def playground() -> FileResponse:
    """A page that shows what a convolution and its gradients do."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
