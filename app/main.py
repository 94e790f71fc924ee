"""The FastAPI application: ``app.main:app``, or ``create_app(settings)`` for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import convengine
from app import metrics
from app.auth import ApiKeys, with_key_security
from app.codecs import json as json_codec
from app.config import Settings, get_settings
from app.cors import Cors, cors_options
from app.encoding import Compress, Inflate
from app.errors import install_error_handlers
from app.head import HeadAsGet
from app.limits import BodyLimit, Gate
from app.limits.memory import MemoryBudget
from app.observe import Observe
from app.routes import explain, health, limits, playground, protocol
from app.routes import operations as routes
from app.rpc import service as rpc
from app.schemas import ErrorResponse
from convengine import OPERATIONS, Operation

__all__ = ["app", "create_app"]

DESCRIPTION = """Forward and backward passes of convolution layers with 1, 2 or 3 spatial axes,
and of transposed convolutions, computed by a vectorised NumPy engine. The rank of `x` says
which: `x (N, C, *spatial)`, `w (F, C/groups, *kernel)` for a convolution and
`w (C_in, C_out/groups, *kernel)` for a transposed one (PyTorch's layouts).

Send arrays as JSON (nested lists, typed tensors or base64 tensors), as multipart `.npy`
files, or as one `.npz` archive. Answers follow the Accept header (JSON, `.npz`, `.npy`);
with none, or `*/*`, they take the request's form: `.npz` for a binary request, JSON for a
JSON one. A multipart field sent empty counts as absent. Every refusal is
`{"detail": [{"loc", "msg", "type"}]}`; the Open Inference Protocol (`/v2`) answers its own
way."""


def _route_name(route: APIRoute) -> str:
    # operationIds are the routes' names (the table's operation names, healthz, ...), as
    # generated clients name their methods by them; routes served at two paths set theirs.
    return route.name


def _warm_up() -> None:
    x = np.ones((1, 2, 5, 5), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    convengine.conv2d_backward(convengine.conv2d(x, w, padding=1), x, w, padding=1)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(_warm_up)
    settings: Settings = app.state.settings
    grpc_server = None
    if app.state.serve_grpc and settings.grpc_port:
        grpc_server = await rpc.start(app.state, settings)
    app.state.ready = True
    yield
    app.state.ready = False
    if grpc_server is not None:
        # uvicorn has drained HTTP: new calls are refused, calls in flight get the rest of
        # the shutdown timeout.
        await grpc_server.stop(grace=settings.shutdown_timeout)


def _openapi_with_models(app: FastAPI, operations: Mapping[str, Operation]) -> dict[str, Any]:
    """The generated schema plus the models that the codecs' entries reference."""
    if app.openapi_schema is None:
        models: list[type[BaseModel]] = [
            *(json_codec.wire_model(operation) for operation in operations.values()),
            ErrorResponse,
            *protocol.OPENAPI_MODELS,
        ]
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, definitions = models_json_schema(
            [(model, "validation") for model in models],
            ref_template="#/components/schemas/{model}",
        )
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(
    settings: Settings | None = None,
    operations: Mapping[str, Operation] = OPERATIONS,
    *,
    serve_grpc: bool = False,
) -> FastAPI:
    """The service for ``settings`` (else the environment's), serving a table of operations;
    with ``serve_grpc``, its lifespan also serves the inference protocol over gRPC on
    ``settings.grpc_port`` (``python -m app`` does; an app made for a test does not)."""
    settings = settings or get_settings()
    app: FastAPI = FastAPIOffline(
        title="convengine",
        version=convengine.__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        generate_unique_id_function=_route_name,
    )
    app.state.settings = settings
    app.state.operations = operations
    memory = MemoryBudget(settings.memory_budget(), settings.max_waiting, settings.memory_wait)
    metrics.MEMORY_BUDGET.set(memory.total)
    metrics.name_replica(settings.replica)
    app.state.gate = Gate(settings.max_concurrent, settings.max_waiting, memory)
    app.state.ready = False
    app.state.serve_grpc = serve_grpc
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
        app.add_middleware(Cors, **cors_options(settings.cors_origins))
    app.add_middleware(Observe, replica=settings.replica)  # outermost: sees every answer
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(limits.router)
    app.include_router(routes.router(operations))
    app.include_router(explain.router(operations))
    protocol.install(app, operations)
    app.include_router(playground.router)
    app.mount("/static", StaticFiles(directory=playground.STATIC), name="static")
    app.openapi = lambda: _openapi_with_models(app, operations)  # type: ignore[method-assign]
    if settings.api_keys_file is not None:
        app.openapi = with_key_security(app.openapi)  # type: ignore[method-assign]
    return app


app = create_app(serve_grpc=True)
