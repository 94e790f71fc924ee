"""The FastAPI application: ``app.main:app``, or ``create_app(settings)`` for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.middleware.cors import CORSMiddleware

import convengine
from app.auth import ApiKeys, with_key_security
from app.codecs import json as json_codec
from app.config import Settings, get_settings
from app.cors import cors_options
from app.encoding import Compress, Inflate
from app.errors import install_error_handlers
from app.head import HeadAsGet
from app.limits import BodyLimit, Gate
from app.limits.memory import MemoryBudget
from app.observe import Observe
from app.routes import explain, health, limits, operations, playground, protocol
from app.schemas import ErrorResponse
from convengine import OPERATIONS

__all__ = ["app", "create_app"]

DESCRIPTION = """Forward and backward passes of convolution layers (NCHW, weights
(F, C/groups, KH, KW)), computed by a vectorised NumPy engine.

Send arrays as JSON (nested lists, typed tensors or base64 tensors), as multipart `.npy`
files, or as one `.npz` archive; answers follow the Accept header (JSON, `.npz`, `.npy`).
Every refusal is `{"detail": [{"loc", "msg", "type"}]}`."""


def _warm_up() -> None:
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    convengine.conv2d_backward(convengine.conv2d(x, w, padding=1), x, w, padding=1)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(_warm_up)
    app.state.ready = True
    yield
    app.state.ready = False


_OPENAPI_MODELS: tuple[type[BaseModel], ...] = (
    *(json_codec.wire_model(operation) for operation in OPERATIONS.values()),
    ErrorResponse,
    *protocol.OPENAPI_MODELS,
)


def _openapi_with_models(app: FastAPI) -> dict[str, Any]:
    """The generated schema plus the models that the codecs' entries reference."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in _OPENAPI_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app: FastAPI = FastAPIOffline(
        title="convengine",
        version=convengine.__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    memory = MemoryBudget(settings.memory_budget(), settings.max_waiting, settings.memory_wait)
    app.state.gate = Gate(settings.max_concurrent, settings.max_waiting, memory)
    app.state.ready = False
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        max_json_bytes=settings.max_json_bytes,
        body_timeout=settings.body_timeout,
    )
    # Outside BodyLimit, so that the limits count inflated bytes.
    app.add_middleware(Inflate, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(
        Compress, minimum_size=settings.compress_min_bytes, level=settings.compress_level
    )
    app.add_middleware(HeadAsGet)
    if settings.api_keys_file is not None:  # before the body is read; after CORS preflights
        app.add_middleware(ApiKeys, keys_file=settings.api_keys_file)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins))
    app.add_middleware(Observe, replica=settings.replica)  # outermost: sees every answer
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(limits.router)
    app.include_router(operations.router)
    app.include_router(explain.router)
    protocol.install(app)
    app.include_router(playground.router)
    app.mount("/static", StaticFiles(directory=playground.STATIC), name="static")
    app.openapi = lambda: _openapi_with_models(app)  # type: ignore[method-assign]
    if settings.api_keys_file is not None:
        app.openapi = with_key_security(app.openapi)  # type: ignore[method-assign]
    return app


app = create_app()
